"""Ingest a long document once, keep its memory on disk, query it later.

`save_state(path, model, states)` writes the per-layer states returned by MirasLM (recurrent memory,
momentum, open-chunk anchor and offset, conv tails, sliding-window KV) to one safetensors file, with
the model config and the state's structure as JSON metadata; `load_state(path, model)` refuses a file
written for another config (naming the fields that differ) and returns states to continue from.
No pickles: the structure is rebuilt from the library's own state classes only.
"""
from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..layers.attention import AttentionState
from ..layers.mamba2 import Mamba2State
from ..layers.memory import MemoryLayerState
from ..layers.titans import MACState
from ..ops.state import MemoryState
from ..errors import ConfigError, require

STATE_CLASSES = {c.__name__: c for c in (MemoryState, MemoryLayerState, AttentionState, Mamba2State, MACState)}
FORMAT = "miras-state-1"


def _describe(tree, path: str, flat: dict) -> dict:
    """JSON description of a state tree; tensors go to flat[path]."""
    if isinstance(tree, torch.Tensor):
        flat[path] = tree.detach().contiguous().clone()
        return {"tensor": path}
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {"value": tree}
    if is_dataclass(tree):
        return {"class": type(tree).__name__,
                "fields": {f.name: _describe(getattr(tree, f.name), f"{path}.{f.name}", flat) for f in fields(tree)}}
    if isinstance(tree, dict):
        return {"dict": {k: _describe(v, f"{path}.{k}", flat) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        return {"list" if isinstance(tree, list) else "tuple":
                [_describe(v, f"{path}.{i}", flat) for i, v in enumerate(tree)]}
    raise TypeError(f"cannot save a {type(tree).__name__} in a memory state")


def _rebuild(spec: dict, flat: dict):
    if "tensor" in spec:
        return flat[spec["tensor"]]
    if "value" in spec:
        return spec["value"]
    if "class" in spec:
        return STATE_CLASSES[spec["class"]](**{k: _rebuild(v, flat) for k, v in spec["fields"].items()})
    if "dict" in spec:
        return {k: _rebuild(v, flat) for k, v in spec["dict"].items()}
    items = [_rebuild(v, flat) for v in spec.get("list", spec.get("tuple", []))]
    return items if "list" in spec else tuple(items)


def save_state(path: str | Path, model, states: list) -> Path:
    """states: what MirasLM.forward returned. Writes one .safetensors file."""
    require(isinstance(states, list), "states", type(states).__name__,
            "the per-layer list MirasLM.forward returns for an unpadded batch",
            "save each row group of a padded batch (RowGroups.states[g]) separately")
    flat: dict = {}
    structure = _describe(list(states), "s", flat)
    save_file(flat, str(path), metadata={"format": FORMAT, "config": json.dumps(model.config.to_dict()),
                                         "structure": json.dumps(structure)})
    return Path(path)


def load_state(path: str | Path, model) -> list:
    """The states saved by save_state, for this model (same config), ready to pass to model.forward."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"state file {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ConfigError(f"state file {path} is not a miras memory state (format {meta.get('format')!r})")
        theirs, ours = json.loads(meta["config"]), model.config.to_dict()
        if theirs != ours:
            diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
            raise ConfigError(f"state file {path} was written by a model with another config; "
                              f"differing fields (file, this model): {diff}")
        flat = {k: f.get_tensor(k) for k in f.keys()}
    return _rebuild(json.loads(meta["structure"]), flat)
