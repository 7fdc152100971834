"""Perplexity overall and by position in the context: does the model use long context?"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import require


def position_buckets(length: int) -> list[tuple[int, int]]:
    """[0, 64), [64, 128), [128, 256), ... doubling up to length."""
    edges = [0, 64]
    while edges[-1] < length:
        edges.append(min(edges[-1] * 2, length))
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if lo < length]


@torch.no_grad()
def perplexity_by_position(model, tokens, length: int, windows: int = 8, piece: int = 1024,
                           document_start: int | None = None) -> dict:
    """Streams `windows` consecutive windows of `length` tokens (pieces of `piece` tokens, state carried).

    tokens: 1-D token ids (e.g. a memory-mapped val split). Returns {"loss", "ppl", "buckets": [{"lo",
    "hi", "loss", "ppl"}]} where a bucket averages the next-token loss of positions lo..hi-1 of a window.
    document_start: the token that starts a document (eos) for a model trained with data.documents=reset: the
    state restarts there, as in training (None: windows read across documents).
    """
    require(len(tokens) > windows * length, "windows * length", windows * length,
            f"< the number of evaluation tokens ({len(tokens)})", "use fewer or shorter windows")
    device = next(model.parameters()).device
    losses = torch.zeros(length, dtype=torch.float64)
    for w in range(windows):
        ids = torch.as_tensor(tokens[w * length:(w + 1) * length + 1].astype("int64"), device=device)[None]
        states = None
        for start in range(0, length, piece):
            end = min(length, start + piece)
            piece_ids = ids[:, start:end]
            resets = None if document_start is None else piece_ids == document_start
            logits, states = model(piece_ids, states, resets=resets)
            losses[start:end] += F.cross_entropy(logits[0].float(), ids[0, start + 1:end + 1], reduction="none").cpu()
    losses /= windows
    buckets = [{"lo": lo, "hi": hi, "loss": losses[lo:hi].mean().item(), "ppl": math.exp(losses[lo:hi].mean())}
               for lo, hi in position_buckets(length)]
    return {"loss": losses.mean().item(), "ppl": math.exp(losses.mean()), "buckets": buckets}
