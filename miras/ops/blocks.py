"""Chunk-major blocks for the hand-written chunked ops (ssd/scalar.py, delta/fused.py).

A [B, T, H, D] sequence in chunks of C tokens is processed a block of whole chunks at a time, each block read
into contiguous [M, C, D] matrices, M = chunks in the block x B * H (matrix index = chunk * B * H + b * H + h),
so that batched matmuls run on operands that stay in a core's L2.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MATRICES_PER_BLOCK = 64   # chunks x (batch x heads) per batched matmul: ~1 MiB operands stay in a core's L2


def chunk_blocks(N: int, BH: int) -> list[slice]:
    """Runs of whole chunks, about MATRICES_PER_BLOCK matrices each."""
    step = max(1, MATRICES_PER_BLOCK // BH)
    return [slice(n, min(n + step, N)) for n in range(0, N, step)]


def read_chunks(x: Tensor, b: slice, C: int, dtype: torch.dtype) -> Tensor:
    """Chunks b of x [B, T, H, *d] as contiguous [len(b) * B * H, C, *d] in dtype (chunk-major), zero-padded."""
    x = x[:, b.start * C:b.stop * C].to(dtype)
    if x.shape[1] < (b.stop - b.start) * C:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, (b.stop - b.start) * C - x.shape[1]))
    x = x.unflatten(1, (-1, C)).transpose(2, 3).movedim(1, 0)                 # [nb, B, H, C, *d]
    return x.reshape(-1, *x.shape[3:]).contiguous()                 # (reshape keeps an expanded x a view)


def write_chunks(out: Tensor, b: slice, x: Tensor) -> None:
    """The inverse of read_chunks: x [len(b) * B * H, C, D] into chunks b of out [B, N * C, H, D]."""
    B, _, H, D = out.shape
    C = x.shape[1]
    out[:, b.start * C:b.stop * C].view(B, -1, C, H, D).copy_(x.view(-1, B, H, C, D).permute(1, 0, 3, 2, 4))


def log_decay_floor(dtype: torch.dtype) -> float:
    """The per-token floor of a log decay in the compute dtype: log of its smallest normal number (-87.3 in float32,
    -708.4 in float64). A decay below it is a hard reset to the dtype's precision (docs/ops/ssd.md, "Hard resets")."""
    return math.log(torch.finfo(dtype).tiny)


def cumulative_log_decays(g: Tensor) -> tuple[Tensor, Tensor]:
    """g: [N, BH, C] per-token log decays in the compute dtype -> (gc, floored): gc the in-chunk cumulative sum of g
    floored per token at log_decay_floor (so |gc| <= C |floor| and gc_t - gc_s keeps its precision after a reset
    of -1e9 or finfo.min), floored where the floor applied (the gradient there is zero, as through exp(g) = 0)."""
    floor = log_decay_floor(g.dtype)
    return g.clamp_min(floor).cumsum(-1), g < floor


def decay_matrix(gc: Tensor) -> Tensor:
    """gc: [M, C] in-chunk cumulative log decays -> L [M, C, C], exp(gc_t - gc_s) on and below the diagonal, 0
    above (masked to -inf before exp: every exponent is <= 0, nothing overflows)."""
    C = gc.shape[-1]
    upper = torch.ones(C, C, dtype=torch.bool, device=gc.device).triu(1)
    return (gc.unsqueeze(-1) - gc.unsqueeze(-2)).masked_fill_(upper, float("-inf")).exp_()


def scaled_bmm(a: Tensor, b: Tensor, alpha: float) -> Tensor:
    """alpha * a @ b for [M, n, m] @ [M, m, p], the scaling fused into the matmul."""
    return torch.baddbmm(a.new_empty(()), a, b, beta=0, alpha=alpha)
