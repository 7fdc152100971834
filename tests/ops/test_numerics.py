"""Edge cases of memory_op and the exact ops that normal use never reaches: an empty sequence, hard resets of the
memory through a finite log decay (down to the dtype's most negative value), and NaN / Inf in q, k, v.

Each was found wrong once (docs/ops/ssd.md, "Numerics"): T = 0 crashed the hand-written backwards, a log decay of
-1e9 lost every other decay of its chunk in float32 (and finfo.min gave NaN: inf - inf), and a NaN at token t
spread back to the start of t's chunk.
"""
import pytest
import torch

from miras.ops import MemoryState, recurrent_reference
from miras.ops.delta import chunk_gated_delta_rule
from miras.ops.dispatch import memory_op, select_op
from miras.ops.inputs import random_inputs
from miras.ops.ssd import chunk_gla
from miras.space import MirasSpec, get_preset, list_presets
from miras.space.bias import DotProduct
from miras.space.memory import matrix
from miras.space.algorithm import GD
from miras.space.retention import Decay

from .helpers import rel_err

GLA = MirasSpec(matrix(), DotProduct(), Decay(per_channel=True), GD())
SPECS = {**{name: get_preset(name).spec for name in list_presets()}, "gla-per-channel": GLA}


def _leaves(q, k, v, gates, state) -> dict:
    return {"q": q, "k": k, "v": v, **{f"gates.{n}": g for n, g in gates.items()},
            **{f"state.{n}": t for n, t in state.tensors().items()}}


# --- T = 0 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("name", list(SPECS))
def test_empty_sequence_returns_the_start_state_and_passes_its_gradient(name, mode):
    """T = 0: y is [B, 0, H, d_v], the final state is the start state, the start state's gradient is the final
    state's, and q, k, v and the gates get zero gradients of their own (empty) shapes."""
    spec = SPECS[name]
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=0, heads=3, d_k=4, requires_grad=True)
    y, final = memory_op(spec, q, k, v, gates, state, mode=mode)
    assert y.shape == (2, 0, 3, 4) and y.dtype == q.dtype
    start = state.tensors()
    finals = {n: t for n, t in final.tensors().items() if n in start}
    assert finals.keys() >= {n for n in start if n.startswith("A.")}
    for n, t in finals.items():
        torch.testing.assert_close(t, start[n], rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in finals.items()}
    loss = y.sum() + sum((t * weights[n]).sum() for n, t in finals.items())
    leaves = _leaves(q, k, v, gates, state)
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)))
    for n in ("q", "k", "v", *(f"gates.{g}" for g in gates)):
        assert grads[n] is None or (grads[n].shape == leaves[n].shape and not grads[n].any()), n
    for n, w in weights.items():
        torch.testing.assert_close(grads[f"state.{n}"], w, rtol=0, atol=0)


@pytest.mark.parametrize("per_channel", [False, True])
def test_exact_ops_take_an_empty_sequence(per_channel):
    q = k = v = torch.randn(2, 0, 3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.zeros(2, 0, 3, *((4,) if per_channel else ()), dtype=torch.float64, requires_grad=True)
    beta = torch.zeros(2, 0, 3, dtype=torch.float64, requires_grad=True)
    S0 = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    dS = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    runs = [lambda: chunk_gla(q, k, v, g, initial_state=S0, output_final_state=True)]
    if not per_channel:
        runs.append(lambda: chunk_gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True))
    for run in runs:
        o, S = run()
        assert o.shape == (2, 0, 3, 4)
        torch.testing.assert_close(S, S0, rtol=0, atol=0)
        grads = torch.autograd.grad((S * dS).sum() + o.sum(), [S0, q, g], allow_unused=True)
        torch.testing.assert_close(grads[0], dS, rtol=0, atol=0)
        assert all(d is None or d.shape == x.shape for d, x in zip(grads[1:], [q, g]))


