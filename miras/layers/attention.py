"""Causal softmax attention: full or sliding-window, Titans persistent memory, GQA, RoPE, an optional short
convolution on q, k and v; the KV cache (and the convolution's last inputs) is the state.

Persistent memory (Titans, after Sukhbaatar et al. 2019) is N_p learnable key/value pairs per KV head, in key/value
space, that every query attends to. They carry no position: no RoPE, never in the cache, never masked by the window.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import require
from .conv import ShortConv


@dataclass
class AttentionState:
    """k, v: [B, kv_heads, n, head_dim] the cached keys (RoPE applied) and values of the last n tokens (all of
    them without a window, n <= window - 1 with one); pos: [] int64, the absolute position of the next token;
    conv: [B, conv - 1, channels] the convolution's last q|k|v inputs (None without one)."""
    k: Tensor
    v: Tensor
    pos: Tensor
    conv: Tensor | None = None


def rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotary embedding, rotate-half convention. x: [B, H, T, d]; pos: [T] positions. Channels i and i + d/2
    rotate together by the angle pos * theta^(-2i/d), computed in at least fp32."""
    d = x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    inv_freq = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=dtype) / d)
    angle = pos.to(dtype)[:, None] * inv_freq                           # [T, d/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.to(dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Multi-head causal softmax attention (torch SDPA, scale head_dim^-1/2) with RoPE on q and k.

    x: [B, T, D] -> y: [B, T, D]. window: each token sees itself and the window - 1 previous tokens (None: all);
    persistent_tokens: N_p learnable key/value pairs seen by every token; kv_heads: grouped-query attention
    (query head h reads KV head h // (heads / kv_heads); None: heads); conv: kernel of a depthwise causal
    convolution on the q, k and v projections, before RoPE (Primer's multi-dconv-head attention; 0: none). With it
    a token's key and value carry its predecessors, so a query finds "the token after a match" in one layer, as
    the recurrent blocks do with their short convolution (docs/design-space.md). forward(x, state) -> (y,
    AttentionState).
    """

    def __init__(self, d_model: int, heads: int, head_dim: int | None = None, window: int | None = None,
                 persistent_tokens: int = 0, rope_theta: float = 10000.0, kv_heads: int | None = None,
                 conv: int = 0):
        super().__init__()
        require(heads >= 1, "heads", heads, "an integer >= 1")
        require(head_dim is not None or d_model % heads == 0, "heads", heads,
                f"a divisor of d_model={d_model} when head_dim is None", "pass head_dim or change heads")
        head_dim = d_model // heads if head_dim is None else head_dim
        require(head_dim >= 2 and head_dim % 2 == 0, "head_dim", head_dim, "an even integer >= 2",
                "RoPE rotates channel pairs")
        kv_heads = heads if kv_heads is None else kv_heads
        require(kv_heads >= 1 and heads % kv_heads == 0, "kv_heads", kv_heads, f"a divisor of heads={heads}")
        require(window is None or window >= 1, "window", window, "None (full attention) or an integer >= 1")
        require(persistent_tokens >= 0, "persistent_tokens", persistent_tokens, "an integer >= 0")
        require(rope_theta > 0, "rope_theta", rope_theta, "a number > 0")
        require(isinstance(conv, int) and not isinstance(conv, bool) and conv >= 0, "conv", conv,
                "an integer >= 0 (the kernel of the q, k, v convolution; 0: none)", "e.g. conv=4")
        self.heads, self.head_dim, self.kv_heads, self.window = heads, head_dim, kv_heads, window
        self.persistent_tokens, self.rope_theta = persistent_tokens, rope_theta
        self.q_proj = nn.Linear(d_model, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, d_model, bias=False)
        self.conv = ShortConv((heads + 2 * kv_heads) * head_dim, conv, activation=False) if conv else None
        self.persistent_k = self.persistent_v = None
        if persistent_tokens:
            self.persistent_k = nn.Parameter(0.02 * torch.randn(kv_heads, persistent_tokens, head_dim))
            self.persistent_v = nn.Parameter(0.02 * torch.randn(kv_heads, persistent_tokens, head_dim))

    def initial_state(self, batch: int, like: Tensor) -> AttentionState:
        """The empty cache at position 0, in like's dtype and device."""
        empty = like.new_zeros(batch, self.kv_heads, 0, self.head_dim)
        conv = like.new_zeros(batch, self.conv.kernel - 1, self.conv.weight.shape[0]) if self.conv else None
        return AttentionState(empty, empty.clone(), torch.zeros((), dtype=torch.long, device=like.device), conv)

    def forward(self, x: Tensor, state: AttentionState | None = None) -> tuple[Tensor, AttentionState]:
        B, T, _ = x.shape
        state = self.initial_state(B, x) if state is None else state
        qkv, conv = [proj(x) for proj in (self.q_proj, self.k_proj, self.v_proj)], None
        if self.conv is not None:
            widths = [t.shape[-1] for t in qkv]
            mixed, conv = self.conv(torch.cat(qkv, dim=-1), state.conv)
            qkv = mixed.split(widths, dim=-1)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in qkv)   # [B, H or kv_heads, T, hd]
        pos = state.pos + torch.arange(T, device=x.device)
        q, k = rope(q, pos, self.rope_theta), rope(k, pos, self.rope_theta)
        keys, values = torch.cat([state.k.to(k.dtype), k], dim=2), torch.cat([state.v.to(v.dtype), v], dim=2)
        mask = self._mask(T, keys.shape[2] - T, x.device)
        k_all, v_all = keys, values
        if self.persistent_k is not None:
            k_all = torch.cat([self.persistent_k.to(k.dtype).expand(B, -1, -1, -1), keys], dim=2)
            v_all = torch.cat([self.persistent_v.to(v.dtype).expand(B, -1, -1, -1), values], dim=2)
        group = self.heads // self.kv_heads
        y = F.scaled_dot_product_attention(q, k_all.repeat_interleave(group, dim=1),
                                           v_all.repeat_interleave(group, dim=1), attn_mask=mask,
                                           is_causal=mask is None)
        start = 0 if self.window is None else max(0, keys.shape[2] - (self.window - 1))
        new_state = AttentionState(keys[:, :, start:], values[:, :, start:], state.pos + T, conv)
        return self.o_proj(y.transpose(1, 2).flatten(2)), new_state

    def _mask(self, T: int, cached: int, device: torch.device) -> Tensor | None:
        """[T, N_p + cached + T] bool, True = attend. Query t sits at key index cached + t and sees key j iff
        j <= cached + t and (with a window) cached + t - j < window; persistent keys always. None: plain causal."""
        if cached == 0 and self.window is None and self.persistent_k is None:
            return None
        query = torch.arange(T, device=device)[:, None] + cached
        key = torch.arange(cached + T, device=device)
        mask = key <= query
        if self.window is not None:
            mask &= query - key < self.window
        return F.pad(mask, (self.persistent_tokens, 0), value=True)
