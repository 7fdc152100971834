"""Math kernels: the recurrent reference (the spec) and the fast paths that must equal it."""
from .reference import recurrent_reference
from .state import MemoryState, initial_state

__all__ = ["recurrent_reference", "MemoryState", "initial_state"]
