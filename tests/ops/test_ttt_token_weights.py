"""TTT's token weights (GD(token_weights=True), the TTT presets): inside a mini-batch the i-th token reads
W_s + tau_i (A_t - W_s), tau_i = max(0, 1/i + o_i), and the mini-batch ends at its last token's weights.

The recurrent reference against TTT's dual form written out here (eta[i, j] = tau_i lr_j, arXiv 2407.04620 and
its code), and the mini-batch engine against the reference: outputs, final state and every gradient (the learned
offsets o included), at odd lengths, T = 0 and 1, T < chunk, and state carried across calls that end mid-chunk."""
import pytest
import torch

from miras.layers.memory import MemoryLayer
from miras import memory_op
from miras.ops import recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk_minibatch
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.algorithm import GD
from miras.space.bias import L2
from miras.space.memory import MLPMemory, matrix
from miras.space.retention import Decay, NoRetention

from .helpers import assert_same, rel_err, run_both

B = 4


def _spec(memory=None, b=B):
    return MirasSpec(memory or MLPMemory(depth=1, residual=True, norm=True, norm_affine=True), L2(), NoRetention(),
                     GD(token_weights=True), chunk_size=b)


def _offsets(b=B, seed=5, dtype=torch.float64):
    return (0.3 * torch.randn(b, generator=torch.Generator().manual_seed(seed), dtype=dtype)).requires_grad_(True)


def test_token_weight_is_one_over_position_plus_offset_clamped():
    tau = GD.token_weight(torch.tensor([0.0, 0.1, -1.0, 0.0]), 0, 4, torch.float64)
    assert torch.allclose(tau, torch.tensor([1.0, 0.6, 0.0, 0.25], dtype=torch.float64))
    assert torch.allclose(GD.token_weight(None, 2, 2, torch.float64), torch.tensor([1 / 3, 1 / 4], dtype=torch.float64))


def test_reference_equals_ttt_dual_form_for_a_linear_memory():
    """Linear memory W (no norm), L2 bias: z_t = W_s k... written as TTT writes it for one mini-batch:
    y_i = W_s q_i - sum_{j <= i} tau_i lr_j (grad_j) q_i, and the next mini-batch starts at W_s - tau_b sum_j lr_j grad_j."""
    spec = _spec(matrix(), b=B)
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=2 * B, heads=1, d_k=3)
    o = _offsets().detach()
    y, final = recurrent_reference(spec, q, k, v, gates, state, token_offsets=o)
    W = state.A["W1"][0, 0]
    tau = torch.relu(1.0 / torch.arange(1, B + 1, dtype=torch.float64) + o)
    want = []
    for s in range(0, 2 * B, B):
        grads = [2 * torch.outer(W @ k[0, t, 0] - v[0, t, 0], k[0, t, 0]) * gates["lr"][0, t, 0]
                 for t in range(s, s + B)]
        for i in range(B):
            want.append((W - tau[i] * sum(grads[:i + 1])) @ q[0, s + i, 0])
        W = W - tau[-1] * sum(grads)
    assert rel_err(y[0, :, 0], torch.stack(want)) < 1e-12
    assert rel_err(final.A["W1"][0, 0], W) < 1e-12


@pytest.mark.parametrize("preset", ["ttt-linear", "ttt-mlp"])
@pytest.mark.parametrize("seqlen", [0, 1, 3, 16, 37])
def test_engine_equals_reference_every_gradient(preset, seqlen):
    spec = get_preset(preset).spec.with_chunk_size(B)
    assert spec.algorithm.token_weights
    q, k, v, gates, state = random_inputs(spec, seqlen=seqlen, requires_grad=True)
    o = _offsets()
    outs = run_both(spec, q, k, v, gates, state, extra={"o": o}, token_offsets=o)
    assert outs[0]["offset"] == seqlen % B
    assert_same(outs)
    if seqlen >= B:
        assert outs[0]["do"].abs().sum() > 0                   # the offsets are learned through the reads                          # the offsets are learned through the reads


