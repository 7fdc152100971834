"""Kimi Delta Attention: the chunk-parallel per-channel delta rule (ops/delta/channel.py) against the recurrent
reference: outputs, final state and the gradient of every input (q, k, v, beta, the per-channel log decay, the start
state), in float64 (1e-10) and float32 (1e-5 relative), empty to odd lengths, strong decays and hard resets.

Map to the reference: S = W^T, beta = gates["lr"], g = gates["log_alpha"] [B, T, H, d_k], scale = 1.0.
"""
import pytest
import torch

from miras.errors import ConfigError
from miras.ops import MemoryState, recurrent_reference
from miras.ops.delta import chunk_kda
from miras.ops.dispatch import memory_op, select_op
from miras.ops.inputs import random_inputs
from miras.space import get_preset

from .helpers import rel_errors

SPEC = get_preset("kda").spec


def _leaves(seqlen, d_k=8, d_v=6, dtype=torch.float64, seed=0):
    """The op's differentiable inputs by name (q, k, v, beta, g, W0 = S0^T) from random_inputs of the kda preset."""
    q, k, v, gates, state = random_inputs(SPEC, batch=2, seqlen=seqlen, heads=2, d_k=d_k, d_v=d_v, dtype=dtype,
                                          seed=seed, requires_grad=True)
    return {"q": q, "k": k, "v": v, "beta": gates["lr"], "g": gates["log_alpha"], "W0": state.A["W1"]}


def _reference(x):
    y, final = recurrent_reference(SPEC, x["q"], x["k"], x["v"], {"lr": x["beta"], "log_alpha": x["g"]},
                                   MemoryState({"W1": x["W0"]}))
    return y, final.A["W1"]


def _chunked(x, chunk_size=64):
    o, S = chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], scale=1.0, initial_state=x["W0"].mT,
                     output_final_state=True, chunk_size=chunk_size)
    return o, S.mT


def _two_calls(x, split, chunk_size):
    head = {n: t if n == "W0" else t[:, :split] for n, t in x.items()}
    tail = {n: t[:, split:] for n, t in x.items() if n != "W0"}
    o1, mid = _chunked(head, chunk_size)
    o2, end = _chunked({**tail, "W0": mid}, chunk_size)
    return torch.cat([o1, o2], 1), end


def _with_grads(run, x):
    """Output, final W and the gradient of a fixed random linear loss on both w.r.t. every input (zeros where an
    input is not used: T = 0)."""
    y, W = run(x)
    gen = torch.Generator().manual_seed(1)
    dy, dW = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (y, W))
    grads = torch.autograd.grad((y * dy).sum() + (W * dW).sum(), list(x.values()), allow_unused=True)
    return {"o": y, "state": W, **{f"d{n}": torch.zeros_like(x[n]) if g is None else g for n, g in zip(x, grads)}}


def _float64(x):
    return {n: t.detach().double().requires_grad_() for n, t in x.items()}


