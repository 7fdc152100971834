"""A trained run folder (or one of its step-* checkpoints) -> (model, tokenizer, config), for evaluation,
generation and export."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import load_tokenizer
from ..models import MirasConfig, MirasLM
from ..errors import ConfigError, require
from ..train.checkpoint import load_checkpoint, load_newest


def resolve_device(name: str = "auto", flag: str = "--device") -> torch.device:
    """"auto" (cuda when torch sees a GPU, else cpu) or a torch device string (cpu, cuda, cuda:1, ...); a GPU
    device on a machine without one is a ConfigError naming `flag`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{flag}={name!r} is invalid: allowed auto or a torch device such as cpu, cuda, cuda:1; "
                          "fix: e.g. --device cpu") from None
    require(device.type != "cuda" or torch.cuda.is_available(), flag, name,
            f"auto | cpu here (torch {torch.__version__} sees no GPU)", "--device auto or --device cpu")
    require(device.type != "cuda" or (device.index or 0) < torch.cuda.device_count(), flag, name,
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1} (the GPUs torch sees)" if device.type == "cuda" else "")
    return device


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path | None]:
    """A run folder (config.json) -> (run folder, None: its newest checkpoint); a step-* checkpoint folder of a
    run -> (its run folder, the checkpoint). Anything else: ConfigError saying what the path is."""
    p = Path(path).expanduser().resolve()
    if (p / "config.json").is_file():
        return p, None
    if (p / "meta.json").is_file() and (p.parent / "config.json").is_file():
        return p.parent, p
    found = ("it does not exist" if not p.exists() else "it is a file" if not p.is_dir() else
             f"it is a step-* checkpoint folder but {p.parent} has no config.json" if (p / "meta.json").is_file()
             else "it is neither a `miras train` run folder nor one of its step-* checkpoint folders")
    raise ConfigError(f"run={str(path)!r} is invalid ({found}): allowed a `miras train` run folder (with "
                      "config.json) or one of its step-* checkpoint folders (with meta.json); fix: pass the "
                      "run.out_dir of a `miras train` run or a step-* folder inside it")


def load_run(run_dir: str | Path, tokenizer: str | None = None, checkpoint: str | None = None):
    """Loads the newest (or the given) checkpoint of a `miras train` run folder.

    Returns (model in eval mode, tokenizer or None for MQAR runs, the run's config dict with "checkpoint": the
    path of the checkpoint loaded).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"run folder {run_dir} has no config.json: pass the run.out_dir of a `miras train` run")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        config = {"error": str(err)}
    if not isinstance(config, dict) or "resolved_model" not in config:
        raise ConfigError(f"run={str(run_dir)!r} is invalid ({config_path} is not the config.json of a `miras train` "
                          "run: it has no resolved_model): allowed a `miras train` run folder; fix: pass the "
                          "run.out_dir of a `miras train` run (a folder made by `miras export` is loaded with "
                          "transformers' AutoModelForCausalLM instead)")
    model = MirasLM(MirasConfig.from_dict(config["resolved_model"]))
    if checkpoint:
        load_checkpoint(checkpoint, model)
    else:                       # the newest intact checkpoint (an older one, with a warning, if it is corrupt)
        checkpoint, _ = load_newest(run_dir, lambda path: load_checkpoint(path, model))
    return model.eval(), _tokenizer(run_dir, config, tokenizer), {**config, "checkpoint": str(checkpoint)}


def _tokenizer(run_dir: Path, config: dict, override: str | None):
    if override:
        return load_tokenizer(override)
    data = config["data"]
    if data["task"] == "mqar":          # token ids are the task's own; niah runs use data.tokenizer
        return None
    if data["tokenizer"] == "byte":
        return load_tokenizer("byte")
    folder = run_dir / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"run {run_dir} was trained with a BPE tokenizer but {folder} has none: "
                          "pass --tokenizer DIR (a folder with tokenizer.json)")
    return load_tokenizer(folder)
