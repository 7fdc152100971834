"""Named model sizes: tiny (tests), small (CPU training), and the papers' 170M / 340M / 760M / 1.3B.

d_model and heads are fixed per size; n_layers is solved so that the preset's parameter count is
closest to the size's target (models are built on the meta device: no memory is allocated).
"""
from __future__ import annotations

import torch

from ..errors import require
from .config import SIZES, MirasConfig
from .lm import MirasLM

PAPER_VOCAB = 32000  # the Llama tokenizer the papers train with


def count_parameters(config: MirasConfig) -> int:
    with torch.device("meta"):
        return MirasLM(config).num_parameters()


def config_for_size(preset: str, size: str, **overrides) -> MirasConfig:
    """The MirasConfig of `preset` at a named size; overrides are MirasConfig fields."""
    require(size in SIZES, "size", size, f"one of {list(SIZES)}")
    d_model, heads, target = SIZES[size]
    base = dict(preset=preset, d_model=d_model, heads=heads, n_layers=2)
    if target is not None and target >= 1e8:
        base.update(vocab_size=PAPER_VOCAB, window=2048, segment=512)
    base.update(overrides)
    if target is None or "n_layers" in overrides:
        return MirasConfig(**base)
    one, two = (count_parameters(MirasConfig(**{**base, "n_layers": n})) for n in (1, 2))
    per_layer = two - one
    n_layers = max(1, round((target - (one - per_layer)) / per_layer))
    return MirasConfig(**{**base, "n_layers": n_layers})
