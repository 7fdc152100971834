"""Property-based checks of `memory_op` (miras/ops/dispatch.py) against the recurrent reference, every preset.

Hypothesis draws a preset (and a per-channel GLA spec), a length T (0 and 1 included), the kernel chunk of the
exact ops (`dispatch.EXACT_CHUNK`: the function does not depend on it) and, for a mini-batch preset, the spec's
own chunk size (which the reference uses too), batch, heads, d_k, d_v, the dtype, and sometimes a hard reset of
the memory (log_alpha = -1e9 or the dtype's most negative value at one or two tokens). Properties:

- `test_memory_op_equals_reference`: outputs, every final-state tensor and the gradients of a random projection
  of both wrt q, k, v, the gates and the start state equal `recurrent_reference` (autograd through the token
  loop, always in float64): float64 to 1e-9 relative (RMS over each tensor), float32 to 2e-4 relative or, for an
  ill-conditioned example, no more than 10 x the error of the plain float32 recurrence on the same inputs.
- `test_two_calls_equal_one`: memory_op on a random split of the sequence, the state carried from the first call
  into the second, equals one call (outputs, final state, gradients; float32 against the float64 single call).

Besides the drawn examples, EXAMPLES_ALWAYS (T = 0 and 1, hard resets in float32 and float64) run every time.

Budget: the "ci" settings (the default) run 300 + 150 examples, derandomized (the same examples every run, no
example database, no deadline): about 10-15 s for the file on one core. Longer local searches:

    MIRAS_PROPERTY_EXAMPLES=300 pytest tests/ops/test_properties.py          # more examples, still fixed
    MIRAS_PROPERTY_SEED=7 MIRAS_PROPERTY_EXAMPLES=300 pytest tests/ops/...   # another fixed set of examples

A failure prints the drawn example (hypothesis' falsifying example) with the error of every tensor.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from unittest import mock

import torch
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from miras.ops import MemoryState, recurrent_reference
from miras.ops import dispatch
from miras.ops.dispatch import memory_op, select_op
from miras.ops.inputs import random_inputs
from miras.space import MirasSpec, get_preset, list_presets
from miras.space.bias import DotProduct
from miras.space.memory import matrix
from miras.space.algorithm import GD
from miras.space.retention import Decay

EXAMPLES = int(os.environ.get("MIRAS_PROPERTY_EXAMPLES", "0"))   # 0: the ci profile's own counts
SEED = os.environ.get("MIRAS_PROPERTY_SEED")
# the "ci" profile: applied per test below (not loaded globally, so other hypothesis tests keep their own settings)
CI = settings(deadline=None, derandomize=SEED is None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
fixed_seed = seed(int(SEED)) if SEED is not None else (lambda f: f)

SPECS = {name: get_preset(name).spec for name in list_presets()}
SPECS["gla-per-channel"] = MirasSpec(matrix(), DotProduct(), Decay(per_channel=True), GD())
NAMES = sorted(SPECS)
EXACT = [n for n in NAMES if select_op(SPECS[n]) in ("ssd", "delta")]
TOLERANCE = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-4, 1e-6)}   # (relative, absolute per element)


def examples(ci: int) -> settings:
    """The ci profile with `ci` examples, or MIRAS_PROPERTY_EXAMPLES when set."""
    return settings(CI, max_examples=EXAMPLES or ci)


@st.composite
def cases(draw, max_len: int = 40):
    """(name, spec, shapes, dtype, resets, exact chunk) for one example."""
    name = draw(st.one_of(st.sampled_from(NAMES), st.sampled_from(EXACT)))   # hand-written backwards: half
    spec = SPECS[name]
    op = select_op(spec)
    if op == "minibatch":                                  # the mini-batch size is part of the function
        spec = dataclasses.replace(spec, chunk_size=draw(st.sampled_from([1, 2, 3, 4, 16])))
    seqlen = draw(st.one_of(st.sampled_from([0, 1, 2]), st.integers(0, max_len)))
    d_k = draw(st.integers(1, 6))
    d_v = d_k if getattr(spec.memory, "residual", False) else draw(st.integers(1, 6))
    shape = dict(batch=draw(st.integers(1, 2)), seqlen=seqlen, heads=draw(st.integers(1, 2)), d_k=d_k, d_v=d_v)
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    resets = []
    if "log_alpha" in spec.gates and seqlen and draw(st.booleans()):
        value = draw(st.sampled_from([-1e9, torch.finfo(dtype).min, -100.0]))
        resets = [(t, value) for t in draw(st.sets(st.integers(0, seqlen - 1), min_size=1, max_size=2))]
    chunk = draw(st.sampled_from([1, 2, 3, 5, 8, 16, 64]))
    return name, spec, shape, dtype, resets, chunk, draw(st.integers(0, 2 ** 16))


def case(name, seqlen, dtype=torch.float64, resets=(), chunk=64, d_v=4):
    """An explicit example in the form `cases` draws (run every time, whatever the budget)."""
    return (name, SPECS[name], dict(batch=2, seqlen=seqlen, heads=2, d_k=4, d_v=d_v), dtype, list(resets), chunk, 0)


F32_MIN = torch.finfo(torch.float32).min
EXAMPLES_ALWAYS = [case("mamba2", 0), case("gated-deltanet", 0, torch.float32), case("titans-lmm", 0),
                   case("mamba2", 1, chunk=1), case("deltanet", 37, torch.float32, chunk=16, d_v=3),
                   case("mamba2", 40, torch.float32, [(3, -1e9), (20, F32_MIN)], chunk=16),
                   case("gated-deltanet", 40, torch.float32, [(0, F32_MIN), (21, -1e9)], chunk=32),
                   case("retnet", 30, torch.float64, [(7, torch.finfo(torch.float64).min)], chunk=8),
                   case("gla-per-channel", 30, torch.float32, [(7, F32_MIN)], chunk=8)]


def with_examples(fn, **extra):
    for c in EXAMPLES_ALWAYS:
        fn = example(case=c, **extra)(fn)
    return fn


def _inputs(spec, shape, resets, data_seed):
    """float64 leaves (the truth's): q, k, v, gates and the start state, hard resets written into log_alpha."""
    q, k, v, gates, state = random_inputs(spec, **shape, dtype=torch.float64, seed=data_seed)
    for t, value in resets:
        gates["log_alpha"][:, t] = value
    return q, k, v, gates, state


def _cast(dtype, q, k, v, gates, state):
    """Leaves of the given dtype with the same values (requiring grad)."""
    c = lambda x: x.detach().to(dtype).requires_grad_(True)          # noqa: E731
    group = lambda g: None if g is None else {n: c(x) for n, x in g.items()}  # noqa: E731
    return c(q), c(k), c(v), group(gates), MemoryState(group(state.A), group(state.S), group(state.anchor),
                                                         state.offset, group(state.start), prior=group(state.prior))


def _leaves(q, k, v, gates, state) -> dict:
    return {"q": q, "k": k, "v": v, **{f"gates.{n}": g for n, g in gates.items()},
            **{f"start.{n}": t for n, t in state.tensors().items()}}


def _outputs_and_grads(run, leaves: dict, weights_seed: int, full_state: bool) -> dict:
    """y and the final state from run(), and the gradient of a fixed random projection of them wrt every leaf.
    The exact ops (ssd, delta) return the accumulator only (their function does not depend on chunk boundaries):
    without full_state the reference's anchor / offset of an open chunk are left out."""
    y, final = run()
    outs = {"y": y, **{f"final.{n}": t for n, t in final.tensors().items() if full_state or n.startswith("A.")}}
    if full_state:
        outs["final.offset"] = torch.tensor(float(final.offset), dtype=y.dtype)
    gen = torch.Generator().manual_seed(weights_seed)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum()
               for t in outs.values())
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {**outs, **{f"d{n}": (torch.zeros_like(x) if g is None else g)
                       for (n, x), g in zip(leaves.items(), grads)}}


