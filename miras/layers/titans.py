"""Titans MAC (memory as context): attention over [persistent ++ retrieved memory ++ segment].

Per segment of C tokens (Titans, arXiv 2501.00663, section 4.1):
  h_t = M_{start}(q_t)            read the memory as it was *before* the segment (no write)
  y   = attention of each segment token over the persistent tokens, the retrievals h_j and the
        tokens x_j of the segment with j <= t (causal: a token never sees a later token's retrieval)
  o_t = y_t * sigmoid(memory_layer(y)_t)   the memory is written with y; its read after the write gates y
The attention context is the segment only, so decoding cost is bounded by C at any context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import MemoryState
from ..errors import require
from ..space.memory import poly_features
from .attention import rope
from .memory import MemoryLayer, MemoryLayerState


@dataclass
class MACState:
    memory: MemoryLayerState | None   # the memory layer, written with attention outputs
    start: MemoryState                # the memory at the start of the current segment (for retrieval)
    k: Tensor                         # [B, H, 2 n, d]: keys of the n segment tokens so far, retrievals first
    v: Tensor
    pos: int                          # n, tokens already in the current segment


class MemoryAsContext(nn.Module):
    """x: [B, T, D] -> [B, T, D]; forward(x, state) -> (y, MACState)."""

    def __init__(self, memory: MemoryLayer, d_model: int, heads: int, segment: int, persistent_tokens: int = 0,
                 rope_theta: float = 10000.0):
        super().__init__()
        require(segment >= 1, "segment", segment, ">= 1", "Titans uses segments of 64-512 tokens")
        require(d_model % heads == 0, "heads", heads, f"a divisor of d_model={d_model}")
        self.memory, self.segment, self.heads, self.theta = memory, segment, heads, rope_theta
        self.head_dim = d_model // heads
        mem_inner = memory.heads * memory.head_dim
        self.retrieve_q = nn.Linear(d_model, mem_inner, bias=False)
        self.retrieve_out = nn.Linear(mem_inner, d_model, bias=False)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.persistent = nn.Parameter(torch.randn(2, heads, persistent_tokens, self.head_dim) * 0.02)

    def retrieve(self, x: Tensor, start: MemoryState) -> Tensor:
        """h = M_start(q(x)) per memory head: x [B, n, D] -> [B, n, D], no write."""
        B, n, _ = x.shape
        mem = self.memory
        q = F.normalize(self.retrieve_q(x).view(B, n, mem.heads, mem.head_dim), dim=-1).transpose(1, 2)
        if mem.poly_scale is not None:                      # the memory reads polynomial features (ATLAS)
            q = poly_features(q, mem.poly_scale)
        W = mem.spec.retention.boundary({name: a.to(q.dtype) for name, a in start.A.items()})
        return self.retrieve_out(mem.spec.memory(W, q).transpose(1, 2).reshape(B, n, -1))

    def _heads(self, t: Tensor) -> Tensor:
        return t.view(*t.shape[:2], self.heads, self.head_dim).transpose(1, 2)

    def _attend(self, x: Tensor, h: Tensor, state: MACState) -> tuple[Tensor, Tensor, Tensor]:
        """Attention of the piece x [B, n, D] (positions pos..pos+n-1 of the segment) with retrievals h."""
        B, n, _ = x.shape
        pos = torch.arange(state.pos, state.pos + n, device=x.device)
        q, k, v = (self._heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        _, kh, vh = (self._heads(t) for t in self.qkv(h).chunk(3, dim=-1))
        q, k, kh = (rope(t, pos, self.theta) for t in (q, k, kh))
        p = state.pos
        keys_h, keys_x = torch.cat([state.k[:, :, :p], kh], 2), torch.cat([state.k[:, :, p:], k], 2)
        vals_h, vals_x = torch.cat([state.v[:, :, :p], vh], 2), torch.cat([state.v[:, :, p:], v], 2)
        pk, pv = (t.unsqueeze(0).expand(B, -1, -1, -1).to(x.dtype) for t in self.persistent)
        seen = torch.arange(p + n, device=x.device)[None, :] <= pos[:, None]              # [n, p + n]
        mask = torch.cat([seen.new_ones(n, pk.shape[2]), seen, seen], dim=1)
        y = F.scaled_dot_product_attention(q, torch.cat([pk, keys_h, keys_x], 2), torch.cat([pv, vals_h, vals_x], 2),
                                           attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, n, -1)), torch.cat([keys_h, keys_x], 2), \
            torch.cat([vals_h, vals_x], 2)

    def forward(self, x: Tensor, state: MACState | None = None) -> tuple[Tensor, MACState]:
        B = x.shape[0]
        if state is None:
            empty = x.new_zeros(B, self.heads, 0, self.head_dim)
            state = MACState(None, self.memory.initial_state(B), empty, empty, 0)
        outs, start = [], 0
        while start < x.shape[1]:
            end = min(x.shape[1], start + self.segment - state.pos)
            piece = x[:, start:end]
            y, k, v = self._attend(piece, self.retrieve(piece, state.start), state)
            m, mem = self.memory(y, state.memory)
            outs.append(y * torch.sigmoid(m))
            pos = state.pos + end - start
            if pos == self.segment:
                empty = x.new_zeros(B, self.heads, 0, self.head_dim)
                state = MACState(mem, mem.memory, empty, empty, 0)
            else:
                state = MACState(mem, state.start, k, v, pos)
            start = end
        return (torch.cat(outs, dim=1) if outs else x), state    # no tokens: nothing read, the state as it was
