"""Opt-in `torch.compile` of the chunked memory ops, in fixed-length segments.

Every chunked op is a function of (inputs, start state) -> (outputs, end state), and continuing from the state one
call returns equals one call on the whole sequence (the ops' contract, tested against the recurrence). So a sequence
of T tokens runs as

    head      the tokens that finish the start state's open chunk (eager)
    segments  L tokens each, L = SEGMENT_TOKENS rounded down to a multiple of the chunk (less when T is shorter):
              one compiled call per segment, the state passed from segment to segment in Python
    tail      the tokens left after the last full segment (eager)

torch.compile traces a Python loop by unrolling it, so compiling an op over the whole sequence would build a graph
(and spend compile time) growing with T, and compile again for every new T. A segment has a bounded length: its
graph is bounded, and it is reused for every segment of every call. Dynamo's guards key the compiled graphs by
(function, spec, dtype, grad mode, shapes); a second batch size (e.g. the pieces of packed documents) compiles once
more, with a dynamic batch dimension, as torch.compile does by default. A failure to compile (no C++ compiler, an
unsupported construct) warns once and runs that (op, spec, dtype, grad mode, shapes) eager from then on. Inside a
model that is itself being compiled the segments are a graph break: they compile on their own, never unrolled into
the model's graph.

Which ops: COMPILED_OPS (benchmarks/bench_compile.py, docs/training.md "Compiled ops"): the mini-batch engine (many
small ops per chunk, which inductor can fuse); the ssd and delta ops (a few large batched matmuls per block of
chunks) gained nothing compiled, so they stay eager.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor

from .state import MemoryState, initial_state

SEGMENT_TOKENS = 256            # tokens per compiled call (rounded down to a multiple of the op's chunk)
COMPILED_OPS = ("minibatch",)   # select_op names compiled; the others run eager (see the module docstring)
KERNEL_CHUNK = 64               # the chunk of ssd / delta (their function does not depend on it): segment unit
BACKEND = "inductor"            # torch.compile backend (tests use "aot_eager": the same graphs, no code generation)

RECOMPILE_LIMIT = 64            # graphs dynamo may keep per compiled function (its default, 8, is global)

_compiled: dict[tuple, Callable] = {}      # (run, backend) -> torch.compile(run)
_failed: set[tuple] = set()                # (op, spec, dtype, grad mode, shapes, backend) whose compile failed: eager


def available() -> bool:
    """Whether torch.compile can run here at all (dynamo supports this Python and platform)."""
    try:
        import torch._dynamo
        return bool(torch._dynamo.is_dynamo_supported())
    except Exception:                       # noqa: BLE001 (an import failure means no compile)
        return False


def segments(T: int, chunk: int, offset: int, target: int) -> tuple[int, int, int]:
    """(head, length, count): `head` tokens finish the open chunk (offset tokens already in it), then `count`
    segments of `length` tokens (a multiple of chunk, at most max(target, chunk)); the tail is the remaining
    T - head - count * length tokens."""
    head = min(T, (chunk - offset) % chunk)
    rest = T - head
    length = min(max(target // chunk, 1), rest // chunk) * chunk
    return head, length, (rest // length if length else 0)


def segmented_run(run: Callable, op: str, spec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor],
                  state: MemoryState | None, *args) -> tuple[Tensor, MemoryState]:
    """run(op, spec, q, k, v, gates, state, *args) -> (y, state) (dispatch's `_run`), with an op of COMPILED_OPS
    run in segments, the full ones through torch.compile (see the module docstring). Same result as run."""
    chunk = spec.chunk_size if op == "minibatch" else KERNEL_CHUNK
    count = segments(q.shape[1], chunk, 0 if state is None else state.offset, SEGMENT_TOKENS)[2]
    if op not in COMPILED_OPS or not count or not available():
        return run(op, spec, q, k, v, gates, state, *args)
    return _in_segments(run, op, spec, chunk, q, k, v, gates, state, *args)


@torch.compiler.disable      # a graph break in an enclosing torch.compile: the segments compile on their own
def _in_segments(run, op, spec, chunk, q, k, v, gates, state, *args):
    B, T, H, d_k = k.shape
    head, length, count = segments(T, chunk, 0 if state is None else state.offset, SEGMENT_TOKENS)
    if state is None:                       # (a matrix memory from zeros: every segment then gets a state)
        state = initial_state(spec, B, heads=H, d_k=d_k, d_v=v.shape[-1], dtype=q.dtype, device=q.device)
    starts = [0, head, *(head + (i + 1) * length for i in range(count))]
    ys = []
    for lo, hi in zip(starts, [*starts[1:], T]):
        if hi == lo:
            continue
        part, part_gates = [x[:, lo:hi] for x in (q, k, v)], {n: g[:, lo:hi] for n, g in gates.items()}
        if hi - lo == length and lo >= head:
            y, state = _compiled_call(run, op, spec, *part, part_gates, state, *args)
        else:
            y, state = run(op, spec, *part, part_gates, state, *args)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def _contiguous(x):
    """Tensors (alone, in a list or dict, in a MemoryState) made contiguous: a segment's inputs are views of the whole
    sequence (strides that depend on T), a start state is often W0 expanded over the batch (stride 0) and ssd's
    state a transposed view; contiguous copies give every segment the same strides, so one graph serves them all."""
    if isinstance(x, Tensor):
        return x.contiguous()
    if isinstance(x, dict):
        return {n: _contiguous(t) for n, t in x.items()}
    if isinstance(x, list):
        return [_contiguous(t) for t in x]
    return replace(x, **{name: None if group is None else _contiguous(group) for name, group in x.groups().items()})


def _compiled_call(run, op, spec, q, k, v, gates, state, *args):
    """run(...) through torch.compile(run), or eager where compiling this (op, spec, dtype, grad mode, shapes) failed
    (warned once). Dynamo's guards select or make the graph for the arguments; RECOMPILE_LIMIT graphs per function
    (dynamo's default, 8, counts every spec, dtype and shape that reached a function, and runs eager past it)."""
    key = (op, spec, q.dtype, torch.is_grad_enabled(), tuple(q.shape), tuple(v.shape), BACKEND)
    if key in _failed:
        return run(op, spec, q, k, v, gates, state, *args)
    fn = _compiled.get((run, BACKEND))
    if fn is None:
        fn = _compiled[(run, BACKEND)] = torch.compile(run, backend=BACKEND)
    from torch._dynamo import config as dynamo_config
    from torch._dynamo.exc import TorchDynamoException
    try:
        with dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
            return fn(op, spec, *_contiguous([q, k, v, gates, state]), *args)
    except TorchDynamoException as err:
        _failed.add(key)
        first = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(f"torch.compile failed for the {op} op ({spec}, {q.dtype}, q {tuple(q.shape)}): "
                      f"{type(err).__name__}: {first}; running it eager", RuntimeWarning, stacklevel=2)
    return run(op, spec, q, k, v, gates, state, *args)