def _run(fn, x, dtype, weights_seed: int, full_state: bool) -> dict:
    """_outputs_and_grads of fn on leaves of the given dtype holding the values x."""
    leaves = _cast(dtype, *x)
    return _outputs_and_grads(lambda: fn(*leaves), _leaves(*leaves), weights_seed, full_state)


def _compare(got: dict, want: dict, baseline: dict | None, what: str) -> None:
    """Shapes equal and the RMS error of every tensor of got against want (float64) <= rtol * RMS(want) + atol;
    in float32 also enough: <= 10 x the error of baseline, the same function computed in float32 the plain way
    (an ill-conditioned example may lose more than rtol, but the fast path must not lose more than the plain one).
    One message for all failures."""
    rtol, atol = TOLERANCE[torch.float64 if baseline is None else torch.float32]
    assert got.keys() == want.keys(), (what, sorted(got), sorted(want))
    rms = lambda t: t.norm().item() / math.sqrt(t.numel())          # noqa: E731
    bad = []
    for n in want:
        a, b = got[n].detach().double(), want[n].detach().double()
        assert a.shape == b.shape, (what, n, tuple(a.shape), tuple(b.shape))
        if b.numel() == 0:
            continue
        err, scale = rms(a - b), rms(b)
        plain = math.inf if baseline is None else rms(baseline[n].detach().double() - b)
        if not (err <= rtol * scale + atol or err <= 10 * plain):     # (NaN fails both)
            bad.append(f"{n}: rms error {err:.3g} vs rms {scale:.3g}"
                       + ("" if baseline is None else f" (plain float32: {plain:.3g})"))
    assert not bad, f"{what}: " + "; ".join(bad)