@pytest.mark.parametrize("chunk_size", [1, 16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [0, 1, 7, 37, 64, 100], ids=lambda t: f"T{t}")
def test_matches_reference_in_float64(seqlen, chunk_size):
    x = _leaves(seqlen)
    got = _with_grads(lambda x: _chunked(x, chunk_size), x)
    assert got["o"].shape == (2, seqlen, 2, 6) and got["state"].shape == (2, 2, 6, 8)
    errs = rel_errors(got, _with_grads(_reference, x))
    assert max(errs.values()) <= 1e-10, errs


@pytest.mark.parametrize("chunk_size", [16, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("seqlen", [1, 37, 100], ids=lambda t: f"T{t}")
def test_float32_is_close_to_the_float64_reference(seqlen, chunk_size):
    x32 = _leaves(seqlen, dtype=torch.float32)
    got = _with_grads(lambda x: _chunked(x, chunk_size), x32)
    assert all(t.dtype == torch.float32 for t in got.values())
    errs = rel_errors(got, _with_grads(_reference, _float64(x32)))
    assert max(errs.values()) <= 1e-5, errs


@pytest.mark.parametrize("split", [5, 37, 50], ids=lambda s: f"split{s}")
def test_state_carried_across_two_calls_equals_the_reference(split):
    """Two calls split mid-chunk (chunk 16 and 64), the final state of the first the start of the second: outputs,
    final state and every gradient equal the reference over the whole sequence."""
    x = _leaves(100)
    want = _with_grads(_reference, x)
    for chunk_size in (16, 64):
        errs = rel_errors(_with_grads(lambda x: _two_calls(x, split, chunk_size), x), want)
        assert max(errs.values()) <= 1e-10, errs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_strong_decays_stay_finite_and_exact(dtype):
    """Log decays down to -20 per token in every channel: in-chunk cumulative log decays reach -1280, where
    exp(-gamma) overflows in any dtype; every exponent the op takes is a difference <= 0."""
    x = _leaves(130, dtype=dtype, seed=3)
    with torch.no_grad():
        x["g"].copy_(-20 * torch.rand(x["g"].shape, generator=torch.Generator().manual_seed(4), dtype=dtype))
        x["g"][:, ::3, :, :4] = -20.0
    got = _with_grads(lambda x: _chunked(x, 64), x)
    assert all(t.isfinite().all() for t in got.values())
    errs = rel_errors(got, _with_grads(_reference, _float64(x)))
    assert max(errs.values()) <= (1e-10 if dtype == torch.float64 else 1e-5), errs


@pytest.mark.parametrize("value", [-1e9, "finfo.min"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_hard_resets_equal_the_reference(dtype, value):
    """A log decay of -1e9 or the dtype's most negative value in some channels at some tokens: equal to the
    reference, and the gradient there is exactly the reference's 0."""
    x = _leaves(70, dtype=dtype, seed=5)
    value = torch.finfo(dtype).min if value == "finfo.min" else value
    with torch.no_grad():
        x["g"][:, [3, 40], :, 1:5] = value
    got = _with_grads(lambda x: _chunked(x, 16), x)
    want = _with_grads(_reference, _float64(x))
    errs = rel_errors(got, want)
    assert max(errs.values()) <= (1e-10 if dtype == torch.float64 else 1e-5), errs
    assert not got["dg"][:, [3, 40], :, 1:5].any() and not want["dg"][:, [3, 40], :, 1:5].any()


def test_an_infinite_log_decay_gives_what_the_most_negative_one_gives():
    """The op itself accepts g = -inf (memory_op's gate check does not): no floor is needed, nothing is subtracted."""
    results = []
    for fill in (float("-inf"), torch.finfo(torch.float32).min):
        x = _leaves(40, dtype=torch.float32, seed=6)
        with torch.no_grad():
            x["g"][:, [3, 4, 17], :, :3] = fill
        results.append(_with_grads(lambda x: _chunked(x, 16), x))
    assert all(t.isfinite().all() for t in results[0].values())
    assert max(rel_errors(*results).values()) == 0


@pytest.mark.parametrize("mode", ["auto", "chunked"])
def test_memory_op_routes_kda_to_the_chunked_op(mode):
    assert select_op(SPEC) == "delta"
    q, k, v, gates, state = random_inputs(SPEC, seqlen=70, requires_grad=True)
    leaves = [q, k, v, *gates.values(), state.A["W1"]]
    results = []
    for run_mode in ("reference", mode):
        y, final = memory_op(SPEC, q, k, v, gates, state, mode=run_mode)
        grads = torch.autograd.grad(y.pow(2).sum() + final.A["W1"].sum(), leaves)
        results.append({"y": y, "W": final.A["W1"], **{f"d{i}": g for i, g in enumerate(grads)}})
    errs = rel_errors(results[1], results[0])
    assert max(errs.values()) <= 1e-10, errs


def test_output_keeps_the_input_dtype_and_the_state_is_at_least_float32():
    x = {n: t.detach().to(torch.bfloat16) for n, t in _leaves(9, dtype=torch.float32).items()}
    o, S = chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=True, chunk_size=4)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32 and o.isfinite().all()
    assert chunk_kda(x["q"], x["k"], x["v"], x["g"])[1] is None


def test_a_scalar_decay_is_refused_with_the_shape_it_needs():
    x = _leaves(5)
    with pytest.raises(ConfigError, match=r"g\.shape=\(2, 5, 2\) is invalid: allowed \(2, 5, 2, 8\)"):
        chunk_kda(x["q"], x["k"], x["v"], x["g"][..., 0], x["beta"])


def test_blocks_of_chunks_give_the_same_numbers(monkeypatch):
    """The decay-weighted Gram matrices are computed (and recomputed in backward) over blocks of chunks: with blocks
    of 3 chunks (7 chunks of 16: the last block short), outputs, final state and every gradient equal the
    reference's."""
    import miras.ops.blocks as blocks
    monkeypatch.setattr(blocks, "MATRICES_PER_BLOCK", 3 * 4)          # batch 2 x 2 heads: 3 chunks per block
    x = _leaves(100)
    errs = rel_errors(_with_grads(lambda x: _chunked(x, 16), x), _with_grads(_reference, x))
    assert max(errs.values()) <= 1e-10, errs
