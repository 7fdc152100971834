"""MirasHFConfig: a MirasConfig as a transformers PretrainedConfig (needs the `hf` extra).

Kept apart from miras.models.hf (the model, which needs transformers' modeling code) so that AutoConfig can know
model_type "miras" as soon as transformers loads its configuration classes (see miras.models.hf_auto).
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

from .config import MirasConfig
from .hf_remote import AUTO_MAP, REMOTE_CODE_FILE, write_remote_code

_MIRAS_FIELDS = tuple(f.name for f in fields(MirasConfig))


class MirasHFConfig(PretrainedConfig):
    """A MirasConfig as a PretrainedConfig: every MirasConfig field is an attribute of the same name and default
    (validated by MirasConfig), plus use_cache and the usual PretrainedConfig keywords. tie_word_embeddings follows
    tie_embeddings; hidden_size / num_hidden_layers / num_attention_heads read d_model / n_layers / heads."""

    model_type = "miras"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "heads"}

    def __init__(self, use_cache: bool = True, **kwargs):
        miras = MirasConfig(**{name: kwargs.pop(name) for name in _MIRAS_FIELDS if name in kwargs})
        for name, value in miras.to_dict().items():
            setattr(self, name, value)
        self.use_cache = use_cache
        kwargs["tie_word_embeddings"] = miras.tie_embeddings
        super().__init__(**kwargs)

    @classmethod
    def from_miras(cls, config: MirasConfig, **kwargs) -> "MirasHFConfig":
        """kwargs: PretrainedConfig keywords (e.g. bos_token_id, eos_token_id)."""
        return cls(**config.to_dict(), **kwargs)

    def to_miras(self) -> MirasConfig:
        return MirasConfig(**{name: getattr(self, name) for name in _MIRAS_FIELDS})

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also writes modeling_miras.py when auto_map names it (a folder of `miras export`, loaded and saved
        again), so that the saved folder loads with trust_remote_code too."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if getattr(self, "auto_map", None) == AUTO_MAP and not (Path(save_directory) / REMOTE_CODE_FILE).exists():
            write_remote_code(save_directory)


AutoConfig.register("miras", MirasHFConfig, exist_ok=True)

__all__ = ["MirasHFConfig"]
