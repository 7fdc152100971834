"""The exact chunk-parallel (gated) delta rule (DeltaNet, Gated DeltaNet) in flash-linear-attention's conventions, and
its per-channel-decay form (Kimi Delta Attention)."""
from .channel import chunk_kda
from .chunk import chunk_gated_delta_rule

__all__ = ["chunk_gated_delta_rule", "chunk_kda"]
