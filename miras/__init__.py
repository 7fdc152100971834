"""miras: every test-time-memorization sequence model as one point of the MIRAS design space."""
from .models.hf_auto import install as _register_with_transformers
from .ops import MemoryState, initial_state, recurrent_reference
from .spec import ConfigError, MirasSpec, Preset, get_preset, list_presets

__all__ = ["ConfigError", "MemoryState", "MirasSpec", "Preset", "get_preset", "initial_state", "list_presets",
           "recurrent_reference"]
__version__ = "0.1.0"

_register_with_transformers()   # AutoConfig / AutoModelForCausalLM know "miras" once transformers loads them
