"""A trained run folder -> (model, tokenizer, config), for evaluation and generation."""
from __future__ import annotations

import json
from pathlib import Path

from ..data import load_tokenizer
from ..models import MirasConfig, MirasLM
from ..spec.errors import ConfigError
from ..train.checkpoint import list_checkpoints, load_checkpoint


def load_run(run_dir: str | Path, tokenizer: str | None = None, checkpoint: str | None = None):
    """Loads the newest (or the given) checkpoint of a `miras train` run folder.

    Returns (model in eval mode, tokenizer or None for MQAR runs, the run's config dict).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ConfigError(f"run folder {run_dir} has no config.json: pass the run.out_dir of a `miras train` run")
    config = json.loads(config_path.read_text())
    model = MirasLM(MirasConfig.from_dict(config["resolved_model"]))
    ckpts = [Path(checkpoint)] if checkpoint else list_checkpoints(run_dir)
    if not ckpts:
        raise ConfigError(f"run folder {run_dir} has no complete checkpoint (step-* with meta.json)")
    load_checkpoint(ckpts[-1], model)
    return model.eval(), _tokenizer(run_dir, config, tokenizer), config


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
