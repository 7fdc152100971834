"""The design space: memory architectures, attentional biases, retention gates, learning algorithms."""
from . import bias, memory, optim, retention
from .errors import ConfigError
from .presets import Preset, get_preset, list_presets
from .spec import MirasSpec

__all__ = ["bias", "memory", "optim", "retention", "ConfigError", "MirasSpec", "Preset",
           "get_preset", "list_presets"]
