"""Generic dual-form mini-batch engine (TTT, Titans, Moneta, Yaad, Memora, new combinations)."""
from .chunk import chunk_minibatch, coefficients

__all__ = ["chunk_minibatch", "coefficients"]
