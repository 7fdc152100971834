"""memory_op(compile=True) (ops/compiled.py) equals the eager op: outputs, final state and every gradient, at lengths
that are not a multiple of the chunk, with the state carried from one call into the next.

Most cases compile with the "aot_eager" backend (dynamo's graphs and AOTAutograd's forward / backward split, without
inductor's code generation, which takes tens of seconds per op on a CPU); one case runs the real default, inductor.
"""
import pytest
import torch

import miras.ops.compiled as compiled
from miras.layers.memory import MemoryLayer
from miras.ops.compiled import segments
from miras.ops.dispatch import memory_op
from miras.ops.inputs import random_inputs
from miras.ops.reference import recurrent_reference
from miras.space import get_preset
from tests.ops.helpers import rel_err

pytestmark = pytest.mark.skipif(not compiled.available(),
                                reason="torch.compile is unavailable here (torch._dynamo.is_dynamo_supported() "
                                       "is False for this Python / platform)")


@pytest.fixture
def every_op(monkeypatch):
    """Short segments, every chunked op compiled, the code-generation-free backend."""
    monkeypatch.setattr(compiled, "SEGMENT_TOKENS", 32)
    monkeypatch.setattr(compiled, "COMPILED_OPS", ("ssd", "delta", "minibatch"))
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def test_segments():
    assert segments(100, 16, 0, 32) == (0, 32, 3)               # 3 x 32 tokens, tail 4
    assert segments(100, 16, 5, 32) == (11, 32, 2)              # 11 finish the open chunk, 2 x 32, tail 25
    assert segments(40, 16, 0, 512) == (0, 32, 1)               # shorter than a segment: its whole chunks
    assert segments(10, 16, 0, 256) == (0, 0, 0)                # less than a chunk: nothing to compile
    assert segments(10, 16, 12, 256) == (4, 0, 0)
    assert segments(0, 16, 0, 256) == (0, 0, 0)
    assert segments(64, 16, 0, 8) == (0, 16, 4)                 # at least one chunk per segment


def _two_calls(spec, inputs, split: int, compile: bool, **kwargs) -> dict:
    """memory_op on tokens [0, split), then [split, T) from the state the first call returned: y, the final state and
    the gradients of a fixed random projection of both with respect to q, k, v, every gate and the start state."""
    q, k, v, gates, state = inputs
    leaves = {"q": q, "k": k, "v": v, **{f"gates.{n}": g for n, g in gates.items()}, **state.tensors()}
    first = {n: g[:, :split] for n, g in gates.items()}
    rest = {n: g[:, split:] for n, g in gates.items()}
    y0, mid = memory_op(spec, q[:, :split], k[:, :split], v[:, :split], first, state, compile=compile, **kwargs)
    y1, final = memory_op(spec, q[:, split:], k[:, split:], v[:, split:], rest, mid, compile=compile, **kwargs)
    out = {"y": torch.cat([y0, y1], dim=1), **final.tensors()}
    gen = torch.Generator().manual_seed(3)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)).sum() for t in out.values())
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    return {**{n: t.detach() for n, t in out.items()}, **{f"d{n}": g for n, g in zip(leaves, grads)},
            "offset": torch.tensor(float(final.offset))}


# one preset per op family and engine path: ssd (Mamba-2), delta (Gated DeltaNet; KDA: per-channel decay), the
# mini-batch engine's hand-written paths (Titans' LMM with momentum, TTT-Linear's token weights) and its generic one
# (Moneta's frame)
@pytest.mark.parametrize("preset", ["mamba2", "gated-deltanet", "titans-lmm", "ttt-linear"])
def test_compiled_equals_eager(preset, every_op, monkeypatch):
    """200 tokens in two calls, 35 + 165: the mini-batch engine (chunk 16, segments of 32) runs the first call as one
    compiled segment and 3 eager tokens, the second as 13 eager tokens that finish the open chunk, 4 compiled
    segments and 24 eager ones; ssd and delta (segments of 64) the first call eager, the second as 2 compiled
    segments and 37 eager tokens."""
    spec = get_preset(preset).spec
    segments_run = []
    monkeypatch.setattr(compiled, "_compiled_call", _counting(compiled._compiled_call, segments_run))
    inputs = random_inputs(spec, batch=2, seqlen=200, heads=2, d_k=8, dtype=torch.float32, requires_grad=True)
    want = _two_calls(spec, inputs, 35, compile=False)
    got = _two_calls(spec, inputs, 35, compile=True)
    assert len(segments_run) == (5 if spec.chunk_size == 16 else 2)
    assert not compiled._failed
    assert got.keys() == want.keys()
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-4, name


