"""Packed documents: a reset mask marks where documents start, and a packed batch equals each document alone.

Convention: resets [B, T] bool, True at the first token of a document. The state before that token is the state a
fresh call starts from (zeros, a learnable W0, a Titans persistent prefix: whatever the op or module starts from
without a state), so outputs from that token on, and their gradients, depend on no earlier token. resets[:, 0]
True drops the state passed in for that row; False continues it. A mask has the batch's shape, so it works with
B > 1 and with a state carried across calls; fla's cu_seqlens (B = 1, offsets [0, l_1, l_1 + l_2, ..., T]) map to
it with `resets_from_cu_seqlens`.

Exact by construction, for every op and every module: the rows are cut into documents and the documents of equal
length that start alike (fresh, or continuing their row's state) run as one batched call. Each document therefore
sees its own chunk grid, Titans segments, RoPE positions and convolution window, as it would alone. The price is
one call per distinct (start, length), so a batch whose documents are few per row costs a few calls.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..errors import require

Run = Callable[[list[Tensor], object], tuple[list[Tensor], object]]   # (inputs of n docs, state or None) -> ...


def check_resets(resets: Tensor, batch: int, length: int) -> Tensor:
    """resets as a [B, T] bool tensor on the CPU, after checking its shape and dtype."""
    require(isinstance(resets, Tensor) and resets.dtype == torch.bool, "resets",
            getattr(resets, "dtype", type(resets).__name__), "a bool tensor [batch, seq_len]",
            "True at the first token of every document (e.g. input_ids == eos_id)")
    require(tuple(resets.shape) == (batch, length), "resets.shape", tuple(resets.shape), f"{(batch, length)}",
            "one flag per token of the batch")
    return resets.cpu()


def resets_from_cu_seqlens(cu_seqlens: Tensor, device=None) -> Tensor:
    """fla's cu_seqlens [N + 1] (0 = c_0 < c_1 < ... < c_N = T) -> resets [1, T] (True at every c_i < T)."""
    c = torch.as_tensor(cu_seqlens).long().cpu()
    require(c.dim() == 1 and len(c) >= 1 and int(c[0]) == 0 and bool((c[1:] > c[:-1]).all()), "cu_seqlens",
            c.tolist()[:8], "1-D, starting at 0, strictly increasing", "cumulative document lengths: [0, l_1, ...]")
    resets = torch.zeros(1, int(c[-1]), dtype=torch.bool)
    resets[0, c[:-1]] = True
    return resets.to(device)


def spans(resets: Tensor) -> list[list[tuple[int, int]]]:
    """resets [B, T] -> per row, its documents as (start, end) pairs covering [0, T) in order."""
    B, T = resets.shape
    out = []
    for row in resets:
        cuts = [0] + (row[1:].nonzero().flatten() + 1).tolist() + [T]
        out.append([(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a])
    return out


def run_documents(run: Run, inputs: list[Tensor], resets: Tensor, state, take: Callable[[object, Tensor], object]
                  ) -> tuple[list[Tensor], list[tuple[Tensor, object]]]:
    """Each row of inputs (each [B, T, ...]) cut at resets (check_resets) into documents; returns (outputs, finals).

    run(inputs of n documents [n, L, ...], state of those n rows or None: a fresh start) -> (outputs [n, L, ...],
    state of the n rows). take(state, rows) selects rows of a state (rows: int64 [n]). outputs are [B, T, ...] as
    one call per document would give; finals lists (rows, state of those rows after their last token) for every
    call that ended some row's last document: together they cover every row once. T >= 1 (with T = 0 there is
    nothing to cut: call run once)."""
    B, T = resets.shape
    require(T >= 1, "seq_len", T, ">= 1 for run_documents", "call the op or module directly when T = 0")
    rows_spans = spans(resets)
    groups: dict[tuple[bool, int], list[tuple[int, int, int]]] = {}
    for r, docs in enumerate(rows_spans):
        for i, (a, b) in enumerate(docs):
            continues = i == 0 and not bool(resets[r, 0]) and state is not None
            groups.setdefault((continues, b - a), []).append((r, a, b))
    device = inputs[0].device
    pieces: dict[tuple[int, int], list[Tensor]] = {}
    finals: list[tuple[Tensor, object]] = []
    for (continues, length), docs in groups.items():
        rows = torch.tensor([r for r, _, _ in docs], dtype=torch.long)
        starts = torch.tensor([a for _, a, _ in docs], dtype=torch.long)
        cols = starts[:, None] + torch.arange(length)                       # [n, L]
        sub = [x[rows.to(device)[:, None], cols.to(device)] for x in inputs]
        outs, new_state = run(sub, take(state, rows) if continues else None)
        for j, (r, a, b) in enumerate(docs):
            pieces[(r, a)] = [o[j] for o in outs]
        last = [j for j, (r, _, b) in enumerate(docs) if b == T]
        if last:
            index = torch.tensor(last, dtype=torch.long)
            finals.append((rows[index], take(new_state, index)))
    n_out = len(next(iter(pieces.values())))
    outputs = []
    for i in range(n_out):
        rows_out = [torch.cat([pieces[(r, a)][i] for a, _ in docs], dim=0) for r, docs in enumerate(rows_spans)]
        outputs.append(torch.stack(rows_out))
    return outputs, finals
