"""Checkpoints without pickles: safetensors for tensors, JSON for the rest, written atomically.

A checkpoint is a folder `step-000123/` holding model.safetensors, optimizer.safetensors (+ .json
for its non-tensor structure), rng.safetensors and meta.json. It is written as `.tmp-step-000123/`
and renamed into place only when complete (meta.json, written last, marks it so), so a run killed while saving
leaves the previous checkpoint intact and loadable; only the newest `keep_last` are kept, older ones renamed
to `.trash-step-*` before they are deleted. Readers check every file and fall back to an older intact checkpoint
(load_newest) when the newest is corrupt.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError

PREFIX = "step-"
_NAME = re.compile(r"step-(\d+)")
T = TypeVar("T")


class CorruptCheckpoint(ConfigError):
    """A checkpoint folder whose files are unreadable or inconsistent (truncated, not safetensors, bad JSON, wrong
    shapes, non-finite values)."""


def _optimizer_to_files(sd: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, key = name.rsplit(".", 1)                 # pid: an index, or a parameter name (FSDP full state)
        state.setdefault(int(pid) if pid.isdigit() else pid, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: str | Path, step: int, model_state: dict, optim_state: dict, meta: dict,
                    keep_last: int = 2) -> Path:
    """Writes run_dir/step-{step:06d} atomically from model / optimizer state dicts; returns its path."""
    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step:06d}"
    tmp = run_dir / f".tmp-{PREFIX}{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().clone() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _optimizer_to_files(optim_state)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))   # the completeness marker: last
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():                                  # a replayed step: move the old one aside atomically first
        discard(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        discard(old)
    for trash in run_dir.glob(f".trash-{PREFIX}*"):     # left by a run killed while pruning
        shutil.rmtree(trash, ignore_errors=True)
    return final


def discard(path: str | Path) -> None:
    """Deletes a checkpoint folder so that no half-deleted copy can ever count as complete: it is first renamed
    (atomically) to a .trash-* name that list_checkpoints ignores, then removed."""
    path = Path(path)
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def checkpoint_step(path: str | Path) -> int | None:
    """The step number of a step-N folder name (None for any other name)."""
    match = _NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder (step-N with meta.json, the file written last), oldest first by
    step number (step-1000000 after step-999999)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if checkpoint_step(p) is not None and (p / "meta.json").is_file()]
    return sorted(found, key=checkpoint_step)


def _corrupt(path: Path, what: str) -> CorruptCheckpoint:
    err = CorruptCheckpoint(f"checkpoint {path} is corrupt ({what}); allowed a complete step-* folder as "
                            "`miras train` writes it; fix: delete this folder to use an older checkpoint, or "
                            "train again")
    err.reason = f"checkpoint {path} is corrupt ({what})"
    return err


def _read_json(path: Path, name: str):
    try:
        return json.loads((path / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"{name} is unreadable: {err}") from err


def _read_tensors(path: Path, name: str) -> dict:
    try:
        tensors = load_file(str(path / name))
    except Exception as err:  # noqa: BLE001 - truncated, a pickle under a safetensors name, missing: all corrupt
        raise _corrupt(path, f"{name} is not a readable safetensors file: {err}") from err
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise _corrupt(path, f"{name} tensor {key!r} holds non-finite values (NaN or inf)")
    return tensors


def read_meta(path: str | Path) -> dict:
    """A checkpoint's meta.json, checked: a JSON object whose step is an integer >= 0 that matches the folder."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise ConfigError(f"checkpoint {path} is incomplete or missing (no meta.json); pass a step-* folder")
    meta = _read_json(path, "meta.json")
    if not isinstance(meta, dict) or not meta:
        raise _corrupt(path, f"meta.json holds {str(meta)[:40]!r}, not the JSON object of a checkpoint")
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise _corrupt(path, f"meta.json step={step!r} is not an integer >= 0")
    if checkpoint_step(path) not in (None, step):
        raise _corrupt(path, f"meta.json step={step} but the folder is {path.name}")
    if not isinstance(meta.get("model_config", {}), dict):
        raise _corrupt(path, f"meta.json model_config={meta['model_config']!r} is not a JSON object")
    return meta


def _resolved(model_config: dict) -> dict:
    """A model config as this version writes it (older ones lack the resolved spec; config.json's resolved_model
    also names the miras version that wrote it)."""
    from ..models.config import MirasConfig
    try:
        return MirasConfig.from_dict(model_config).to_dict()
    except (ConfigError, TypeError):
        return model_config


