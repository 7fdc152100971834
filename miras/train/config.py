"""RunConfig: everything a training run needs, from a JSON / TOML / YAML file plus `key=value` overrides."""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..models.config import MirasConfig
from ..data.niah import RULER_SINGLE
from ..errors import ConfigError, require


SIZE_FIXED = ("d_model", "heads", "n_layers")   # model keys a named size sets (an explicit value is refused)
# run.max_params default: above the largest named size (1.3B); a model config estimated larger (model.d_model=1e9,
# model.n_layers=1e6: typos) is refused before anything is allocated. Raise it (run.max_params=1e10) on purpose.
MAX_PARAMS = 2_000_000_000
MAX_LAYERS = 4096                                # model.n_layers above this is refused (a fixed bound)
MAX_MICRO_TOKENS = 2 ** 24                       # optim.batch_size x data.seq_len above this is refused


@dataclass
class DataConfig:
    corpus: str = "shakespeare"       # embedded name, a .jsonl(.xz) / .txt file or a folder of .txt
    task: str = "text"                # "text" (language modeling) or a synthetic task of miras.data.tasks
    tokenizer: str = "byte"           # "byte" or "bpe" (trained on the train split, saved in the run folder)
    bpe_vocab: int = 4096
    seq_len: int = 256
    documents: str = "reset"          # text: "reset" (the memory restarts at every document's first token, eos,
                                      # so a window that packs documents equals each alone) or "stream"
    val_fraction: float = 0.1
    mqar_pairs: int = 16              # task=mqar: key-value pairs per sequence
    mqar_vocab: int = 256             # task=mqar: vocabulary (keys: lower half, values: upper half)
    niah_variants: list[str] = field(default_factory=lambda: ["niah_single_1"])   # task=niah: RULER's
                                      # single-needle variants mixed per row (text ones read data.corpus)