# --- hard resets through a finite log decay ---------------------------------------------------------------------

RESETS = [0, 5, 63, 64, 65, 100]   # the first token, mid-chunk, a chunk's last and first token, two in a row


def _with_resets(spec, dtype, value, seqlen=150, resets=RESETS):
    """float64 inputs with log_alpha = value at the RESETS tokens."""
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=seqlen, heads=2, d_k=8, dtype=torch.float64)
    gates["log_alpha"][:, resets] = value
    return q, k, v, gates, state


def _outputs_and_grads(spec, x, dtype, mode):
    leaves = {n: t.detach().to(dtype).requires_grad_(True) for n, t in _leaves(*x).items()}
    group = lambda prefix: {n[len(prefix):]: t for n, t in leaves.items() if n.startswith(prefix)}  # noqa: E731
    state = MemoryState(group("state.A."), group("state.S.") or None)
    y, final = memory_op(spec, leaves["q"], leaves["k"], leaves["v"], group("gates."), state, mode=mode)
    outs = {"y": y, **{f"final.{n}": t for n, t in final.tensors().items() if n.startswith(("A.", "S."))}}
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(dtype)).sum() for t in outs.values())
    return {**outs, **dict(zip((f"d{n}" for n in leaves), torch.autograd.grad(loss, list(leaves.values()))))}


