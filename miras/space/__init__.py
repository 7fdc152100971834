"""The design space: memory architectures, attentional biases, retention gates, learning algorithms."""
from . import algorithm, bias, memory, retention
from ..errors import ConfigError
from .presets import Preset, get_preset, list_presets
from .spec import MirasSpec

__all__ = ["algorithm", "bias", "memory", "retention", "ConfigError", "MirasSpec", "Preset",
           "get_preset", "list_presets"]