def read_checkpoint(path: str | Path, expect_model_config: dict | None = None) -> tuple[dict, dict, dict]:
    """(model state dict, optimizer state dict, meta) of a checkpoint folder, every file checked: an unreadable
    or inconsistent one raises CorruptCheckpoint (a ConfigError) naming the file.

    A checkpoint from a different model config is refused with the fields that differ.
    """
    path = Path(path)
    meta = read_meta(path)
    if expect_model_config is not None:
        theirs = meta.get("model_config")
        if not theirs:
            raise _corrupt(path, "meta.json has no model_config")
        theirs, expect_model_config = _resolved(theirs), _resolved(expect_model_config)
        if theirs != expect_model_config:
            diff = {k: (theirs.get(k), v) for k, v in expect_model_config.items() if theirs.get(k) != v}
            raise ConfigError(f"checkpoint {path} was trained with a different model config; "
                              f"differing fields (checkpoint, this run): {diff}")
    model_state = _read_tensors(path, "model.safetensors")
    opt_meta = _read_json(path, "optimizer.json")
    if not (isinstance(opt_meta, dict) and isinstance(opt_meta.get("param_groups"), list)
            and isinstance(opt_meta.get("scalars"), dict)):
        raise _corrupt(path, "optimizer.json is not an object with param_groups (a list) and scalars (an object)")
    try:
        optim = _optimizer_from_files(_read_tensors(path, "optimizer.safetensors"), opt_meta)
    except (ValueError, TypeError) as err:
        raise _corrupt(path, f"optimizer state names are malformed: {err}") from err
    rng = _read_tensors(path, "rng.safetensors").get("torch")
    try:
        torch.Generator().set_state(rng)               # validates the state on a scratch generator
    except (TypeError, RuntimeError) as err:
        raise _corrupt(path, f"rng.safetensors holds no valid CPU generator state: {err}") from err
    return model_state, optim, meta


def check_states(path: str | Path, model: torch.nn.Module, model_state: dict,
                 optimizer: torch.optim.Optimizer | None = None, optim_state: dict | None = None) -> None:
    """CorruptCheckpoint unless the checkpoint's tensors have the names and shapes of this model (and optimizer),
    checked before anything is loaded, so that a bad checkpoint never leaves a half-loaded model."""
    path = Path(path)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model_state.items()}
    if want.keys() != got.keys():
        missing, extra = sorted(want.keys() - got.keys())[:3], sorted(got.keys() - want.keys())[:3]
        raise _corrupt(path, f"model.safetensors tensor names differ from the model's: missing {missing}, "
                             f"unexpected {extra}")
    for key, shape in want.items():
        if got[key] != shape:
            raise _corrupt(path, f"model.safetensors tensor {key!r} has shape {list(got[key])}, the model's is "
                                 f"{list(shape)}")
    if optimizer is None or optim_state is None:
        return
    groups = [g["params"] for g in optimizer.state_dict()["param_groups"]]
    theirs = [g.get("params") if isinstance(g, dict) else None for g in optim_state["param_groups"]]
    if [len(g) for g in groups] != [len(g) if isinstance(g, list) else None for g in theirs]:
        raise _corrupt(path, "optimizer.json param_groups do not match this model's parameters")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for pid, state in optim_state["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            value = state.get(key)
            if isinstance(pid, int) and torch.is_tensor(value) and (
                    pid >= len(params) or tuple(value.shape) != tuple(params[pid].shape)):
                raise _corrupt(path, f"optimizer.safetensors tensor '{pid}.{key}' has shape {list(value.shape)}, "
                                     "not its parameter's")


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    expect_model_config: dict | None = None) -> dict:
    """Loads weights (and optimizer state and RNG) into a plain model; returns the checkpoint's meta."""
    model_state, optim_state, meta = read_checkpoint(path, expect_model_config)
    check_states(path, model, model_state, optimizer, optim_state)
    model.load_state_dict(model_state)
    if optimizer is not None:
        optimizer.load_state_dict(optim_state)
        restore_rng(path)
    return meta


def load_newest(run_dir: str | Path, load: Callable[[Path], T]) -> tuple[Path, T]:
    """load(checkpoint) on the newest complete checkpoint of run_dir; a corrupt one (CorruptCheckpoint) is skipped
    with a warning on stderr for the next older one. ConfigError when there is none or every one is corrupt."""
    problems = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            result = load(path)
        except CorruptCheckpoint as err:
            problems.append(getattr(err, "reason", str(err)))
            continue
        for problem in problems:
            print(f"warning: {problem}; using the older intact checkpoint {path.name} instead", file=sys.stderr,
                  flush=True)
        return path, result
    if not problems:
        raise ConfigError(f"run folder {run_dir} has no complete checkpoint (step-* with meta.json); fix: train "
                          "it first (without --resume), or pass the run.out_dir of a run that saved one")
    raise ConfigError(f"run folder {run_dir} has no intact checkpoint: " + "; ".join(problems) + "; fix: train "
                      "the run again (--overwrite), or restore a checkpoint from a backup")


def restore_rng(path: str | Path) -> None:
    torch.set_rng_state(load_file(str(Path(path) / "rng.safetensors"))["torch"])