@pytest.mark.parametrize("value", [-1e9, "finfo.min"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["retnet", "mamba2", "gated-deltanet", "gla-per-channel", "titans-lmm"])
def test_hard_reset_equals_the_reference(name, dtype, value):
    """A document boundary marked by a log decay of -1e9 or the dtype's most negative value at some tokens: the
    chunked path equals the float64 reference (float32: 1e-5 relative; float64: 1e-12), gradients included, and
    the gradient wrt log_alpha at a reset token is exactly the reference's 0 (exp(log_alpha) = 0 there).
    (titans-lmm, segsum-based, was right before; its float32 gradients are ill-conditioned on these inputs, 5e-2
    in the plain float32 recurrence too: there the bound is twice-and-a-bit the plain float32 error.)"""
    spec = SPECS[name]
    value = torch.finfo(dtype).min if value == "finfo.min" else value
    x = _with_resets(spec, dtype, value)
    want = _outputs_and_grads(spec, x, torch.float64, "reference")
    got = _outputs_and_grads(spec, x, dtype, "auto")
    errors = {n: rel_err(got[n], want[n]) for n in want}
    if select_op(spec) == "minibatch":
        plain = _outputs_and_grads(spec, x, dtype, "reference")
        tol = {n: 1e-9 if dtype == torch.float64 else 3 * rel_err(plain[n], want[n]) for n in want}
    else:
        tol = {n: 1e-12 if dtype == torch.float64 else 1e-5 for n in want}
        assert not got["dgates.log_alpha"][:, RESETS].any()
    assert all(errors[n] <= tol[n] for n in want), (errors, tol)
    assert not want["dgates.log_alpha"][:, RESETS].any()


@pytest.mark.parametrize("name", ["mamba2", "gated-deltanet"])
def test_many_hard_resets_keep_float32_precision(name):
    """A reset every third token (21 in a chunk of 64) at the dtype's most negative value: each is floored at
    log(tiny) = -87.3, so the in-chunk cumulative log decays stay within 21 * 87.3 of zero and the small decays
    between the resets keep about 1e-5 of float32 precision (docs/ops/ssd.md, "Hard resets")."""
    spec = SPECS[name]
    x = _with_resets(spec, torch.float32, torch.finfo(torch.float32).min, seqlen=130, resets=list(range(1, 130, 3)))
    want = _outputs_and_grads(spec, x, torch.float64, "reference")
    got = _outputs_and_grads(spec, x, torch.float32, "auto")
    errors = {n: rel_err(got[n], want[n]) for n in want}
    assert all(e <= 5e-5 for e in errors.values()), errors


@pytest.mark.parametrize("op", ["gla-scalar", "gla-per-channel", "gated-delta"])
def test_exact_ops_take_an_infinite_log_decay(op):
    """The ops themselves accept g = -inf (memory_op's gate check does not) and give what g = finfo.min gives."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 40, 2, 4, generator=gen) for _ in range(3))
    g = -torch.rand(1, 40, 2, *((4,) if op == "gla-per-channel" else ()), generator=gen)
    S0 = torch.randn(1, 2, 4, 4, generator=gen)
    results = []
    for fill in (float("-inf"), torch.finfo(torch.float32).min):
        g_ = g.clone()
        g_[:, [3, 4, 17]] = fill
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, S0)]
        run = chunk_gated_delta_rule if op == "gated-delta" else chunk_gla
        o, S = run(*leaves[:3], g_, initial_state=leaves[3], output_final_state=True, chunk_size=16)
        results.append([o, S, *torch.autograd.grad(o.sum() + S.sum(), leaves)])
    for a, b in zip(*results):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- NaN / Inf in q, k, v ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("tensor", ["q", "k", "v"])
@pytest.mark.parametrize("name", ["transformer", "linear-attention", "mamba2", "gated-deltanet", "gla-per-channel",
                                  "titans-lmm"])
def test_a_nonfinite_input_leaves_every_earlier_output_exact(name, tensor, bad):
    """A NaN / Inf in q, k or v at token 70 (inside the exact ops' chunk 64..127): outputs before token 70 equal
    the reference on the first 70 tokens (finite), and the bad row's output at token 70 is non-finite where the
    reference's is: the first non-finite output is at the first bad token, as in the recurrence."""
    spec = SPECS[name]
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=100, heads=2, d_k=8)
    x = {"q": q, "k": k, "v": v}
    x[tensor][1, 70, 0, 3] = bad
    y, _ = memory_op(spec, x["q"], x["k"], x["v"], gates, state)
    prefix, _ = recurrent_reference(spec, q[:, :70], k[:, :70], v[:, :70], {n: g[:, :70] for n, g in gates.items()},
                                    state)
    torch.testing.assert_close(y[:, :70], prefix, rtol=1e-9, atol=1e-10)
    through, _ = recurrent_reference(spec, x["q"][:, :71], x["k"][:, :71], x["v"][:, :71],
                                     {n: g[:, :71] for n, g in gates.items()}, state)
    assert torch.isfinite(y[1, 70]).all() == torch.isfinite(through[1, 70]).all()   # (an inf key may get weight 0)
    assert not torch.isfinite(y[1]).all()


def test_opt_in_finite_check_names_the_first_bad_token(monkeypatch):
    spec = get_preset("mamba2").spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=100)
    k[1, 70, 0, 3] = float("nan")
    k[0, 90, 1, 2] = float("inf")
    monkeypatch.setenv("MIRAS_CHECK_FINITE", "1")
    with pytest.raises(FloatingPointError, match=r"memory_op input: k has a non-finite value at index \(0, 90, 1, 2\), "
                                                 r"first at token 70 \(checked because MIRAS_CHECK_FINITE=1\)"):
        memory_op(spec, q, k, v, gates, state)


def test_first_nonfinite_token_is_exact_and_survives_an_overflowing_sum():
    from miras.ops.dispatch import first_nonfinite_token
    x = torch.randn(2, 10, 3, 4)
    big = torch.full((2, 10, 3, 4), 3e38)                       # finite, but its sum overflows: no false alarm
    assert first_nonfinite_token(x, big, x[:, :, :, :2]) is None
    y, z = x.clone(), x.clone()
    y[1, 7, 0, 0], z[0, 4, 2, 1] = float("inf"), float("nan")
    assert first_nonfinite_token(x, y, big) == 7 and first_nonfinite_token(z, y) == 4
    assert first_nonfinite_token(x[:, :0]) is None
