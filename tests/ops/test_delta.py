"""The chunk-parallel (gated) delta rule against the recurrent reference: outputs, final state, every gradient.

Map to the reference: S = W^T, beta = gates["lr"], g = gates["log_alpha"], scale = 1.0.
"""
import pytest
import torch

from miras.ops import MemoryState, recurrent_reference
from miras.ops.delta import chunk_gated_delta_rule
from miras.ops.delta.fused import unit_lower_inverse
from miras.ops.inputs import random_inputs
from miras.space import get_preset

from .helpers import rel_err, rel_errors

PRESETS = ["deltanet", "gated-deltanet"]


def _leaves(name, seqlen, d_k=8, d_v=8, dtype=torch.float64, seed=0):
    """The op's differentiable inputs by name (q, k, v, beta, W0 = S0^T and, gated, g), from random_inputs."""
    spec = get_preset(name).spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=seqlen, heads=2, d_k=d_k, d_v=d_v, dtype=dtype,
                                          seed=seed, requires_grad=True)
    x = {"q": q, "k": k, "v": v, "beta": gates["lr"], "W0": state.A["W1"]}
    if "log_alpha" in gates:
        x["g"] = gates["log_alpha"]
    return spec, x


def _reference(spec, x):
    gates = {"lr": x["beta"], **({"log_alpha": x["g"]} if "g" in x else {})}
    y, final = recurrent_reference(spec, x["q"], x["k"], x["v"], gates, MemoryState({"W1": x["W0"]}))
    return y, final.A["W1"]


def _chunked(x, chunk_size=64, scale=1.0):
    o, S = chunk_gated_delta_rule(x["q"], x["k"], x["v"], x.get("g"), x["beta"], scale=scale,
                                  initial_state=x["W0"].transpose(-1, -2), output_final_state=True,
                                  chunk_size=chunk_size)
    return o, S.transpose(-1, -2)


def _with_grads(run, x):
    """Output, final W and the gradient of a fixed random linear loss on both w.r.t. every input."""
    y, W = run(x)
    gen = torch.Generator().manual_seed(1)
    dy, dW = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (y, W))
    grads = torch.autograd.grad((y * dy).sum() + (W * dW).sum(), list(x.values()))
    return {"o": y, "state": W, **{f"d{n}": g for n, g in zip(x, grads)}}



