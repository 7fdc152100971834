"""Mixer name -> token-mixer module, from a MirasConfig."""
from __future__ import annotations

from torch import nn

from ..layers.attention import Attention
from ..layers.hybrid import Gated, Sequential
from ..layers.mamba2 import Mamba2
from ..layers.memory import MemoryLayer
from ..layers.titans import MemoryAsContext
from ..space import get_preset
from .config import MirasConfig


def build_mixer(config: MirasConfig, kind: str) -> nn.Module:
    """kind: one of config.MIXERS. "ttt" is the memory layer with the TTT preset's spec (its conv
    before and gate after are the Mamba-style TTT backbone)."""
    c = config
    preset = get_preset(c.preset)

    def attention(window):
        return Attention(c.d_model, c.heads, head_dim=c.head_dim, window=window, persistent_tokens=c.persistent_tokens,
                         conv=c.attention_conv)

    def memory(persistent_tokens=0):
        return MemoryLayer(c.memory_spec, c.d_model, c.heads, head_dim=c.head_dim, gate_rank=c.gate_rank,
                           checkpoint_chunks=c.checkpoint_chunks, persistent_tokens=persistent_tokens,
                           ttt_base_lr=preset.ttt_base_lr, lr_max=preset.lr_max if c.lr_max is None else c.lr_max)

    if kind == "attention":
        return attention(None)
    if kind == "swa":
        return attention(c.window)
    if kind in ("memory", "ttt"):
        return memory()
    if kind == "mamba2":
        headdim = c.head_dim or min(64, 2 * c.d_model // c.heads)
        return Mamba2(c.d_model, d_state=c.d_state, headdim=headdim, expand=2, chunk_size=c.memory_spec.chunk_size)
    if kind == "memory+swa":
        return Sequential(memory(), attention(c.window), c.d_model, c.norm_eps)
    if kind == "titans-mal":    # x~ = [P ++ x]: the memory reads P first, the attention attends to it
        return Sequential(memory(c.persistent_tokens), attention(c.window), c.d_model, c.norm_eps)
    if kind == "titans-mag":
        return Gated(attention(c.window), memory(c.persistent_tokens), c.d_model, c.norm_eps)
    if kind == "titans-mac":
        return MemoryAsContext(memory(), c.d_model, c.heads, c.segment, c.persistent_tokens)
    raise ValueError(f"unknown mixer {kind!r}")  # unreachable: MirasConfig validates the pattern
