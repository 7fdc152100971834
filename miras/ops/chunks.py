"""Splitting a [B, T, H, ...] sequence into zero-padded chunks for the exact chunked ops."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def to_chunks(x: Tensor, C: int) -> Tensor:
    """[B, T, H, *d] -> [B, H, N, C, *d], zero-padded to N * C tokens (zero k, v, g and beta leave a state untouched)."""
    x = x.transpose(1, 2)
    pad = -x.shape[2] % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.unflatten(2, (-1, C))