@dataclass
class OptimConfig:
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    steps: int = 600
    schedule: str = "steps"           # steps: the cosine ends at optim.steps; time: at optim.steps or at the end of
                                      # run.max_minutes, whichever comes first (for time-matched comparisons)
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
    compile: bool = False             # torch.compile the training step (docs/training.md, "Compiled ops")
    fsdp: bool = False
    on_nan: str = "stop"              # stop | skip
    max_minutes: float = 10.0         # wall-clock budget (0: none)
    tensorboard: bool = False
    max_params: int = MAX_PARAMS      # refuse a model config estimated above this many parameters (typo guard)


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
        betas = tuple(o.betas) if isinstance(o.betas, (list, tuple)) else ()
        betas_ok = len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)
        require(betas_ok, "optim.betas", o.betas, "two numbers in [0, 1) (Adam's beta1, beta2)",
                "e.g. optim.betas=[0.9,0.95]")
        o.betas = tuple(float(b) for b in betas)
        for name, value in [("optim.lr", o.lr), ("optim.min_lr_ratio", o.min_lr_ratio), ("optim.clip", o.clip),
                            ("optim.weight_decay", o.weight_decay), ("data.val_fraction", d.val_fraction),
                            ("run.max_minutes", r.max_minutes)]:
            require(_number(value) and math.isfinite(value), name, value, "a finite number")
        require(not self.model.extra, "model.extra keys", sorted(self.model.extra),
                "none: training reads no model.extra key", "drop model.extra")
        max_threads = 4 * (os.cpu_count() or 1)
        for name, value, ok, allowed in [
            ("optim.lr", o.lr, o.lr > 0, "> 0"), ("optim.steps", o.steps, o.steps >= 1, ">= 1"),
            ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0 (0 disables)"),
            ("optim.batch_size", o.batch_size, o.batch_size >= 1, ">= 1"),
            ("optim.grad_accum", o.grad_accum, o.grad_accum >= 1, ">= 1"),
            ("optim.warmup_steps", o.warmup_steps, o.warmup_steps >= 0, ">= 0"),
            ("optim.min_lr_ratio", o.min_lr_ratio, 0 <= o.min_lr_ratio <= 1, "in [0, 1]"),
            ("optim.schedule", o.schedule, o.schedule == "steps" or (o.schedule == "time" and r.max_minutes > 0),
             "'steps' or 'time' (the latter with a time budget: run.max_minutes > 0)"),
            ("optim.clip", o.clip, o.clip >= 0, ">= 0 (0 disables)"),
            ("data.seq_len", d.seq_len, d.seq_len >= 2, ">= 2"),
            ("data.tokenizer", d.tokenizer, d.tokenizer in ("byte", "bpe"), "'byte' or 'bpe'"),
            ("data.niah_variants", d.niah_variants, isinstance(d.niah_variants, list) and len(d.niah_variants) >= 1
             and all(v in RULER_SINGLE for v in d.niah_variants), f"a non-empty list of {sorted(RULER_SINGLE)}"),
            ("data.documents", d.documents, d.documents in ("reset", "stream"),
             "'reset' (each document from a fresh state) or 'stream' (windows read across documents)"),
            ("run.device", r.device, r.device in ("auto", "cpu", "cuda"), "auto | cpu | cuda"),
            ("run.amp", r.amp, r.amp in ("bf16", "fp16", "none"), "bf16 | fp16 | none"),
            ("run.on_nan", r.on_nan, r.on_nan in ("stop", "skip"), "stop | skip"),
            ("run.keep_last", r.keep_last, r.keep_last >= 1, ">= 1"),
            ("run.log_every", r.log_every, r.log_every >= 1, ">= 1 (steps between log lines)"),
            ("run.eval_every", r.eval_every, r.eval_every >= 1, ">= 1 (steps between validations)"),
            ("run.save_every", r.save_every, r.save_every >= 1, ">= 1 (steps between checkpoints)"),
            ("run.eval_batches", r.eval_batches, r.eval_batches >= 1, ">= 1 (validation batches per evaluation)"),
            ("run.threads", r.threads, 0 <= r.threads <= max_threads,
             f"0 (torch's default) to {max_threads} (4 x the {os.cpu_count()} CPUs of this machine)"),
            ("run.seed", r.seed, 0 <= r.seed < 2 ** 63, "an integer in [0, 2**63)"),
            ("run.max_minutes", r.max_minutes, r.max_minutes >= 0, ">= 0 (0: no time budget)"),
            ("data.val_fraction", d.val_fraction, 0 < d.val_fraction < 1, "in (0, 1)"),
            ("run.max_params", r.max_params, r.max_params >= 1, ">= 1 (the largest model config accepted)"),
            ("model.max_context", self.model.max_context, self.model.max_context >= 0,
             ">= 0 (0: evaluation accepts any length)"),
            ("model.checkpoint_chunks", self.model.checkpoint_chunks, self.model.checkpoint_chunks >= 0,
             ">= 0 (0: no activation checkpointing)"),
        ]:
            require(ok, name, value, allowed)
        require(o.batch_size * d.seq_len <= MAX_MICRO_TOKENS, "optim.batch_size x data.seq_len",
                f"{o.batch_size} x {d.seq_len}", f"at most {MAX_MICRO_TOKENS:,} tokens per micro-batch (its "
                "activations are allocated at once)", "lower optim.batch_size (optim.grad_accum keeps the tokens "
                "per step) or data.seq_len")
        require(_number(self.model.norm_eps) and math.isfinite(self.model.norm_eps) and self.model.norm_eps > 0,
                "model.norm_eps", self.model.norm_eps, "a finite number > 0 (RMSNorm's epsilon)", "e.g. 1e-6")
        if d.tokenizer == "bpe" and d.task == "text":
            require(257 <= d.bpe_vocab <= 2 ** 32, "data.bpe_vocab", d.bpe_vocab,
                    "257 (256 bytes + <|endoftext|>) to 2**32 with data.tokenizer=bpe", "e.g. data.bpe_vocab=4096")
        if d.task == "mqar":
            pairs, vocab = d.mqar_pairs, d.mqar_vocab
            require(pairs >= 1, "data.mqar_pairs", pairs, ">= 1 key-value pair per sequence")
            require(4 * pairs <= d.seq_len, "data.seq_len", d.seq_len,
                    f">= 4 * data.mqar_pairs = {4 * pairs} with data.task=mqar (pairs plus one query slot pair each)",
                    "raise data.seq_len or lower data.mqar_pairs")
            require(pairs <= vocab // 2 - 1 and pairs <= vocab - vocab // 2, "data.mqar_vocab", vocab,
                    f">= {2 * pairs + 2} for data.mqar_pairs={pairs} (distinct keys in the lower half, values in "
                    "the upper)", "raise data.mqar_vocab or lower data.mqar_pairs")
        model = {k: v for k, v in self.model.to_dict().items() if k != "vocab_size"}
        check_model_size(self.size, model, d, r.max_params)   # last: the exact count imports the model code

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        parts = {"model": MirasConfig, "data": DataConfig, "optim": OptimConfig, "run": RunOptions}
        require(isinstance(data, dict), "config", type(data).__name__, "a table / mapping of sections",
                "e.g. {\"optim\": {\"lr\": 0.002}} in JSON or [optim] lr = 0.002 in TOML")
        unknown = sorted(set(data) - set(parts) - {"size"})
        require(not unknown, "config", unknown, f"sections {sorted(parts)} and 'size'")
        size = data.get("size", "small")
        require(isinstance(size, str), "size", size, "a string: '' or a named size")
        from ..models.config import SIZES
        require(size == "" or size in SIZES, "size", size, f"'' or one of {list(SIZES)}")
        model = data.get("model", {})
        require(isinstance(model, dict), "model", model, "a table of model keys")
        require("vocab_size" not in model, "model.vocab_size", model.get("vocab_size"),
                "no value: the data sets it (256 bytes, data.bpe_vocab for BPE, data.mqar_vocab for MQAR)",
                "drop model.vocab_size")
        fixed = ", ".join(f"model.{k}={model[k]!r}" for k in SIZE_FIXED if k in model)
        if size and fixed:
            raise ConfigError(f"{fixed} is invalid: allowed no value under size={size!r}, which sets d_model, heads "
                              "and n_layers itself; fix: drop them to use the named size, or set size= (empty) to "
                              "build the model section as given")
        typed = {}
        for section, klass in parts.items():
            values = data.get(section, {})
            require(isinstance(values, dict), section, values, f"a table of {section} keys")
            values = dict(values)
            names = {f.name: f for f in fields(klass)}
            bad = sorted(set(values) - set(names))
            require(not bad, f"{section} keys", bad, f"{sorted(names)}")
            defaults = klass()
            for key, value in values.items():
                values[key] = _typed(f"{section}.{key}", value, getattr(defaults, key))
            typed[section] = values
        pattern = typed["model"].get("layer_pattern")
        require(pattern is None or (isinstance(pattern, list) and pattern and all(isinstance(m, str) for m in pattern)),
                "model.layer_pattern", pattern, "null (the preset's block) or a non-empty list of mixer names",
                "e.g. model.layer_pattern='[\"memory\", \"swa\"]'")
        built = {k: parts[k](**typed[k]) for k in ("data", "optim", "run")}
        check_model_size(size, typed["model"], built["data"], built["run"].max_params, exact=False)  # pre-build
        return cls(size=size, model=MirasConfig(**typed["model"]), **built)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed(name: str, value, default):
    """value converted to the type of default (int -> float allowed, lists -> tuples), or ConfigError."""
    if default is None:
        return value
    if isinstance(default, dict):
        require(isinstance(value, dict), name, value, "a table / JSON object")
        return value
    if isinstance(default, bool):
        require(isinstance(value, bool), name, value, "true or false")
        return value
    if isinstance(default, (int, float)):
        ok = _number(value) and math.isfinite(value)
        ok = ok and (isinstance(default, float) or float(value).is_integer())
        require(ok, name, value, f"a {type(default).__name__}" + (" (finite)" if _number(value) else ""))
        return type(default)(value)
    if isinstance(default, (tuple, list)):
        require(isinstance(value, (list, tuple)), name, value, "a list")
        return type(default)(value)
    require(isinstance(value, str), name, value, "a string")
    return value


