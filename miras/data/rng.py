"""Seeded torch generators keyed by integer tuples, so every batch is a pure function of its keys."""
from __future__ import annotations

import torch

TRAIN, EVAL = 0, 1          # stream ids: training batches and held-out evaluation sets never share a generator
_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def generator_for(*keys: int) -> torch.Generator:
    """A CPU generator seeded by hashing keys, e.g. (seed, TRAIN, step, rank); same keys -> same stream."""
    h = 0
    for key in keys:
        h = _splitmix64(h ^ (int(key) & _MASK))
    return torch.Generator().manual_seed(h >> 1)


def randint(generator: torch.Generator, high: int) -> int:
    """One uniform integer in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator))
