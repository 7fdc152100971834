"""The trust_remote_code entry of an exported folder: config.json's auto_map and the small modeling file it names,
which imports the installed miras' classes (no transformers needed to write it)."""
from __future__ import annotations

from pathlib import Path

REMOTE_CODE_FILE = "modeling_miras.py"
AUTO_MAP = {"AutoConfig": "modeling_miras.MirasHFConfig", "AutoModelForCausalLM": "modeling_miras.MirasForCausalLM"}

# Subclasses, not the classes themselves: transformers marks the classes it loads as remote code for saving again
# (save_pretrained then copies their source file), which must be this file, not miras's own modules.
REMOTE_CODE = '''"""This folder's model with the installed miras (pip install "miras[hf]"), for trust_remote_code."""
from miras.models.hf import MirasForCausalLM as _MirasForCausalLM
from miras.models.hf import MirasHFConfig as _MirasHFConfig


class MirasHFConfig(_MirasHFConfig):
    """miras.models.hf.MirasHFConfig."""


class MirasForCausalLM(_MirasForCausalLM):
    """miras.models.hf.MirasForCausalLM."""

    config_class = MirasHFConfig
'''


def write_remote_code(folder: str | Path) -> Path:
    """Writes modeling_miras.py into folder (its auto_map's target); returns its path."""
    path = Path(folder) / REMOTE_CODE_FILE
    path.write_text(REMOTE_CODE)
    return path


__all__ = ["AUTO_MAP", "REMOTE_CODE", "REMOTE_CODE_FILE", "write_remote_code"]
