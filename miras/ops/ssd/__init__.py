"""Exact chunk-parallel linear attention with decay: SSD / simple GLA (scalar decay) and GLA (per-channel decay)."""
from .chunk import chunk_gla, ssd

__all__ = ["chunk_gla", "ssd"]
