"""The exact chunk-parallel (gated) delta rule (DeltaNet, Gated DeltaNet) in flash-linear-attention's conventions."""
from .chunk import chunk_gated_delta_rule

__all__ = ["chunk_gated_delta_rule"]
