"""Softmax attention as the non-parametric memory: the KV cache is the state."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .state import MemoryState


def causal_attention(q: Tensor, k: Tensor, v: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
    """q, k: [B, T, H, d_k], v: [B, T, H, d_v]; state.A["k"/"v"]: [B, H, n, d] cached keys / values.

    Token t attends to the n cached tokens and to tokens <= t of this call (torch SDPA).
    """
    keys = torch.cat([state.A["k"].to(k.dtype), k.transpose(1, 2)], dim=2)
    values = torch.cat([state.A["v"].to(v.dtype), v.transpose(1, 2)], dim=2)
    n, T = state.A["k"].shape[2], q.shape[1]
    if n == 0:
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, is_causal=True)
    else:
        mask = torch.ones(T, n + T, dtype=torch.bool, device=q.device).tril(diagonal=n)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
    return y.transpose(1, 2), MemoryState({"k": keys, "v": values})