def _counting(fn, calls: list):
    def counted(*args):
        calls.append(1)
        return fn(*args)
    return counted


def test_compiled_equals_reference_float64(every_op):
    """The spec: the token-by-token recurrence, float64, odd length (2 compiled segments, 13 eager tokens)."""
    spec = get_preset("ttt-linear").spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=77, heads=2, d_k=8, requires_grad=True)
    y, final = memory_op(spec, q, k, v, gates, state, compile=True)
    y_ref, final_ref = recurrent_reference(spec, q, k, v, gates, state)
    assert rel_err(y, y_ref) < 1e-10
    for name, t in final_ref.tensors().items():
        assert rel_err(final.tensors()[name], t) < 1e-10, name
    leaves = [q, k, v, *gates.values(), *state.tensors().values()]
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    for a, b in zip(torch.autograd.grad((y * w).sum(), leaves), torch.autograd.grad((y_ref * w).sum(), leaves)):
        assert rel_err(a, b) < 1e-9


def test_memory_layer_compile(every_op):
    """MemoryLayer(compile=True): the same forward and parameter gradients as the eager layer."""
    torch.manual_seed(0)
    layer = MemoryLayer(get_preset("gated-deltanet").spec, d_model=16, heads=2)
    x = torch.randn(2, 150, 16)
    results = []
    for flag in (False, True):
        layer.compile = flag
        y, _ = layer(x)
        results.append((y.detach(), torch.autograd.grad(y.square().sum(), list(layer.parameters()))))
    (y0, g0), (y1, g1) = results
    assert rel_err(y1, y0) < 1e-5
    for a, b in zip(g1, g0):
        assert rel_err(a, b) < 1e-4


def test_compile_failure_falls_back(monkeypatch):
    """A backend that fails: one warning, the eager result, and no second try for that key."""
    calls = []

    def broken(gm, example_inputs):
        calls.append(1)
        raise RuntimeError("no compiler here")
    monkeypatch.setattr(compiled, "_compiled", {})
    monkeypatch.setattr(compiled, "_failed", set())
    monkeypatch.setattr(compiled, "SEGMENT_TOKENS", 16)
    monkeypatch.setattr(compiled, "BACKEND", broken)
    spec = get_preset("ttt-linear").spec
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=40, heads=2, d_k=8, dtype=torch.float32)
    y_eager, _ = memory_op(spec, q, k, v, gates, state)
    with pytest.warns(RuntimeWarning, match="torch.compile failed for the minibatch op"):
        y, _ = memory_op(spec, q, k, v, gates, state, compile=True)
    assert rel_err(y, y_eager) == 0.0
    tries = len(calls)
    memory_op(spec, q, k, v, gates, state, compile=True)
    assert len(calls) == tries


def test_inductor(monkeypatch):
    """The default backend on the default op (TTT-Linear's mini-batch engine): compiled code, the eager numbers."""
    monkeypatch.setattr(compiled, "SEGMENT_TOKENS", 16)
    spec = get_preset("ttt-linear").spec
    inputs = random_inputs(spec, batch=1, seqlen=19 + 13 + 16 + 5, heads=1, d_k=4, dtype=torch.float32,
                           requires_grad=True)
    want = _two_calls(spec, inputs, 19, compile=False)
    got = _two_calls(spec, inputs, 19, compile=True)
    assert not compiled._failed
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-4, name
