"""Gated DeltaProduct (Delta(steps=n_h), arXiv 2502.10297): n_h delta steps per token, the decay once before the
first, the read after the last. The memory layer runs the exact delta op on the interleaved sub-step sequence;
here that equals a plain loop of n_h steps per token, streaming and decoding equal one call, packed-document resets
on the sub-step sequence mark a token's first sub-step, and the preset trains as a language model."""
import pytest
import torch
import torch.nn.functional as F

from miras.layers.memory import MemoryLayer, substeps
from miras.models import MirasConfig, MirasLM
from miras.ops.dispatch import memory_op
from miras.ops.inputs import random_inputs
from miras.space import get_preset

from .helpers import rel_err

SPEC = get_preset("gated-deltaproduct").spec
N = SPEC.algorithm.steps


def _layer(seed=0, d_model=16, heads=2):
    """A float64 layer with every parameter random (the gates' zero-initialized up-projections and W0 included), so
    the gates vary by token and sub-step and the start memory is not zero."""
    torch.manual_seed(seed)
    layer = MemoryLayer(SPEC, d_model=d_model, heads=heads).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def _manual(layer, x):
    """The layer's equation as a loop: per token W <- alpha_t W, then for j = 1..n_h
    W <- W (I - beta_j k_j k_j^T) + beta_j v_j k_j^T with each k_j L2-normalized, then y_t = W q_t."""
    B, T, _ = x.shape
    H, d = layer.heads, layer.head_dim
    q, k, v = (layer.conv[c](layer.proj[c](x))[0] for c in "qkv")
    q = F.normalize(q.view(B, T, H, d), dim=-1)
    k = F.normalize(k.view(B, T, N, H, d), dim=-1)
    v = v.view(B, T, N, H, d)
    beta = (torch.sigmoid(layer.gates["lr"](x).float()) * layer.lr_max).double().view(B, T, N, H)   # (fp32 gates)
    alpha = torch.exp(F.logsigmoid(layer.gates["log_alpha"](x).float()).double())                # [B, T, H]
    W = layer.W0["W1"].float().double().expand(B, H, d, d)                     # (the layer starts from W0 in fp32)
    ys = []
    for t in range(T):
        W = alpha[:, t, :, None, None] * W
        for j in range(N):
            k_j, v_j, b_j = k[:, t, j], v[:, t, j], beta[:, t, j, :, None, None]
            err = torch.einsum("bhvk,bhk->bhv", W, k_j) - v_j
            W = W - b_j * torch.einsum("bhv,bhk->bhvk", err, k_j)
        ys.append(torch.einsum("bhvk,bhk->bhv", W, q[:, t]))
    y = layer.out_norm(torch.stack(ys, 1)).reshape(B, T, -1) * F.silu(layer.out_gate(x))
    return layer.out_proj(y), W


def test_the_preset_takes_two_steps_per_token():
    assert N == 2 and SPEC.retention.name == "decay" and not SPEC.retention.per_channel
    layer = MemoryLayer(SPEC, d_model=16, heads=2)
    assert layer.proj["k"].out_features == layer.proj["v"].out_features == 2 * layer.proj["q"].out_features
    gates = layer.gate_values(torch.randn(3, 5, 16))
    assert gates["lr"].shape == gates["log_alpha"].shape == (3, 10, 2)
    assert not gates["log_alpha"][:, 1::2].any() and gates["log_alpha"][:, 0::2].lt(0).all()


@pytest.mark.parametrize("seqlen", [1, 9, 40])
def test_layer_equals_a_loop_of_n_h_delta_steps_per_token(seqlen):
    layer = _layer()
    x = torch.randn(2, seqlen, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y, state = layer(x)
    want, W = _manual(layer, x)
    assert rel_err(y, want) <= 1e-12 and rel_err(state.memory.A["W1"], W) <= 1e-12


def test_streaming_in_pieces_and_decoding_equal_one_call():
    layer = _layer(seed=3)
    x = torch.randn(2, 23, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y, final = layer(x)
    for cuts in ([0, 5, 6, 17, 23], list(range(24))):          # pieces (mid-chunk), then one token at a time
        state, ys = None, []
        for a, b in zip(cuts[:-1], cuts[1:]):
            y_part, state = layer(x[:, a:b], state)
            ys.append(y_part)
        # (1e-6: the layer's gates are float32, and x's projection summed in another order may round 1 ulp apart)
        assert rel_err(torch.cat(ys, 1), y) <= 1e-6
        assert rel_err(state.memory.A["W1"], final.memory.A["W1"]) <= 1e-6
        assert all(rel_err(state.conv[c], final.conv[c]) <= 1e-14 for c in "qkv")


def test_a_reset_at_a_tokens_first_sub_step_restarts_the_memory():
    """memory_op on the sub-step sequence with resets at token r's first sub-step equals the document before r and
    the document from r run alone (outputs and final state)."""
    T, r = 13, 6
    q, k, v, gates, state = random_inputs(SPEC, batch=2, seqlen=T * N, heads=2, d_k=4)
    q = substeps(q.view(2, T, N, 2, 4)[:, :, -1], N, at=-1)                 # q at each token's last sub-step
    gates["log_alpha"] = substeps(gates["log_alpha"].view(2, T, N, 2)[:, :, 0], N, at=0)   # decay at the first
    resets = torch.zeros(2, T, dtype=torch.bool)
    resets[:, r] = True
    y, final = memory_op(SPEC, q, k, v, gates, state, resets=substeps(resets, N, at=0))
    s = r * N
    y1, _ = memory_op(SPEC, q[:, :s], k[:, :s], v[:, :s], {n: g[:, :s] for n, g in gates.items()}, state)
    y2, end = memory_op(SPEC, q[:, s:], k[:, s:], v[:, s:], {n: g[:, s:] for n, g in gates.items()})
    assert rel_err(y, torch.cat([y1, y2], 1)) <= 1e-12 and rel_err(final.A["W1"], end.A["W1"]) <= 1e-12
    shifted = torch.zeros(2, T * N, dtype=torch.bool)
    shifted[:, s + 1] = True                                                 # a reset at the second sub-step
    assert rel_err(memory_op(SPEC, q, k, v, gates, state, resets=shifted)[0], y) > 1e-3


def test_the_preset_trains_a_step_and_one_call_equals_decoding():
    torch.manual_seed(0)
    config = MirasConfig(preset="gated-deltaproduct", d_model=32, heads=2, n_layers=2, chunk_size=8)
    model = MirasLM(config)
    assert config.memory_spec.algorithm.steps == 2
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model.loss(ids)
    before.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    opt.step()
    with torch.no_grad():
        assert model.loss(ids) < before
    model.double()
    with torch.no_grad():
        full, _ = model(ids)
        states, steps = None, []
        for t in range(ids.shape[1]):
            logits, states = model(ids[:, t:t + 1], states)
            steps.append(logits)
    assert rel_err(torch.cat(steps, 1), full) <= 1e-6                     # (float32 gates, as above)
