"""Checkpoints without pickles: safetensors for tensors, JSON for the rest, written atomically.

A checkpoint is a folder `step-000123/` holding model.safetensors, optimizer.safetensors (+ .json
for its non-tensor structure), rng.safetensors and meta.json. It is written as `.tmp-step-000123/`
and renamed into place only when complete, so a run killed while saving leaves the previous
checkpoint intact and loadable; only the newest `keep_last` are kept.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..spec.errors import ConfigError

PREFIX = "step-"


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
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{PREFIX}*") if (p / "meta.json").is_file())


def read_checkpoint(path: str | Path, expect_model_config: dict | None = None) -> tuple[dict, dict, dict]:
    """(model state dict, optimizer state dict, meta) of a checkpoint folder.

    A checkpoint from a different model config is refused with the fields that differ.
    """
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise ConfigError(f"checkpoint {path} is incomplete or missing (no meta.json); pass a step-* folder")
    meta = json.loads((path / "meta.json").read_text())
    if expect_model_config is not None and meta.get("model_config") != expect_model_config:
        theirs = meta.get("model_config") or {}
        diff = {k: (theirs.get(k), v) for k, v in expect_model_config.items() if theirs.get(k) != v}
        raise ConfigError(f"checkpoint {path} was trained with a different model config; "
                          f"differing fields (checkpoint, this run): {diff}")
    optim = _optimizer_from_files(load_file(str(path / "optimizer.safetensors")),
                                  json.loads((path / "optimizer.json").read_text()))
    return load_file(str(path / "model.safetensors")), optim, meta


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    expect_model_config: dict | None = None) -> dict:
    """Loads weights (and optimizer state and RNG) into a plain model; returns the checkpoint's meta."""
    model_state, optim_state, meta = read_checkpoint(path, expect_model_config)
    model.load_state_dict(model_state)
    if optimizer is not None:
        optimizer.load_state_dict(optim_state)
        restore_rng(path)
    return meta


def restore_rng(path: str | Path) -> None:
    torch.set_rng_state(load_file(str(Path(path) / "rng.safetensors"))["torch"])
