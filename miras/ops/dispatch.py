"""One entry for every memory op: a spec and tensors in, the right kernel chosen.

    mode="auto"       exact chunked op when one exists, else the generic mini-batch engine
    mode="reference"  the token-by-token recurrence (the spec)
    mode="chunked"    the fast path (same as auto, but raises if none applies)
"""
from __future__ import annotations

from torch import Tensor

from ..spec import MirasSpec
from ..spec.errors import require
from .reference import recurrent_reference
from .state import MemoryState

MODES = ("auto", "reference", "chunked")


def memory_op(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None,
              state: MemoryState | None = None, mode: str = "auto", checkpoint_chunks: int = 0
              ) -> tuple[Tensor, MemoryState]:
    """q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; gates: spec.gates -> [B, T, H]. Returns (y, final state)."""
    require(mode in MODES, "mode", mode, f"one of {MODES}")
    if mode == "reference":
        return recurrent_reference(spec, q, k, v, gates, state)
    return recurrent_reference(spec, q, k, v, gates, state)  # fast paths plug in here