def _vocab_bound(d: DataConfig) -> tuple[int, str]:
    """The largest vocabulary the data section can give (the model's embedding rows) and the field that sets it."""
    if d.task == "mqar":
        return d.mqar_vocab, "data.mqar_vocab"
    if d.task == "text" and d.tokenizer == "bpe":
        return max(d.bpe_vocab, 257), "data.bpe_vocab"
    return 257, "the byte tokenizer"


def estimate_parameters(size: str, model: dict, vocab: int, limit: float = math.inf,
                        exact: bool = True) -> tuple[int, bool]:
    """(parameters, exact) of the model a config describes, without allocating it. First a lower bound (the
    embedding and the SwiGLU MLPs, plain arithmetic: no tensor is made for model.d_model=1e9); when that is within
    limit, the exact count of meta-device models of one and two layer periods, extrapolated to n_layers (no
    n_layers=1e6 model is ever built). A config too large for torch to describe even on the meta device (sizes past
    2**63 bytes) counts as more than limit. Named sizes: their parameter target (n_layers is solved to it), or the
    lower bound when the vocabulary alone is larger. Invalid values give (0, False): MirasConfig then names them.
    exact=False: the lower bound only (no model code is imported)."""
    from ..models.config import SIZES
    defaults = MirasConfig()
    get = lambda key: model.get(key, getattr(defaults, key))  # noqa: E731
    d, n, ratio, tied = get("d_model"), get("n_layers"), get("mlp_ratio"), get("tie_embeddings")
    if size:
        d, target = SIZES[size][0], SIZES[size][2] or 0
        n = 1
    ints_ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (d, n))
    if not (ints_ok and _number(ratio) and math.isfinite(ratio) and ratio > 0):
        return 0, False
    hidden = 8 * max(1, round(ratio * d / 8))
    lower = vocab * d * (1 if tied else 2) + n * 3 * hidden * d
    if size:
        return max(target, lower), False
    if lower > limit or not exact:
        return lower, False
    from ..models.sizes import count_parameters
    pattern = get("layer_pattern")
    period = len(pattern) if isinstance(pattern, list) and pattern else 1

    def count(layers: int) -> int:
        try:
            return count_parameters(MirasConfig(**{**model, "n_layers": layers, "vocab_size": vocab}))
        except (RuntimeError, TypeError, OverflowError, MemoryError):   # a shape past int64 even on meta
            return max(lower, int(limit) + 1)
    if n <= 2 * period:
        return count(n), True
    one, two = count(period), count(2 * period)
    full, rest = divmod(n, period)
    return one + (full - 1) * (two - one) + (count(period + rest) - one if rest else 0), True


