"""Denormal floats flushed to zero on CPU while miras trains or runs a command (docs/training.md, "Denormals").

A trained memory produces float32 values below 1.2e-38 (exp of very negative scores, decays, softmax tails),
and x86 CPUs compute with such denormal numbers many times slower: the same training step of a trained Memora
takes 2.1x the time of a fresh one until they are flushed to zero. `denormals_flushed()` turns the flush on
for its block and restores the caller's setting after it. The setting belongs to each CPU thread: torch's
worker threads take it from the thread that starts them, so an entry point that turns it on before its first
parallel op (`miras` and benchmarks/recall.py do) covers every thread.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def flushing() -> bool:
    """True when this thread flushes denormal floats to zero (a float32 1e-39 doubled reads back as 0)."""
    return float(torch.tensor(1e-39, dtype=torch.float32) * 2.0) == 0.0


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """torch.set_flush_denormal(True) for the block; the thread's previous setting afterwards."""
    before = flushing()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