@pytest.mark.parametrize("split", [1, 3, 6])
@pytest.mark.parametrize("fn", [recurrent_reference, chunk_minibatch])
def test_state_carried_across_calls_mid_chunk(fn, split):
    spec = get_preset("ttt-mlp").spec.with_chunk_size(B)
    q, k, v, gates, state = random_inputs(spec, seqlen=11)
    o = _offsets().detach()
    y, final = recurrent_reference(spec, q, k, v, gates, state, token_offsets=o)
    y1, mid = fn(spec, q[:, :split], k[:, :split], v[:, :split], {n: g[:, :split] for n, g in gates.items()}, state,
                 token_offsets=o)
    assert (mid.start is not None) == (split % B != 0)
    y2, end = fn(spec, q[:, split:], k[:, split:], v[:, split:], {n: g[:, split:] for n, g in gates.items()}, mid,
                 token_offsets=o)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-11
    for n in final.A:
        assert rel_err(end.A[n], final.A[n]) < 1e-11, n


def test_fp32_engine_close_to_fp64_reference():
    spec = get_preset("ttt-linear").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=45)
    o = _offsets(spec.chunk_size)
    y64, _ = recurrent_reference(spec, q, k, v, gates, state, token_offsets=o.detach())
    s32 = type(state)({n: a.float() for n, a in state.A.items()})
    y32, _ = memory_op(spec, q.float(), k.float(), v.float(), {n: g.float() for n, g in gates.items()}, s32,
                       token_offsets=o.detach().float())
    assert rel_err(y32, y64) < 1e-5


def test_without_offsets_the_weights_are_one_over_i():
    spec = _spec(matrix())
    q, k, v, gates, state = random_inputs(spec, seqlen=9)
    y0, _ = recurrent_reference(spec, q, k, v, gates, state)
    y1, _ = recurrent_reference(spec, q, k, v, gates, state, token_offsets=torch.zeros(B, dtype=torch.float64))
    assert torch.equal(y0, y1)
    plain = MirasSpec(matrix(), L2(), NoRetention(), GD(), chunk_size=B)
    y2, _ = recurrent_reference(plain, q, k, v, gates, state)
    assert torch.allclose(y0[:, 0], y2[:, 0]) and rel_err(y0[:, 1:], y2[:, 1:]) > 1e-3   # 1/1 = 1 at the first token


def test_layer_learns_the_offsets_and_streams():
    torch.manual_seed(0)
    layer = MemoryLayer(get_preset("ttt-mlp").spec.with_chunk_size(B), d_model=16, heads=2, ttt_base_lr=0.1).double()
    assert layer.token_offsets.shape == (B,)
    with torch.no_grad():
        layer.token_offsets.normal_(0, 0.2)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    y, _ = layer(x)
    y.square().sum().backward()
    assert layer.token_offsets.grad.abs().sum() > 0
    with torch.no_grad():
        y1, s = layer(x[:, :5])
        y2, _ = layer(x[:, 5:], s)
    assert rel_err(torch.cat([y1, y2], 1), y.detach()) < 1e-11


def test_bad_input():
    with pytest.raises(ConfigError, match="token_weights"):
        MirasSpec(matrix(), L2(), Decay(), GD(token_weights=True), chunk_size=B)
    plain = MirasSpec(matrix(), L2(), NoRetention(), GD(), chunk_size=B)
    q, k, v, gates, state = random_inputs(plain, seqlen=3)
    with pytest.raises(ConfigError, match="token_offsets"):
        memory_op(plain, q, k, v, gates, state, token_offsets=torch.zeros(B, dtype=torch.float64))
    spec = _spec(matrix())
    with pytest.raises(ConfigError, match="token_offsets.shape"):
        memory_op(spec, q, k, v, gates, state, token_offsets=torch.zeros(B + 1, dtype=torch.float64))
    with pytest.raises(ConfigError, match="token_offsets"):
        memory_op(spec, q, k, v, gates, state, token_offsets=torch.full((B,), float("nan"), dtype=torch.float64))