def check_model_size(size: str, model: dict, data: DataConfig, max_params: int, exact: bool = True) -> None:
    """ConfigError when the model config is estimated above run.max_params, or deeper than MAX_LAYERS, before any
    tensor or n_layers-long list is made (model.d_model=1e9 or model.n_layers=1e6 are typos that would otherwise
    exhaust memory). exact=False checks the arithmetic lower bound only (RunConfig.from_dict, before MirasConfig
    is built; RunConfig then checks the exact count)."""
    vocab, vocab_field = _vocab_bound(data)
    params, exact = estimate_parameters(size, model, vocab, max_params, exact)
    if params > max_params:
        defaults = MirasConfig().to_dict()
        shown = (f"size={size!r}" if size else
                 ", ".join(f"model.{k}={v!r}" for k, v in model.items() if _number(v) and v != defaults.get(k)))
        shown += f", {vocab_field}={vocab}" if vocab_field.startswith("data.") else ""
        gib = 16 * params / 2 ** 30
        raise ConfigError(f"{shown or 'the model section'} is invalid: the model would have "
                          f"{'' if exact else 'at least '}{params:,} parameters (about {gib:,.1f} GiB "
                          f"to train with AdamW); allowed at most run.max_params={max_params:,}; fix: check "
                          "model.d_model / model.n_layers and the other model sizes (a typo?), or raise "
                          "run.max_params (e.g. run.max_params=1e10) for a model that large on purpose")
    n = model.get("n_layers", 1)
    require(not isinstance(n, int) or n <= MAX_LAYERS, "model.n_layers", n,
            f"1 to {MAX_LAYERS} (each layer is a few Python modules: 1e5 layers exhaust memory however thin)",
            "a typo? e.g. model.n_layers=12")


