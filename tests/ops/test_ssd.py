"""The chunk-parallel SSD / GLA op against the recurrent reference: outputs, final state, every gradient.

Map to the reference: S = W^T, the op's v = v * lr (lr stays a leaf, so its gradient is checked too),
g = gates["log_alpha"] (None without decay), scale = 1.0. The Mamba-2 wrapper `ssd` is checked against
a per-token loop of its recurrence written here.
"""
import functools

import pytest
import torch
import torch.nn.functional as F

from miras.ops import MemoryState, recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.ssd import chunk_gla, ssd
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.bias import DotProduct
from miras.space.memory import matrix
from miras.space.algorithm import GD
from miras.space.retention import Decay

from .helpers import rel_err, rel_errors

SPECS = {**{n: get_preset(n).spec for n in ("linear-attention", "retnet", "mamba2")},
         "gla": MirasSpec(matrix(), DotProduct(), Decay(per_channel=True), GD())}
NAMES = list(SPECS)
DISTINCT = ["linear-attention", "mamba2", "gla"]   # retnet draws the same inputs as mamba2


def _leaves(name, seqlen, d_k=8, d_v=8, dtype=torch.float64, seed=0):
    """The differentiable inputs by name (q, k, v, lr, W0 = S0^T and, with decay, g), from random_inputs."""
    q, k, v, gates, state = random_inputs(SPECS[name], batch=2, seqlen=seqlen, heads=2, d_k=d_k, d_v=d_v,
                                          dtype=dtype, seed=seed, requires_grad=True)
    x = {"q": q, "k": k, "v": v, "lr": gates["lr"], "W0": state.A["W1"]}
    if "log_alpha" in gates:
        x["g"] = gates["log_alpha"]
    return x


def _reference(name, x):
    gates = {"lr": x["lr"], **({"log_alpha": x["g"]} if "g" in x else {})}
    y, final = recurrent_reference(SPECS[name], x["q"], x["k"], x["v"], gates, MemoryState({"W1": x["W0"]}))
    return y, final.A["W1"]


def _chunked(x, chunk_size=64, scale=1.0):
    o, S = chunk_gla(x["q"], x["k"], x["v"] * x["lr"][..., None], x.get("g"), scale=scale,
                     initial_state=x["W0"].mT, output_final_state=True, chunk_size=chunk_size)
    return o, S.mT


def _with_grads(run, x):
    """Outputs and the gradient of a fixed random linear loss on all of them w.r.t. every input."""
    outs = run(x)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum() for t in outs)
    grads = torch.autograd.grad(loss, list(x.values()))
    return {**{f"out{i}": t for i, t in enumerate(outs)}, **{f"d{n}": g for n, g in zip(x, grads)}}


@functools.lru_cache(maxsize=None)
def _reference_results(name, seqlen, dtype):
    """The float64 reference on the inputs drawn in `dtype` (cached: chunk sizes share it)."""
    x = {n: t.detach().double().requires_grad_() for n, t in _leaves(name, seqlen, dtype=dtype).items()}
    return _with_grads(lambda x: _reference(name, x), x)



@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [1, 7, 63, 64, 65, 200], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_in_float64(name, seqlen, chunk_size):
    got = _with_grads(lambda x: _chunked(x, chunk_size), _leaves(name, seqlen))
    errs = rel_errors(got, _reference_results(name, seqlen, torch.float64))
    assert max(errs.values()) <= 1e-9, errs


@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [7, 65, 200], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("name", DISTINCT)
def test_float32_is_close_to_the_float64_reference(name, seqlen, chunk_size):
    got = _with_grads(lambda x: _chunked(x, chunk_size), _leaves(name, seqlen, dtype=torch.float32))
    assert all(t.dtype == torch.float32 for t in got.values())
    errs = rel_errors(got, _reference_results(name, seqlen, torch.float32))
    assert max(errs.values()) <= 1e-5, errs


@pytest.mark.parametrize("name", ["mamba2", "gla"])
def test_strong_decay_stays_finite_and_exact_in_float32(name):
    """Half the decays at exp(-30) per token: in-chunk cumulative sums reach -1900, where exp(+-G) would
    overflow or underflow; log-space segment sums stay exact."""
    x = _leaves(name, 130, dtype=torch.float32)
    with torch.no_grad():
        x["g"][..., ::2] = -30.0
    got = _with_grads(lambda x: _chunked(x, 64), x)
    want = _with_grads(lambda x: _reference(name, x), {n: t.detach().double().requires_grad_() for n, t in x.items()})
    assert all(t.isfinite().all() for t in got.values())
    errs = rel_errors(got, want)
    assert max(errs.values()) <= 1e-5, errs


@pytest.mark.parametrize("d_k,d_v", [(4, 8), (8, 3)], ids=["dk4-dv8", "dk8-dv3"])
@pytest.mark.parametrize("name", ["mamba2", "gla"])
def test_rectangular_state(name, d_k, d_v):
    x = _leaves(name, 37, d_k=d_k, d_v=d_v)
    got = _with_grads(lambda x: _chunked(x, 16), x)
    assert got["out0"].shape == (2, 37, 2, d_v) and got["out1"].shape == (2, 2, d_v, d_k)
    errs = rel_errors(got, _with_grads(lambda x: _reference(name, x), x))
    assert max(errs.values()) <= 1e-9, errs


