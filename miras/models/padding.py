"""Padded batches and packed documents: rows run as groups, so no state ever sees a pad or another document.

Packed documents (resets [B, T], True at a document's first token; miras/ops/documents.py): `run_packed` runs any
module(x, state) -> (y, state) (a layer, a mixer, the whole model) so that each document equals a call on it
alone, and returns the states as a RowGroups (rows whose last documents ended alike share a group).

Padded batches:
An attention_mask [B, T] (1 = token, 0 = pad) in which every row's tokens are one contiguous run (left padding,
right padding, or none) splits the batch into groups of rows whose tokens sit at the same columns. Each group runs
unpadded, from its own states, and keeps its own states: a RowGroups. Later calls given a RowGroups run every group
from where it stopped, so each row decodes exactly as it would alone: its own chunk grid, Titans segments, RoPE
positions and KV cache, nothing written by a pad. The price is one model call per group (per distinct length),
not one batched call; logits at pad positions are 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.documents import check_resets, run_documents
from ..errors import require
from .state_tree import map_tensors


@dataclass
class RowGroups:
    """rows[g]: the batch indices (int64 [n_g]) that share states[g], the model's per-layer states for those rows
    in that order (None: not started). Every batch row is in exactly one group."""

    rows: list[Tensor]
    states: list

    @classmethod
    def whole(cls, batch: int, states=None, device=None) -> "RowGroups":
        return cls([torch.arange(batch, device=device)], [states])

    @property
    def batch(self) -> int:
        return sum(len(r) for r in self.rows)

    def select(self, indices: Tensor) -> "RowGroups":
        """New row j continues old row indices[j] (ids; a bool mask keeps the rows where it is True): for beam
        search reordering, row repetition and dropping finished rows."""
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        indices = indices.to(self.rows[0].device)
        group_of = torch.empty(self.batch, dtype=torch.long, device=indices.device)
        place_in = torch.empty_like(group_of)
        for g, rows in enumerate(self.rows):
            group_of[rows] = g
            place_in[rows] = torch.arange(len(rows), device=indices.device)
        new_rows, new_states = [], []
        for g, states in enumerate(self.states):
            taken = (group_of[indices] == g).nonzero().flatten()
            if len(taken):
                new_rows.append(taken)
                new_states.append(_take(states, place_in[indices[taken]]))
        return RowGroups(new_rows, new_states)

    def repeat_interleave(self, repeats: int) -> "RowGroups":
        return self.select(torch.arange(self.batch).repeat_interleave(repeats))


def _take(states, index: Tensor):
    """The rows `index` of every batched tensor of a states tree (0-dim tensors are shared by the rows)."""
    return map_tensors(lambda t: t[index.to(t.device)] if t.dim() else t, states)


def token_spans(attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """attention_mask [B, T] -> (start [B], length [B]) of each row's contiguous run of tokens (length 0: none)."""
    require(attention_mask.dim() == 2, "attention_mask", tuple(attention_mask.shape), "[batch, seq_len]")
    mask = attention_mask.bool()
    T = mask.shape[1]
    length = mask.sum(1)
    start = torch.where(length > 0, mask.int().argmax(1), torch.zeros_like(length))
    cols = torch.arange(T, device=mask.device)
    run = (cols >= start[:, None]) & (cols < (start + length)[:, None])
    bad = (run != mask).any(1).nonzero().flatten().tolist()
    require(not bad, "attention_mask", f"rows {bad[:5]} with a pad between tokens",
            "each row's tokens one contiguous run (left or right padding)", "pad on one side only")
    return start, length


def grouped_forward(model, input_ids: Tensor, attention_mask: Tensor | None, groups: RowGroups):
    """model(input_ids, states) for every group and every span in it -> (logits [B, T, V], RowGroups)."""
    B, T = input_ids.shape
    require(groups.batch == B, "input_ids batch", B, f"{groups.batch}, the rows of the states given")
    if attention_mask is None:
        start, length = torch.zeros(B, dtype=torch.long), torch.full((B,), T)
    else:
        start, length = (s.cpu() for s in token_spans(attention_mask))
    logits, new_rows, new_states = None, [], []
    for rows, states in zip(groups.rows, groups.states):
        spans = torch.stack([start[rows.cpu()], length[rows.cpu()]], 1)
        for span in spans.unique(dim=0):
            where = (spans == span).all(1).nonzero().flatten()
            s, n = span.tolist()
            sub, sub_states = rows[where.to(rows.device)], None if states is None else _take(states, where)
            if n:
                out, sub_states = model(input_ids[sub, s:s + n], sub_states)
                if logits is None:
                    logits = out.new_zeros(B, T, out.shape[-1])
                logits[sub, s:s + n] = out
            new_rows.append(sub)
            new_states.append(sub_states)
    if logits is None:  # no row had a token
        logits = model.head.weight.new_zeros(B, T, model.config.vocab_size)
    return logits, RowGroups(new_rows, new_states)


def run_packed(module, x: Tensor, resets: Tensor, states=None):
    """module(x, state) -> (y, state) on x [B, T, ...] whose rows hold documents marked by resets [B, T] (True at a
    document's first token): (y [B, T, ...], RowGroups). Every document runs as it would alone, from the module's
    fresh state (state None), except a row's first document without a reset at t = 0, which continues the row's
    state (states: one state for every row, a RowGroups, or None)."""
    B, T = x.shape[:2]
    resets = check_resets(resets, B, T)
    groups = states if isinstance(states, RowGroups) else RowGroups.whole(B, states, x.device)
    require(groups.batch == B, "x batch", B, f"{groups.batch}, the rows of the states given")
    if T == 0:
        return module(x, states if not isinstance(states, RowGroups) else None)[0], groups
    y, new_rows, new_states = None, [], []
    for rows, states in zip(groups.rows, groups.states):
        def run(inputs, state):
            out, state = module(inputs[0], state)
            return [out], state
        (part,), finals = run_documents(run, [x[rows]], resets[rows.cpu()], states, _take)
        y = part.new_zeros(B, *part.shape[1:]) if y is None else y
        y = y.index_copy(0, rows, part)
        for sub, state in finals:
            new_rows.append(rows[sub.to(rows.device)])
            new_states.append(state)
    return y, RowGroups(new_rows, new_states)