def read_config_file(path: str | Path) -> dict:
    """A .json, .toml or .yaml / .yml file -> dict (ConfigError naming the file when unreadable)."""
    path = Path(path)
    require(path.is_file(), "config file", str(path), "an existing .json / .toml / .yaml file")
    if path.suffix not in (".json", ".toml", ".yaml", ".yml"):
        raise ConfigError(f"config file {path}: unknown suffix {path.suffix!r}; allowed .json, .toml, .yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err}); allowed a UTF-8 .json / .toml / .yaml "
                          "file; fix: save it as UTF-8") from err
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            import yaml  # optional: pip install pyyaml
            data = yaml.safe_load(text)
            data = {} if data is None else data
    except Exception as err:  # noqa: BLE001 - any parser error becomes one clear message
        raise ConfigError(f"config file {path} could not be parsed: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds a {type(data).__name__} ({str(data)[:60]!r}); allowed a "
                          "mapping of sections (model, data, optim, run) and size; fix: e.g. "
                          "{\"optim\": {\"lr\": 0.002}} in JSON or [optim] lr = 0.002 in TOML")
    return data


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
            if isinstance(node.get(part), str):        # model.spec.bias=huber, then model.spec.bias.form=...
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            require(isinstance(node, dict), "override", item, f"a key under a table ({part} holds {node!r})")
        node[last] = value
    return data


def load_run_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    data = read_config_file(path) if path else {}
    return RunConfig.from_dict(apply_overrides(data, overrides or []))


# What --resume may change: how long the run goes on, how often it logs, evaluates and saves, what a non-finite
# loss does (stop, or skip the step), and whether it compiles (the same function, up to rounding). Anything else
# (model, data, optimizer, seed, device, ...) would make the resumed run a different run than its checkpoints.
RESUMABLE = ("optim.steps", "run.max_minutes", "run.log_every", "run.eval_every", "run.save_every", "run.keep_last",
             "run.threads", "run.tensorboard", "run.on_nan", "run.max_params", "run.compile")


def saved_run_config(run_dir: str | Path) -> dict:
    """The config dict a run folder's config.json records (sections + size; resolved_model and the keys a run
    fills in itself dropped), for RunConfig.from_dict. ConfigError when the folder has no readable config.json."""
    path = Path(run_dir) / "config.json"
    require(path.is_file(), "--resume of run.out_dir", str(run_dir), "a `miras train` run folder (with config.json)",
            "pass the run.out_dir of an earlier run (run.out_dir=..., or --config with it), or drop --resume to "
            "start a fresh run")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is unreadable ({err}); allowed the config.json `miras train` writes; fix: "
                          "start a fresh run in another run.out_dir") from err
    require(isinstance(data, dict) and isinstance(data.get("model"), dict), "config.json of run.out_dir", str(path),
            "the config.json `miras train` writes (sections model, data, optim, run)",
            "start a fresh run in another run.out_dir")
    data = {k: v for k, v in data.items() if k != "resolved_model"}
    if isinstance(data.get("data"), dict):
        data["data"].setdefault("documents", "stream")    # runs from before data.documents read across documents
    dropped = ("vocab_size", *SIZE_FIXED) if data.get("size", "small") else ("vocab_size",)
    data["model"] = {k: v for k, v in data["model"].items() if k not in dropped}
    return data


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "extra":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def resume_differences(cfg: RunConfig, run_dir: str | Path) -> list[str]:
    """The RESUMABLE fields in which cfg differs from the run's config.json; ConfigError naming every other
    differing field (a resumed run must be the run its checkpoints come from)."""
    saved = _flat(RunConfig.from_dict(saved_run_config(run_dir)).to_dict())
    given = _flat(cfg.to_dict())
    differ = sorted(k for k in saved.keys() | given.keys() if saved.get(k) != given.get(k) and k != "run.out_dir")
    refused = [k for k in differ if k not in RESUMABLE]
    if refused:
        shown = ", ".join(f"{k} ({saved.get(k)!r} in config.json, {given.get(k)!r} given)" for k in refused)
        raise ConfigError(f"--resume of {run_dir} is invalid: it continues the run as its config.json records it, "
                          f"and these fields differ: {shown}; allowed changes on resume: {', '.join(RESUMABLE)}; "
                          "fix: drop those overrides, or start a new run in another run.out_dir")
    return differ


def load_resume_config(path: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    """`miras train --resume`: the run's own config.json (run.out_dir from the overrides or the config file) with
    the config file's and the overrides' values on top (train() then refuses any outside RESUMABLE)."""
    given = apply_overrides(read_config_file(path) if path else {}, overrides or [])
    run = given.get("run") if isinstance(given.get("run"), dict) else {}
    out_dir = run.get("out_dir", RunOptions().out_dir)
    require(isinstance(out_dir, str), "run.out_dir", out_dir, "a folder path")
    merged = saved_run_config(out_dir)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return RunConfig.from_dict(merged)
