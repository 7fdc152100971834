"""miras: every test-time-memorization sequence model as one point of the MIRAS design space."""
from .models import MirasConfig, MirasLM
from .models.config import VERSION
from .models.hf_auto import install as _register_with_transformers
from .ops import MemoryState, initial_state, recurrent_reference
from .ops.dispatch import memory_op
from .space import ConfigError, MirasSpec, Preset, get_preset, list_presets
from .space.tables import spec_from_dict, spec_to_dict

__all__ = ["ConfigError", "MemoryState", "MirasConfig", "MirasLM", "MirasSpec", "Preset", "get_preset",
           "initial_state", "list_presets", "memory_op", "recurrent_reference", "spec_from_dict", "spec_to_dict"]
__version__ = VERSION

_register_with_transformers()   # AutoConfig / AutoModelForCausalLM know "miras" once transformers loads them
