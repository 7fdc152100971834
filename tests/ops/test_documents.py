"""Packed documents (miras/ops/documents.py): memory_op with resets equals one call per document, every preset.

Each check compares the packed call with the documents run alone, in float64 and float32: outputs, every row's
final state (its last document's), the gradients of a random projection of both with respect to q, k, v, the
gates, W0 and the start state; then the next call continues from the packed final state as each row's last
document would. Row 0 continues the given state at t = 0, row 1 drops it (a reset at t = 0); documents of one
token, documents shorter than a chunk and a document that ends mid-chunk are all in the mask.
"""
from __future__ import annotations

import pytest
import torch

from miras.ops import MemoryState
from miras.ops.dispatch import memory_op
from miras.ops.documents import resets_from_cu_seqlens, spans
from miras.ops.inputs import random_inputs
from miras.ops.state import RaggedState
from miras.space import ConfigError, get_preset, list_presets

from .helpers import rel_err

T = 23
RESETS = {0: [4, 5, 12], 1: [0, 9, 10, 21]}     # row -> the first tokens of its documents


def _mask(batch: int, length: int) -> torch.Tensor:
    resets = torch.zeros(batch, length, dtype=torch.bool)
    for row, starts in RESETS.items():
        resets[row, [t for t in starts if t < length]] = True
    return resets


def _deep(spec) -> bool:
    return hasattr(spec.memory, "init_state") and not spec.memory.is_matrix


def _case(name: str, dtype: torch.dtype, length: int = T):
    spec = get_preset(name).spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=length, heads=2, d_k=8, dtype=dtype, seed=3)
    W0 = None
    if _deep(spec):
        W0 = {n: (w[0] + 0.01 * torch.randn_like(w[0])).detach() for n, w in state.A.items()}
    leaves = [q, k, v, *gates.values(), *state.tensors().values(), *(W0 or {}).values()]
    for t in leaves:
        t.requires_grad_(True)
    return spec, q, k, v, gates, state, W0, leaves


def _project(y: torch.Tensor, state: MemoryState, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    total = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    for t in state.tensors().values():
        total = total + (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum()
    return total


def _alone(spec, q, k, v, gates, state, W0, resets):
    """Every document of every row as its own call: (y, the rows' final states)."""
    ys, finals = [], []
    for row, docs in enumerate(spans(resets)):
        pieces, row_state = [], state.rows(torch.tensor([row]))
        for i, (a, b) in enumerate(docs):
            start = row_state if i == 0 and not resets[row, 0] else None
            y, row_state = memory_op(spec, q[row:row + 1, a:b], k[row:row + 1, a:b], v[row:row + 1, a:b],
                                     {n: g[row:row + 1, a:b] for n, g in gates.items()}, start, W0=W0)
            pieces.append(y)
        ys.append(torch.cat(pieces, dim=1))
        finals.append(row_state)
    return torch.cat(ys), finals


def _row_states(state, batch: int) -> list[MemoryState]:
    return [state.rows(torch.tensor([r])) for r in range(batch)]


PRESETS = [p for p in list_presets() if get_preset(p).spec.memory.__class__.__name__ != "NonParametric"] + ["transformer"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", PRESETS)
def test_packed_equals_each_document_alone(name, dtype):
    spec, q, k, v, gates, state, W0, leaves = _case(name, dtype)
    resets = _mask(2, T)
    y, final = memory_op(spec, q, k, v, gates, state, resets=resets, W0=W0)
    y_ref, finals_ref = _alone(spec, q, k, v, gates, state, W0, resets)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_err(y, y_ref) < tol
    for got, want in zip(_row_states(final, 2), finals_ref):
        assert got.offset == want.offset
        for n, t in want.tensors().items():
            assert rel_err(got.tensors()[n], t) < tol, n
    grads = torch.autograd.grad(_loss(y, _row_states(final, 2)), leaves, allow_unused=True)
    grads_ref = torch.autograd.grad(_loss(y_ref, finals_ref), leaves, allow_unused=True)
    for g, g_ref in zip(grads, grads_ref):
        assert (g is None) == (g_ref is None)
        if g is not None:
            assert rel_err(g, g_ref) < (1e-10 if dtype == torch.float64 else 1e-4)


def _loss(y, row_states):
    """A random projection of the outputs and of every row's final state (the same for packed and alone)."""
    return _project(y, MemoryState({}), seed=1) + sum(_project(y.new_zeros(0), s, seed=2 + r)
                                                      for r, s in enumerate(row_states))


@pytest.mark.parametrize("name", ["gated-deltanet", "titans-lmm", "moneta", "memora", "transformer"])
def test_packed_state_continues(name):
    """The packed call's final state (a RaggedState where rows stopped at different chunk offsets) continues each
    row as its last document would."""
    spec, q, k, v, gates, state, W0, _ = _case(name, torch.float64, length=T + 7)
    resets = _mask(2, T)
    part1 = (slice(None), slice(0, T))
    part2 = (slice(None), slice(T, T + 7))
    _, final = memory_op(spec, q[part1], k[part1], v[part1], {n: g[part1] for n, g in gates.items()}, state,
                         resets=resets, W0=W0)
    y2, _ = memory_op(spec, q[part2], k[part2], v[part2], {n: g[part2] for n, g in gates.items()}, final, W0=W0)
    _, finals_ref = _alone(spec, q[part1], k[part1], v[part1], {n: g[part1] for n, g in gates.items()}, state, W0,
                           resets)
    for row, row_state in enumerate(finals_ref):
        r = slice(row, row + 1)
        y_ref, _ = memory_op(spec, q[r, T:], k[r, T:], v[r, T:], {n: g[r, T:] for n, g in gates.items()},
                             row_state, W0=W0)
        assert rel_err(y2[r], y_ref) < 1e-12
    if spec.chunk_size > 1 and _deep(spec):
        assert isinstance(final, RaggedState)     # rows 0 and 1 end 11 and 2 tokens into their last documents


def test_no_reset_after_the_first_token_is_one_call():
    spec, q, k, v, gates, state, W0, _ = _case("moneta", torch.float64)
    resets = torch.zeros(2, T, dtype=torch.bool)
    y, final = memory_op(spec, q, k, v, gates, state, resets=resets, W0=W0)
    y_ref, final_ref = memory_op(spec, q, k, v, gates, state)
    assert torch.equal(y, y_ref) and all(torch.equal(a, b) for a, b in zip(final.tensors().values(),
                                                                         final_ref.tensors().values()))


def test_cu_seqlens():
    assert resets_from_cu_seqlens(torch.tensor([0, 3, 4, 9])).tolist() == [[True, False, False, True, True] +
                                                                           [False] * 4]
    with pytest.raises(ConfigError, match="cu_seqlens"):
        resets_from_cu_seqlens(torch.tensor([0, 3, 3]))


def test_bad_resets_are_refused():
    spec, q, k, v, gates, state, W0, _ = _case("titans-lmm", torch.float64)
    with pytest.raises(ConfigError, match="resets.shape"):
        memory_op(spec, q, k, v, gates, state, resets=torch.zeros(2, T - 1, dtype=torch.bool), W0=W0)
    with pytest.raises(ConfigError, match="resets"):
        memory_op(spec, q, k, v, gates, state, resets=torch.zeros(2, T), W0=W0)
    with pytest.raises(ConfigError, match="W0"):
        memory_op(spec, q, k, v, gates, state, resets=_mask(2, T))
