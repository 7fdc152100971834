"""RunConfig: everything a training run needs, from a JSON / TOML / YAML file plus `key=value` overrides."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..models.config import MirasConfig
from ..spec.errors import ConfigError, require


@dataclass
class DataConfig:
    corpus: str = "shakespeare"       # embedded name, a .jsonl(.xz) / .txt file or a folder of .txt
    task: str = "text"                # "text" (language modeling) or a synthetic task of miras.eval.tasks
    tokenizer: str = "byte"           # "byte" or "bpe" (trained on the train split, saved in the run folder)
    bpe_vocab: int = 4096
    seq_len: int = 256
    val_fraction: float = 0.1
    mqar_pairs: int = 16              # task=mqar: key-value pairs per sequence
    mqar_vocab: int = 256             # task=mqar: vocabulary (keys: lower half, values: upper half)


@dataclass
class OptimConfig:
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    steps: int = 600
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    decay_embeddings: bool = False


@dataclass
class RunOptions:
    out_dir: str = "runs/small"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 200
    keep_last: int = 2
    threads: int = 0                  # 0: leave torch's default
    device: str = "auto"              # auto | cpu | cuda
    amp: str = "bf16"                 # bf16 | fp16 | none (GPU only; CPU runs fp32)
    compile: bool = False
    fsdp: bool = False
    on_nan: str = "stop"              # stop | skip
    max_minutes: float = 10.0         # wall-clock budget (0: none)
    tensorboard: bool = False


@dataclass
class RunConfig:
    """Defaults: the small model (~12M parameters, byte-level) on the embedded corpus for 10 minutes,
    i.e. what `miras train` with no arguments runs (configs/small.toml spells it out)."""

    model: MirasConfig = field(default_factory=MirasConfig)
    size: str = "small"               # a named size (miras.models.SIZES); "" uses `model` as given
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self):
        o, d, r = self.optim, self.data, self.run
        from ..models.config import SIZES
        require(self.size == "" or self.size in SIZES, "size", self.size, f"'' or one of {list(SIZES)}")
        for name, value, ok, allowed in [
            ("optim.lr", o.lr, o.lr > 0, "> 0"), ("optim.steps", o.steps, o.steps >= 1, ">= 1"),
            ("optim.batch_size", o.batch_size, o.batch_size >= 1, ">= 1"),
            ("optim.grad_accum", o.grad_accum, o.grad_accum >= 1, ">= 1"),
            ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, ">= 0"),
            ("optim.min_lr_ratio", o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1, "in [0, 1]"),
            ("optim.clip", o.clip, o.clip >= 0, ">= 0 (0 disables)"),
            ("data.seq_len", d.seq_len, d.seq_len >= 2, ">= 2"),
            ("data.tokenizer", d.tokenizer, d.tokenizer in ("byte", "bpe"), "'byte' or 'bpe'"),
            ("run.device", r.device, r.device in ("auto", "cpu", "cuda"), "auto | cpu | cuda"),
            ("run.amp", r.amp, r.amp in ("bf16", "fp16", "none"), "bf16 | fp16 | none"),
            ("run.on_nan", r.on_nan, r.on_nan in ("stop", "skip"), "stop | skip"),
            ("run.keep_last", r.keep_last, r.keep_last >= 1, ">= 1"),
        ]:
            require(ok, name, value, allowed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        parts = {"model": MirasConfig, "data": DataConfig, "optim": OptimConfig, "run": RunOptions}
        unknown = sorted(set(data) - set(parts) - {"size"})
        require(not unknown, "config", unknown, f"sections {sorted(parts)} and 'size'")
        built = {}
        for section, klass in parts.items():
            values = dict(data.get(section, {}))
            names = {f.name: f for f in fields(klass)}
            bad = sorted(set(values) - set(names))
            require(not bad, f"{section} keys", bad, f"{sorted(names)}")
            defaults = klass()
            for key, value in values.items():
                values[key] = _typed(f"{section}.{key}", value, getattr(defaults, key))
            built[section] = klass(**values)
        return cls(size=str(data.get("size", "small")), **built)


def _typed(name: str, value, default):
    """value converted to the type of default (int -> float allowed, lists -> tuples), or ConfigError."""
    if default is None or isinstance(default, dict):
        return value
    if isinstance(default, bool):
        require(isinstance(value, bool), name, value, "true or false")
        return value
    if isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (isinstance(default, float) or float(value).is_integer())
        require(ok, name, value, f"a {type(default).__name__}")
        return type(default)(value)
    if isinstance(default, (tuple, list)):
        require(isinstance(value, (list, tuple)), name, value, "a list")
        return type(default)(value)
    require(isinstance(value, str), name, value, "a string")
    return value


def read_config_file(path: str | Path) -> dict:
    """A .json, .toml or .yaml / .yml file -> dict (ConfigError naming the file when unreadable)."""
    path = Path(path)
    require(path.is_file(), "config file", str(path), "an existing .json / .toml / .yaml file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".toml":
            import tomllib
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional: pip install pyyaml
            return yaml.safe_load(text) or {}
    except Exception as err:  # noqa: BLE001 - any parser error becomes one clear message
        raise ConfigError(f"config file {path} could not be parsed: {err}") from err
    raise ConfigError(f"config file {path}: unknown suffix {path.suffix!r}; allowed .json, .toml, .yaml")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`section.key=value` (or `size=NAME`) strings, the value parsed as JSON or kept as a string, merged into data."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key = item.split("=", 1)[0]
        require("=" in item and ("." in key or key == "size"), "override", item, "section.key=value or size=NAME",
                "e.g. optim.lr=1e-3, model.preset=moneta, size= (empty: the model section as given)")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data


def load_run_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = read_config_file(path) if path else {}
    return RunConfig.from_dict(apply_overrides(data, overrides or []))
