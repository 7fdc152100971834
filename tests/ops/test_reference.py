"""The recurrent reference against independent closed forms: it is the spec, so it is checked first."""
import pytest
import torch
import torch.nn.functional as F

from miras.ops import MemoryState, recurrent_reference
from miras.ops.inputs import random_inputs
from miras.space import ConfigError, MirasSpec, get_preset, list_presets
from miras.space.bias import L2
from miras.space.memory import MLPMemory, matrix
from miras.space.algorithm import GD, Delta
from miras.space.retention import Decay, KLSoftmax, NoRetention


def test_dot_product_decay_is_the_ssd_closed_form():
    spec = get_preset("mamba2").spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=9, heads=3, d_k=4, d_v=5)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    cum = gates["log_alpha"].cumsum(1)                                     # [B, T, H]
    seg = cum[:, :, None] - cum[:, None, :]                                # [B, t, s, H]
    mask = torch.ones(9, 9, dtype=torch.bool).tril()[None, :, :, None]
    L = torch.where(mask, seg.clamp(max=0).exp(), torch.zeros(()).double())
    scores = torch.einsum("bthd,bshd->btsh", q, k) * L * gates["lr"][:, None]
    expect = torch.einsum("btsh,bshv->bthv", scores, v)
    expect += torch.einsum("bth,bhvk,bthk->bthv", cum.exp(), state.A["W1"], q)
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)


def test_delta_rule_equals_online_gd_on_half_l2_without_decay():
    delta = MirasSpec(matrix(), L2(), NoRetention(), Delta())
    gd = MirasSpec(matrix(), L2(), NoRetention(), GD(), chunk_size=1)
    q, k, v, gates, state = random_inputs(delta, seqlen=11)
    y1, s1 = recurrent_reference(delta, q, k, v, gates, state)
    y2, s2 = recurrent_reference(gd, q, k, v, {"lr": gates["lr"] / 2}, state)   # L2 grad is 2r
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s1.A["W1"], s2.A["W1"], rtol=1e-12, atol=1e-12)


def test_one_chunk_takes_every_gradient_at_the_chunk_start():
    spec = MirasSpec(MLPMemory(depth=2), L2(), NoRetention(), GD(), chunk_size=8)
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=8, heads=2, d_k=4)
    _, final = recurrent_reference(spec, q, k, v, gates, state)
    W0 = {n: w.clone().requires_grad_() for n, w in state.A.items()}
    loss = sum((gates["lr"][:, t] * spec.bias.loss(spec.memory(W0, k[:, t].unsqueeze(2)).squeeze(2),
                                                                  v[:, t])).sum() for t in range(8))
    grads = torch.autograd.grad(loss, list(W0.values()))
    for (name, w), g in zip(W0.items(), grads):
        torch.testing.assert_close(final.A[name], w - g, rtol=1e-10, atol=1e-12)


def test_memora_online_is_the_papers_mirror_descent():
    spec = MirasSpec(MLPMemory(depth=2), L2(), KLSoftmax(), GD(), chunk_size=1)
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=6, heads=1, d_k=4)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    W = {n: torch.softmax(a, -1) for n, a in state.A.items()}
    for t in range(6):
        kt = k[:, t].unsqueeze(2)
        g = spec.memory.grads(W, kt, spec.bias.grad(spec.memory(W, kt), v[:, t].unsqueeze(2)))
        a, eta = gates["log_alpha"][:, t].exp()[..., None, None], gates["lr"][:, t][..., None, None]
        W = {n: torch.softmax(a * W[n].log() - eta * g[n][:, :, 0], -1) for n in W}
        torch.testing.assert_close(y[:, t], spec.memory(W, q[:, t].unsqueeze(2)).squeeze(2), rtol=1e-10, atol=1e-12)
    for n, w in spec.retention.boundary(final.A).items():
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_attention_reference_is_causal_sdpa():
    spec = get_preset("transformer").spec
    q, k, v, _, _ = random_inputs(spec, seqlen=13, d_k=8)
    y, _ = recurrent_reference(spec, q, k, v)
    expect = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    torch.testing.assert_close(y, expect.transpose(1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in list_presets() if "-" not in n or n in
                                  ("linear-attention", "gated-deltanet", "ttt-mlp", "titans-lmm")])
