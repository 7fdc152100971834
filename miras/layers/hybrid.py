"""Mixers built from two mixers: memory then attention (MAL, MIRAS "-H"), and the gated pair (MAG)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Sequential(nn.Module):
    """first, then second on the normalized running sum: a = first(x); b = second(norm(x + a)); a + b.

    Titans MAL and the MIRAS "-H" hybrids (memory layer followed by sliding-window attention).
    State: (first's state, second's state).
    """

    def __init__(self, first: nn.Module, second: nn.Module, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.first, self.second, self.norm = first, second, nn.RMSNorm(d_model, eps=eps)

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, tuple]:
        s1, s2 = state if state is not None else (None, None)
        a, s1 = self.first(x, s1)
        b, s2 = self.second(self.norm(x + a), s2)
        return a + b, (s1, s2)


class Gated(nn.Module):
    """Titans MAG: a sliding-window attention branch and a memory branch on the same input,
    combined as RMSNorm(attn) * sigmoid(RMSNorm(memory)) (learnable norm weights). State: (attn, memory)."""

    def __init__(self, attention: nn.Module, memory: nn.Module, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.attention, self.memory = attention, memory
        self.norm_attention, self.norm_memory = nn.RMSNorm(d_model, eps=eps), nn.RMSNorm(d_model, eps=eps)

    def forward(self, x: Tensor, state=None) -> tuple[Tensor, tuple]:
        sa, sm = state if state is not None else (None, None)
        a, sa = self.attention(x, sa)
        m, sm = self.memory(x, sm)
        return self.norm_attention(a) * torch.sigmoid(self.norm_memory(m)), (sa, sm)
