"""Nested layer states as trees: dataclasses, tuples, lists and dicts of tensors, Python numbers and None.

map_tensors rebuilds a tree with a function applied to every tensor (e.g. to reorder the batch for beam search);
flatten_tensors / load_tensors turn a tree into a flat name -> tensor dict and back (e.g. for safetensors). Python
numbers (a chunk offset, a segment position) are flattened as 0-dim tensors and come back as numbers, so a state
saved mid-chunk continues where it stopped.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any, Callable

import torch
from torch import Tensor

_NUMBER = (bool, int, float)


def _children(tree) -> list[tuple[str, Any]] | None:
    """(name, child) pairs of a container, None for a leaf."""
    if is_dataclass(tree) and not isinstance(tree, type):
        return [(f.name, getattr(tree, f.name)) for f in fields(tree) if f.init]
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):       # namedtuple
        return list(zip(tree._fields, tree))
    if isinstance(tree, (list, tuple)):
        return [(str(i), x) for i, x in enumerate(tree)]
    if isinstance(tree, dict):
        return [(str(k), v) for k, v in tree.items()]
    return None


def _rebuild(tree, children: list):
    """A container like `tree` with new children, in the order `_children` lists them."""
    if is_dataclass(tree):
        return replace(tree, **{f.name: c for f, c in zip([f for f in fields(tree) if f.init], children)})
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*children)
    if isinstance(tree, (list, tuple)):
        return type(tree)(children)
    return type(tree)(zip(tree.keys(), children))


def map_tensors(fn: Callable[[Tensor], Tensor], tree):
    """A new tree of the same structure with fn(t) in place of every tensor t; other leaves are kept."""
    if isinstance(tree, Tensor):
        return fn(tree)
    children = _children(tree)
    if children is None:
        return tree
    return _rebuild(tree, [map_tensors(fn, child) for _, child in children])


def flatten_tensors(tree, prefix: str = "") -> dict[str, Tensor]:
    """Dotted path -> tensor for every tensor (the tensors themselves, not copies) and every Python number (a 0-dim
    tensor) of the tree; None and empty containers give nothing. For safetensors, which refuses shared or strided
    storage, save {k: v.contiguous().clone()}."""
    if isinstance(tree, Tensor):
        return {prefix: tree}
    if isinstance(tree, _NUMBER):
        return {prefix: torch.tensor(tree)}
    out: dict[str, Tensor] = {}
    for name, child in _children(tree) or []:
        for key, value in flatten_tensors(child, f"{prefix}.{name}" if prefix else name).items():
            if key in out:
                raise ValueError(f"two entries of the tree flatten to the same name {key!r}")
            out[key] = value
    return out


def load_tensors(tree_like, flat: dict[str, Tensor], prefix: str = ""):
    """The inverse of flatten_tensors: tree_like's structure (a tree that flattens to the same names, e.g. a state
    after as many tokens) with its tensors and numbers taken from flat. Raises on a missing or an unused name."""
    used: set[str] = set()

    def load(tree, path):
        if isinstance(tree, (Tensor, *_NUMBER)):
            if path not in flat:
                raise ValueError(f"no entry {path!r} in the flat dict (the tree_like has a different structure)")
            used.add(path)
            return flat[path] if isinstance(tree, Tensor) else type(tree)(flat[path].item())
        children = _children(tree)
        if children is None:
            return tree
        return _rebuild(tree, [load(child, f"{path}.{name}" if path else name) for name, child in children])

    out = load(tree_like, prefix)
    unused = sorted(set(flat) - used)
    if unused:
        raise ValueError(f"entries {unused} of the flat dict have no place in tree_like (a different structure)")
    return out