@pytest.mark.parametrize("split", [3, 8, 13])
def test_state_carried_across_calls_equals_one_call(name, split):
    spec = get_preset(name).spec.with_chunk_size(4) if not get_preset(name).spec.chunk_invariant \
        else get_preset(name).spec
    q, k, v, gates, state = random_inputs(spec, seqlen=17)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    cut = lambda x, s: x[:, s]  # noqa: E731
    y1, mid = recurrent_reference(spec, cut(q, slice(0, split)), cut(k, slice(0, split)), cut(v, slice(0, split)),
                                  {n: cut(g, slice(0, split)) for n, g in gates.items()}, state)
    y2, end = recurrent_reference(spec, cut(q, slice(split, None)), cut(k, slice(split, None)),
                                  cut(v, slice(split, None)), {n: cut(g, slice(split, None)) for n, g in gates.items()},
                                  mid)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    for name_, t in final.tensors().items():
        torch.testing.assert_close(end.tensors()[name_], t, rtol=1e-12, atol=1e-12)


def test_second_order_gradients_flow_through_inner_steps():
    spec = MirasSpec(MLPMemory(depth=2, expansion=1), get_preset("yaad").spec.bias, Decay(),
                     get_preset("titans-lmm").spec.algorithm, chunk_size=2)
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=3, heads=1, d_k=2, requires_grad=True)
    leaves = [q, k, v, *gates.values(), *state.A.values(), *state.S.values()]

    def run(*xs):
        q_, k_, v_, lr, la, beta, delta, w1, w2, s1, s2 = xs
        st = MemoryState({"W1": w1, "W2": w2}, {"W1": s1, "W2": s2})
        return recurrent_reference(spec, q_, k_, v_, {"lr": lr, "log_alpha": la, "beta": beta, "delta": delta}, st)[0]

    assert torch.autograd.gradcheck(run, [leaves[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)])


@pytest.mark.parametrize("gate,value,pattern", [("lr", -0.1, r"gates\.lr=.*allowed lr in \[0, inf\)"),
                                                ("log_alpha", 0.5, r"gates\.log_alpha=.*allowed log_alpha in"),
                                                ("beta", 1.0, r"gates\.beta=.*allowed beta in \[0, 1\)")])
def test_out_of_range_gates_raise(gate, value, pattern):
    spec = get_preset("titans-lmm").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=3)
    gates[gate] = torch.full_like(gates[gate], value)
    with pytest.raises(ConfigError, match=pattern):
        recurrent_reference(spec, q, k, v, gates, state)


def test_missing_gate_and_missing_deep_w0_raise():
    spec = get_preset("yaad").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=3)
    with pytest.raises(ConfigError, match=r"gates\.delta"):
        recurrent_reference(spec, q, k, v, {n: g for n, g in gates.items() if n != "delta"}, state)
    with pytest.raises(ConfigError, match=r"W0=None.*init_state"):
        recurrent_reference(spec, q, k, v, gates)


def test_bf16_inputs_keep_an_fp32_state():
    spec = get_preset("gated-deltanet").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=5, dtype=torch.float32)
    y, final = recurrent_reference(spec, q.bfloat16(), k.bfloat16(), v.bfloat16(), gates, state)
    assert final.A["W1"].dtype == torch.float32 and y.dtype == torch.bfloat16
    y32, _ = recurrent_reference(spec, q, k, v, gates, state)
    assert (y.float() - y32).abs().max() < 0.05


def test_wrong_ranks_and_mismatched_head_dims_raise():
    spec = get_preset("gated-deltanet").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=4)
    with pytest.raises(ConfigError, match=r"q/k shape=.*allowed equal \[B, T, H, d_k\]"):
        recurrent_reference(spec, q[0], k[0], v[0], gates, state)
    with pytest.raises(ConfigError, match=r"v shape=.*\[B, T, H, d_v\]"):
        recurrent_reference(spec, q, k, v[:, :2], gates, state)
    with pytest.raises(ConfigError, match=r"gates\.lr\.shape"):
        recurrent_reference(spec, q, k, v, {**gates, "lr": gates["lr"][..., :1]}, state)
