"""Language-model batches from a flat token array [N] (e.g. TokenFile.tokens).

Training batches are random windows and a pure function of (seed, step, rank): resuming at any step
replays exactly the same batches, and every rank of a data-parallel run draws its own windows.
Validation batches are consecutive, non-overlapping windows, identical on every call.
"""
from __future__ import annotations

import hashlib
from typing import Iterator

import numpy as np
import torch

from ..errors import require

Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids [B, T] int64, labels [B, T] int64)


def _as_array(tokens) -> np.ndarray:
    """A 1-D view (no copy for np.memmap / ndarray / CPU tensors) of an integer token sequence."""
    tokens = np.asarray(tokens)
    require(tokens.ndim == 1 and np.issubdtype(tokens.dtype, np.integer), "tokens",
            f"array of shape {tokens.shape} and dtype {tokens.dtype}", "a 1-D integer array [N]")
    return tokens


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
    """Windows tokens[s : s + seq_len + 1] for s in starts -> inputs [:, :-1] and labels [:, 1:]."""
    w = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit generator seed from a stable hash of (seed, step, rank) (independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class LMBatches:
    """Random training windows: batch(step) -> (input_ids [B, T], labels [B, T]), int64, T = seq_len.

    Each row is a window of seq_len + 1 consecutive tokens starting at a uniformly random position
    (windows may cross document boundaries, marked by eos); labels are the inputs shifted by one.
    rank / world_size: this process's data-parallel rank and the number of ranks (rank < world_size);
    the global batch of a step is world_size * batch_size rows drawn from (seed, step) alone, and rank r
    takes rows [r * batch_size, (r + 1) * batch_size): any world size sees the same global batch.
    """

    def __init__(self, tokens, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.tokens = _as_array(tokens)
        require(seq_len >= 1, "seq_len", seq_len, ">= 1")
        require(batch_size >= 1, "batch_size", batch_size, ">= 1")
        require(len(self.tokens) > seq_len, "seq_len", seq_len, f"< the number of tokens ({len(self.tokens)})",
                "use a shorter seq_len or a larger corpus")
        require(world_size >= 1 and 0 <= rank < world_size, "rank", rank, f"0 <= rank < world_size={world_size}")
        self.seq_len, self.batch_size, self.seed, self.rank, self.world_size = seq_len, batch_size, seed, rank, world_size

    def batch(self, step: int) -> Batch:
        """The batch of `step` on this rank: the same (seed, step, rank) always gives the same tensors."""
        require(step >= 0, "step", step, ">= 0")
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 0))
        starts = torch.randint(0, len(self.tokens) - self.seq_len, (self.world_size * self.batch_size,), generator=gen)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _windows(self.tokens, mine.numpy(), self.seq_len)


def val_batches(tokens, seq_len: int, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
    """Consecutive windows tokens[i*T : i*T + T + 1], i = 0, 1, ..., batch_size rows per batch (the last
    batch may have fewer), at most max_batches batches (None: all). Yields (input_ids, labels) [B, T] int64.
    """
    tokens = _as_array(tokens)
    require(seq_len >= 1 and len(tokens) > seq_len, "seq_len", seq_len, f"1 <= seq_len < len(tokens)={len(tokens)}")
    require(batch_size >= 1, "batch_size", batch_size, ">= 1")
    require(max_batches is None or max_batches >= 1, "max_batches", max_batches, "None or >= 1")
    n_windows = (len(tokens) - 1) // seq_len
    n_batches = -(-n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)

    def generate() -> Iterator[Batch]:
        for b in range(n_batches):
            rows = np.arange(b * batch_size, min((b + 1) * batch_size, n_windows))
            yield _windows(tokens, rows * seq_len, seq_len)

    return generate()
