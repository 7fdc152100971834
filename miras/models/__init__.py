"""Language models: config, LM, sizes (and Hugging Face wiring in miras.models.hf)."""
from .config import MIXERS, SIZES, MirasConfig
from .lm import MirasLM

__all__ = ["MIXERS", "SIZES", "MirasConfig", "MirasLM"]
