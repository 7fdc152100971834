"""A MirasSpec as plain data: one table per axis, keyed by the axis' name, with its parameters.

    {"memory": {"name": "mlp", "depth": 2, "expansion": 4, ...}, "bias": {"name": "lp", "p": 3.0, ...},
     "retention": {"name": "lq", "q": 4.0, ...}, "algorithm": {"name": "gd"}, "chunk_size": 16}

`spec_to_dict` writes every parameter (so a printed spec shows what can be changed), `spec_from_dict` reads a
full or partial table (missing parameters take their defaults; an axis may be just its name, "bias": "huber"),
and `merge_spec` applies a user's partial table to a preset's: a parameter replaces the preset's, a new name
replaces the whole axis. The names are the axis classes' `name` (the memory: "mlp", "matrix" for the one-layer
linear map, "nonparametric" for the KV cache); the parameters are their constructor fields. Everything a user
gets wrong is a ConfigError listing what is allowed.
"""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from . import memory as memories
from ..errors import require
from .registry import AXES, CHOICES
from .spec import MirasSpec


def _name(cls: type) -> str:
    return cls.choice_name


def registry(axis: str) -> dict[str, type]:
    """name -> class of every choice of the axis (registry.CHOICES)."""
    require(axis in AXES, "spec axis", axis, f"one of {AXES}")
    return dict(CHOICES[axis])


def parameters(cls: type) -> dict[str, Any]:
    """The constructor parameters of an axis class and their defaults (its name and constants excluded)."""
    return {f.name: f.default for f in fields(cls) if f.init and f.name not in ("name", "kind", "is_matrix")
            and f.default is not MISSING}


def axis_to_dict(choice) -> dict[str, Any]:
    return {"name": _name(type(choice)), **{p: getattr(choice, p) for p in parameters(type(choice))}}


def spec_to_dict(spec: MirasSpec) -> dict[str, Any]:
    """The full table of a spec: every axis with its name and every parameter, and chunk_size."""
    return {**{axis: axis_to_dict(getattr(spec, axis)) for axis in AXES}, "chunk_size": spec.chunk_size}


def _table(axis: str, value) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"name": value}
    require(isinstance(value, dict) and isinstance(value.get("name"), str), f"spec.{axis}", value,
            f"a name ({sorted(registry(axis)) + (['matrix'] if axis == 'memory' else [])}) or a table with one",
            f"e.g. spec.{axis}.name=... or spec.{axis}=<name>")
    return dict(value)


def axis_from_dict(axis: str, value) -> Any:
    """The axis choice of a table (or a bare name); ConfigError for an unknown name or parameter."""
    table = _table(axis, value)
    name = table.pop("name")
    if axis == "memory" and name == "matrix":
        base, name = memories.matrix(), "mlp"
        table = {**{p: getattr(base, p) for p in parameters(memories.MLPMemory)}, **table}
    choices = registry(axis)
    require(name in choices, f"spec.{axis}.name", name,
            f"one of {sorted(choices) + (['matrix'] if axis == 'memory' else [])}")
    cls = choices[name]
    allowed = parameters(cls)
    unknown = sorted(set(table) - set(allowed))
    require(not unknown, f"spec.{axis}", f"{name} with {unknown}",
            f"the parameters of {axis} {name!r}: {sorted(allowed) or 'none'}",
            "`miras presets NAME` prints a spec with every parameter written out")
    return cls(**table)


def spec_from_dict(data: dict) -> MirasSpec:
    """A MirasSpec from a full table (spec_to_dict's form): every axis must be given."""
    require(isinstance(data, dict), "spec", data, "a table with the axes " + ", ".join(AXES) + " and chunk_size")
    unknown = sorted(set(data) - {*AXES, "chunk_size"})
    require(not unknown, "spec", unknown, f"the keys {[*AXES, 'chunk_size']}")
    missing = [axis for axis in AXES if axis not in data]
    require(not missing, "spec", f"no {missing}", f"all of {AXES}", "start from a preset's spec (miras presets)")
    return MirasSpec(*(axis_from_dict(axis, data[axis]) for axis in AXES), chunk_size=data.get("chunk_size", 1))


def merge_spec(base: dict, override: dict | None) -> dict:
    """base (a full table) with a partial override: per axis, a different name replaces the axis (its other
    parameters from the override, the rest defaults), the same name (or none) updates parameters."""
    if not override:
        return base
    require(isinstance(override, dict), "spec", override, "a table of axes (e.g. {'bias': 'huber'})")
    unknown = sorted(set(override) - {*AXES, "chunk_size"})
    require(not unknown, "spec", unknown, f"the keys {[*AXES, 'chunk_size']}")
    out = dict(base)
    for axis in AXES:
        if axis not in override:
            continue
        value = override[axis]
        table = {"name": value} if isinstance(value, str) else dict(value) if isinstance(value, dict) else value
        require(isinstance(table, dict), f"spec.{axis}", value, "a name or a table of parameters")
        name = table.get("name", base[axis]["name"])
        out[axis] = {**(base[axis] if name == base[axis]["name"] else {}), **table, "name": name}
    if "chunk_size" in override:
        out["chunk_size"] = override["chunk_size"]
    return out


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def preset_toml(name: str) -> str:
    """The model section of a config file for preset `name`, its spec written out: edit any parameter or
    axis and train it (`miras train --config FILE`)."""
    from .presets import get_preset
    preset = get_preset(name)
    table = spec_to_dict(preset.spec)
    lines = [f"# {name}: {preset.equation}", f"# {preset.paper}; block {preset.block}", "[model]",
             f"preset = {_toml_value(name)}", "", "[model.spec]", f"chunk_size = {table['chunk_size']}"]
    for axis in AXES:
        lines += ["", f"[model.spec.{axis}]"] + [f"{k} = {_toml_value(v)}" for k, v in table[axis].items()]
    return "\n".join(lines) + "\n"