@pytest.mark.parametrize("split", [37, 50], ids=lambda s: f"split{s}")
@pytest.mark.parametrize("name", DISTINCT)
def test_state_carried_across_two_calls_equals_one_call(name, split):
    x = _leaves(name, 100)
    o, W = _chunked(x, 16)
    head = {n: t if n == "W0" else t[:, :split] for n, t in x.items()}
    o1, mid = _chunked(head, 16)
    o2, end = _chunked({**{n: t[:, split:] for n, t in x.items() if n != "W0"}, "W0": mid}, 16)
    assert rel_err(torch.cat([o1, o2], 1), o) <= 1e-12 and rel_err(end, W) <= 1e-12


@pytest.mark.parametrize("name", DISTINCT)
def test_batch_rows_are_independent(name):
    x, other = _leaves(name, 40), _leaves(name, 40, seed=7)
    mixed = {n: torch.cat([t[:1], other[n][1:]]) for n, t in x.items()}
    (o, W), (o_mixed, W_mixed) = _chunked(x, 16), _chunked(mixed, 16)
    assert rel_err(o_mixed[0], o[0]) <= 1e-13 and rel_err(W_mixed[0], W[0]) <= 1e-13
    assert rel_err(o_mixed[1], o[1]) > 1e-2


@pytest.mark.parametrize("name", ["linear-attention", "gla"])
def test_default_scale_is_inverse_sqrt_dk(name):
    x = _leaves(name, 20, d_k=4, d_v=6)
    o, W = _chunked(x, 16, scale=None)
    y, W_ref = _reference(name, {**x, "q": x["q"] * 4 ** -0.5})
    assert rel_err(o, y) <= 1e-12 and rel_err(W, W_ref) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_output_keeps_the_input_dtype_and_the_state_is_at_least_float32(dtype):
    x = {n: t.detach().to(dtype) for n, t in _leaves("gla", 9, dtype=torch.float32).items()}
    o, S = chunk_gla(x["q"], x["k"], x["v"], x["g"], output_final_state=True, chunk_size=4)
    assert o.dtype == dtype and S.dtype == torch.promote_types(dtype, torch.float32)
    o32, _ = chunk_gla(*(x[n].float() for n in ("q", "k", "v", "g")), chunk_size=4)
    assert rel_err(o, o32) <= 1e-2


def test_no_final_state_unless_asked_and_empty_sequences_keep_the_state():
    x = _leaves("gla", 5)
    assert chunk_gla(x["q"], x["k"], x["v"], x["g"])[1] is None
    o, S = chunk_gla(x["q"][:, :0], x["k"][:, :0], x["v"][:, :0], x["g"][:, :0], initial_state=x["W0"].mT,
                     output_final_state=True)
    assert o.shape == (2, 0, 2, 8) and torch.equal(S, x["W0"].mT)


def _mamba2_inputs(ngroups, seqlen, heads=4, p=3, n=5, seed=0):
    """x [b, l, h, p], dt [b, l, h] > 0, A [h] < 0, B, C [b, l, g, n], D [h], h0 [b, h, p, n]: float64 leaves."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    x = {"x": rand(2, seqlen, heads, p), "dt": F.softplus(rand(2, seqlen, heads) - 1.0), "A": -rand(heads).exp(),
         "B": rand(2, seqlen, ngroups, n) * n ** -0.5, "C": rand(2, seqlen, ngroups, n) * n ** -0.5,
         "D": rand(heads), "h0": 0.1 * rand(2, heads, p, n)}
    return {name: t.requires_grad_() for name, t in x.items()}


def _mamba2_loop(x, dt, A, B, C, D, h0):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T; y_t = h_t C_t + D x_t, head i reading group i // (h / g)."""
    group = [i // (x.shape[2] // B.shape[2]) for i in range(x.shape[2])]
    h, ys = h0, []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        h = decay * h + torch.einsum("bhp,bhn->bhpn", dt[:, t, :, None] * x[:, t], B[:, t, group])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t, group]) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [1, 65], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("ngroups", [1, 2], ids=lambda g: f"groups{g}")
def test_ssd_wrapper_is_the_mamba2_recurrence(ngroups, seqlen, chunk_size):
    x = _mamba2_inputs(ngroups, seqlen)

    def run(x):
        return ssd(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=chunk_size, D=x["D"],
                   initial_states=x["h0"], return_final_states=True)

    got = _with_grads(run, x)
    assert got["out0"].shape == x["x"].shape and got["out1"].shape == x["h0"].shape
    errs = rel_errors(got, _with_grads(lambda x: _mamba2_loop(**x), x))
    assert max(errs.values()) <= 1e-9, errs


def test_ssd_wrapper_defaults_and_per_channel_skip():
    x = {n: t.detach() for n, t in _mamba2_inputs(2, 20).items()}
    y = ssd(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=8)
    assert isinstance(y, torch.Tensor)
    y0, _ = _mamba2_loop(**{**x, "D": torch.zeros_like(x["D"]), "h0": torch.zeros_like(x["h0"])})
    assert rel_err(y, y0) <= 1e-12
    D = torch.randn(4, 3, dtype=torch.float64)
    assert rel_err(ssd(x["x"], x["dt"], x["A"], x["B"], x["C"], chunk_size=8, D=D), y0 + D * x["x"]) <= 1e-12


def test_bad_shapes_raise():
    x = _leaves("gla", 5)
    with pytest.raises(ConfigError, match=r"g\.shape"):
        chunk_gla(x["q"], x["k"], x["v"], x["g"][..., :3])
    m = {n: t.detach() for n, t in _mamba2_inputs(1, 5, heads=3).items()}
    with pytest.raises(ConfigError, match=r"ngroups=2"):
        ssd(m["x"], m["dt"], m["A"], *(torch.cat([t, t], dim=2) for t in (m["B"], m["C"])))