@pytest.mark.parametrize("chunk_size", [1, 16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [1, 7, 63, 64, 65, 200], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", PRESETS)
def test_matches_reference_in_float64(name, seqlen, chunk_size):
    spec, x = _leaves(name, seqlen)
    errs = rel_errors(_with_grads(lambda x: _chunked(x, chunk_size), x), _with_grads(lambda x: _reference(spec, x), x))
    assert max(errs.values()) <= 1e-9, errs


@pytest.mark.parametrize("C", [1, 2, 7, 16, 64, 65])
def test_unit_lower_inverse_is_a_triangular_solve(C):
    """Only the strictly lower part of A is read: its diagonal and upper part are noise here."""
    A = torch.randn(3, C, C, generator=torch.Generator().manual_seed(C), dtype=torch.float64) / C ** 0.5
    eye = torch.eye(C, dtype=torch.float64)
    want = torch.linalg.solve_triangular(A.tril(-1) + eye, eye.expand_as(A), upper=False)
    assert rel_err(unit_lower_inverse(A, out=torch.empty_like(A)), want) <= 1e-13


@pytest.mark.parametrize("d_k,d_v", [(4, 8), (8, 3)], ids=["dk4-dv8", "dk8-dv3"])
@pytest.mark.parametrize("name", PRESETS)
def test_rectangular_state(name, d_k, d_v):
    spec, x = _leaves(name, 37, d_k=d_k, d_v=d_v)
    got = _with_grads(lambda x: _chunked(x, 16), x)
    assert got["o"].shape == (2, 37, 2, d_v) and got["state"].shape == (2, 2, d_v, d_k)
    errs = rel_errors(got, _with_grads(lambda x: _reference(spec, x), x))
    assert max(errs.values()) <= 1e-9, errs


@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [7, 65, 200], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", PRESETS)
def test_float32_is_close_to_the_float64_reference(name, seqlen, chunk_size):
    spec, x32 = _leaves(name, seqlen, dtype=torch.float32)
    x64 = {n: t.detach().double().requires_grad_() for n, t in x32.items()}
    got = _with_grads(lambda x: _chunked(x, chunk_size), x32)
    assert all(t.dtype == torch.float32 for t in got.values())
    errs = rel_errors(got, _with_grads(lambda x: _reference(spec, x), x64))
    assert max(errs.values()) <= 1e-5, errs


def test_strong_decay_stays_finite_and_exact_in_float32():
    """Half the decays at exp(-30) per token: in-chunk cumulative log decays reach -1900, where exp(-gamma)
    overflows; only differences <= 0 may be exponentiated."""
    _, x = _leaves("gated-deltanet", 130, dtype=torch.float32)
    with torch.no_grad():
        x["g"][..., ::2] = -30.0
    got = _with_grads(lambda x: _chunked(x, 64), x)
    spec = get_preset("gated-deltanet").spec
    want = _with_grads(lambda x: _reference(spec, x), {n: t.detach().double().requires_grad_() for n, t in x.items()})
    assert all(t.isfinite().all() for t in got.values())
    errs = rel_errors(got, want)
    assert max(errs.values()) <= 1e-5, errs


@pytest.mark.parametrize("name", PRESETS)
def test_inputs_without_grad_and_under_no_grad(name):
    _, x = _leaves(name, 40)
    want = _chunked(x, 16)
    with torch.no_grad():
        got = _chunked(x, 16)
    assert all(rel_err(a, b) <= 1e-14 and not a.requires_grad for a, b in zip(got, want))
    frozen = {n: t.detach() for n, t in x.items()}
    assert all(rel_err(a, b) <= 1e-14 and not a.requires_grad for a, b in zip(_chunked(frozen, 16), want))
    only_v = {**frozen, "v": x["v"]}
    (dv,) = torch.autograd.grad(_chunked(only_v, 16)[0].sum(), [only_v["v"]])
    assert rel_err(dv, torch.autograd.grad(want[0].sum(), [x["v"]])[0]) <= 1e-14


@pytest.mark.parametrize("split", [37, 50], ids=lambda s: f"split{s}")
@pytest.mark.parametrize("name", PRESETS)
def test_state_carried_across_two_calls_equals_one_call(name, split):
    _, x = _leaves(name, 100)
    o, S = chunk_gated_delta_rule(x["q"], x["k"], x["v"], x.get("g"), x["beta"], initial_state=x["W0"].mT,
                                  output_final_state=True, chunk_size=16)
    head = {n: t if n == "W0" else t[:, :split] for n, t in x.items()}
    o1, mid = chunk_gated_delta_rule(head["q"], head["k"], head["v"], head.get("g"), head["beta"],
                                     initial_state=head["W0"].mT, output_final_state=True, chunk_size=16)
    tail = {n: t[:, split:] for n, t in x.items() if n != "W0"}
    o2, end = chunk_gated_delta_rule(tail["q"], tail["k"], tail["v"], tail.get("g"), tail["beta"],
                                     initial_state=mid, output_final_state=True, chunk_size=16)
    assert rel_err(torch.cat([o1, o2], 1), o) <= 1e-12 and rel_err(end, S) <= 1e-12


@pytest.mark.parametrize("name", PRESETS)
def test_batch_rows_are_independent(name):
    _, x = _leaves(name, 40)
    _, other = _leaves(name, 40, seed=7)
    mixed = {n: torch.cat([t[:1], other[n][1:]]) for n, t in x.items()}
    (o, S), (o_mixed, S_mixed) = _chunked(x, 16), _chunked(mixed, 16)
    assert rel_err(o_mixed[0], o[0]) <= 1e-13 and rel_err(S_mixed[0], S[0]) <= 1e-13
    assert rel_err(o_mixed[1], o[1]) > 1e-2


@pytest.mark.parametrize("name", PRESETS)
def test_default_scale_is_inverse_sqrt_dk(name):
    spec, x = _leaves(name, 20, d_k=4, d_v=6)
    o, S = _chunked(x, 16, scale=None)
    y, W = _reference(spec, {**x, "q": x["q"] * 4 ** -0.5})
    assert rel_err(o, y) <= 1e-12 and rel_err(S, W) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_output_keeps_the_input_dtype_and_the_state_is_at_least_float32(dtype):
    _, x = _leaves("gated-deltanet", 9, dtype=torch.float32)
    x = {n: t.detach().to(dtype) for n, t in x.items()}
    o, S = chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=True, chunk_size=4)
    assert o.dtype == dtype and S.dtype == torch.promote_types(dtype, torch.float32)
    o32, _ = chunk_gated_delta_rule(*(x[n].float() for n in ("q", "k", "v", "g", "beta")), chunk_size=4)
    assert rel_err(o, o32) <= 1e-2
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v", "g", "beta")]
    grads = torch.autograd.grad(chunk_gated_delta_rule(*leaves, chunk_size=4)[0].float().sum(), leaves)
    assert all(d.dtype == dtype and d.isfinite().all() for d in grads)


def test_no_final_state_unless_asked():
    _, x = _leaves("deltanet", 5)
    assert chunk_gated_delta_rule(x["q"], x["k"], x["v"], beta=x["beta"])[1] is None