@fixed_seed
@examples(ci=300)
@with_examples
@given(case=cases())
def test_memory_op_equals_reference(case):
    name, spec, shape, dtype, resets, chunk, data_seed = case
    x = _inputs(spec, shape, resets, data_seed)
    full = select_op(spec) not in ("ssd", "delta")
    want = _run(lambda *a: recurrent_reference(spec, *a), x, torch.float64, data_seed, full)
    with mock.patch.object(dispatch, "EXACT_CHUNK", chunk):
        got = _run(lambda *a: memory_op(spec, *a), x, dtype, data_seed, full)
    assert got["y"].dtype == dtype and got["y"].shape == x[2].shape[:3] + (shape["d_v"],)
    baseline = None if dtype == torch.float64 else _run(lambda *a: recurrent_reference(spec, *a), x, dtype,
                                                        data_seed, full)
    _compare(got, want, baseline, f"{name} ({select_op(spec)}) {dtype} vs the float64 reference")


@fixed_seed
@examples(ci=150)
@functools.partial(with_examples, split=0.5)
@given(case=cases(), split=st.floats(0, 1))
def test_two_calls_equal_one(case, split):
    name, spec, shape, dtype, resets, chunk, data_seed = case
    x = _inputs(spec, shape, resets, data_seed)
    s = round(split * shape["seqlen"])

    def one_call(q, k, v, gates, state):
        return memory_op(spec, q, k, v, gates, state)

    def two_calls(q, k, v, gates, state):
        y0, mid = memory_op(spec, q[:, :s], k[:, :s], v[:, :s], {n: g[:, :s] for n, g in gates.items()}, state)
        y1, final = memory_op(spec, q[:, s:], k[:, s:], v[:, s:], {n: g[:, s:] for n, g in gates.items()}, mid)
        return torch.cat([y0, y1], dim=1), final

    with mock.patch.object(dispatch, "EXACT_CHUNK", chunk):
        want = _run(one_call, x, torch.float64, data_seed, True)
        got = _run(two_calls, x, dtype, data_seed, True)
        baseline = None if dtype == torch.float64 else _run(one_call, x, dtype, data_seed, True)
    _compare(got, want, baseline, f"{name} ({select_op(spec)}) {dtype} split at {s} of {shape['seqlen']}")
