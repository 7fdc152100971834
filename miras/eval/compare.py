"""`miras compare`: train several presets on one synthetic recall task with one budget, evaluate, tabulate, plot.

Every model gets the same d_model / n_layers / heads, data, optimizer and wall-clock cap, and its own budget of
steps (`STEPS`, the steps each preset needs on the default task; `--steps N` gives every model N); the table
reports each model's parameter count and recurrent state size (the zoology axis: recall vs state size), steps and
training cost, and MQAR accuracy at the training length and at longer sequences.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models import MirasConfig
from ..models.state_tree import flatten_tensors
from ..space import get_preset
from ..errors import require
from ..train.config import MAX_LAYERS, DataConfig, OptimConfig, RunConfig, RunOptions
from ..train.trainer import train
from .load import load_run, resolve_device
from ..data.mqar import MQAR
from .mqar import mqar_accuracy
from .plots import line_plot

DEFAULT_PRESETS = ("transformer", "mamba2", "gated-deltanet", "titans-lmm", "moneta", "yaad", "memora")
# Each preset's budget on the default task: the steps its MQAR accuracy needs to settle (docs/results.md: the
# curves by step), with a margin for the run-to-run spread of the take-off step (Memora: 0.97 and 0.85 at 700
# steps in two runs). A budget in steps, not seconds, makes the result the same on a slower or busier machine;
# the sum fits `make run` in 10-15 minutes on 2 cores. Presets not listed (and config files naming them) get
# DEFAULT_STEPS.
STEPS = {"transformer": 1000, "mamba2": 1500, "gated-deltanet": 1000, "titans-lmm": 600, "moneta": 1100,
         "yaad": 700, "memora": 900}
DEFAULT_STEPS = 1000


@dataclass
class CompareConfig:
    presets: list[str] = field(default_factory=lambda: list(DEFAULT_PRESETS))
    seq_len: int = 64
    pairs: int = 4
    vocab: int = 64
    d_model: int = 64
    heads: int = 2
    n_layers: int = 2
    chunk_size: int | None = None   # None: every model its own (the presets' chunk sizes); an int overrides all
    steps: int | None = None         # None: each preset's own budget (STEPS); an int: every model's
    minutes: float = 5.0             # wall-clock cap per model (0: none), a guard: the budgets are in steps
    batch_size: int = 32
    lr: float = 3e-3
    eval_n: int = 256
    eval_lengths: list[int] = field(default_factory=lambda: [64, 128, 256])
    out_dir: str = "runs/compare"
    seed: int = 0
    threads: int = 0
    device: str = "auto"             # auto (cuda when there is a GPU) | cpu | cuda: training and evaluation

    def __post_init__(self):
        """Every flag checked, and every preset's RunConfig built (its checks: model size, MQAR sizes, ...), before
        anything is trained or written."""
        require(isinstance(self.presets, list) and len(self.presets) >= 1, "--presets", self.presets,
                "one or more preset names or model config files", "e.g. --presets mamba2,moneta,my-model.toml")
        for name in self.presets:
            model_fields(name)  # ConfigError listing the valid names, or naming the file
        require(self.chunk_size is None or (isinstance(self.chunk_size, int) and self.chunk_size >= 1), "--chunk-size",
                self.chunk_size, "an integer >= 1 (omit it: each preset's own)")
        require(self.steps is None or (isinstance(self.steps, int) and self.steps >= 1), "--steps", self.steps,
                "an integer >= 1 (omit it: each preset's own budget)", f"the budgets: {STEPS}")
        for name in ("seq_len", "pairs", "vocab", "d_model", "heads", "n_layers", "batch_size", "eval_n"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"--{name.replace('_', '-')}", value, "an integer >= 1")
        require(self.n_layers <= MAX_LAYERS, "--n-layers", self.n_layers, f"1 to {MAX_LAYERS}")
        require(math.isfinite(self.lr) and self.lr > 0, "--lr", self.lr, "a finite number > 0")
        require(math.isfinite(self.minutes) and self.minutes >= 0, "--minutes", self.minutes, ">= 0 (0: no cap)")
        require(self.threads >= 0, "--threads", self.threads, "0 (torch's default) or more")
        require(self.device in ("auto", "cpu", "cuda"), "--device", self.device, "auto | cpu | cuda")
        resolve_device(self.device)                    # cuda without a GPU: an error naming --device
        require(len(self.eval_lengths) >= 1 and all(n >= 4 * self.pairs for n in self.eval_lengths), "--eval-lengths",
                self.eval_lengths, f"lengths >= 4 x --pairs = {4 * self.pairs} (MQAR's pairs and queries)")
        for preset in self.presets:
            run_config(self, preset)


CONFIG_SUFFIXES = (".toml", ".json", ".yaml", ".yml")
SIZE_FIELDS = ("vocab_size", "d_model", "heads", "n_layers", "head_dim")


def label(entry: str) -> str:
    """A --presets entry's name in the table and its run folder: the preset, or the config file's stem."""
    return Path(entry).stem if entry.endswith(CONFIG_SUFFIXES) else entry


def model_fields(entry: str) -> dict:
    """The model of a --presets entry, without the sizes every model shares: {"preset": name} for a preset, a
    config file's model section (preset, spec, layer_pattern, ...) for a .toml / .json / .yaml path (a spec or
    chunk_size it sets is kept; otherwise --chunk-size applies)."""
    if not entry.endswith(CONFIG_SUFFIXES):
        get_preset(entry)
        return {"preset": entry}
    from ..train.config import read_config_file
    model = read_config_file(entry).get("model")
    require(isinstance(model, dict) and "preset" in model, "--presets", entry,
            "a config file with a [model] section naming a preset (and its spec)", "see `miras presets NAME`")
    return {k: v for k, v in model.items() if k not in SIZE_FIELDS}


def steps_of(c: CompareConfig, entry: str) -> int:
    """The training steps of a --presets entry: --steps, else its preset's budget (STEPS)."""
    return c.steps if c.steps is not None else STEPS.get(model_fields(entry)["preset"], DEFAULT_STEPS)


def run_config(c: CompareConfig, entry: str) -> RunConfig:
    fields, steps = model_fields(entry), steps_of(c, entry)
    own_chunk = c.chunk_size is None or "chunk_size" in fields or "chunk_size" in (fields.get("spec") or {})
    model = MirasConfig(**{"vocab_size": c.vocab, "d_model": c.d_model, "heads": c.heads, "n_layers": c.n_layers,
                           "chunk_size": None if own_chunk else c.chunk_size, "window": c.seq_len,
                           "segment": c.seq_len // 2, "d_state": 32, **fields})
    return RunConfig(
        model=model, size="",
        data=DataConfig(task="mqar", seq_len=c.seq_len, mqar_pairs=c.pairs, mqar_vocab=c.vocab),
        optim=OptimConfig(lr=c.lr, steps=steps, batch_size=c.batch_size, warmup_steps=min(50, steps // 10)),
        run=RunOptions(out_dir=str(Path(c.out_dir) / label(entry)), seed=c.seed, log_every=max(1, steps // 10),
                       eval_every=steps, save_every=steps, keep_last=1, threads=c.threads,
                       max_minutes=c.minutes, device=c.device))


@torch.no_grad()
def state_floats(model, length: int, vocab: int) -> int:
    """Floats of recurrent state (all layers) for one sequence after `length` tokens (grows for attention). A
    state's prior (the W0 a decay toward the initial state pulls to) is the layer's parameter, the same for every
    sequence, so it is not counted."""
    _, states = model(torch.randint(0, vocab, (1, length)).to(next(model.parameters()).device))
    return sum(t.numel() for name, t in flatten_tensors(states).items() if t.dim() > 0 and ".prior." not in name)


@torch.no_grad()
def evaluate_mqar(model, c: CompareConfig) -> dict:
    out = {}
    for length in c.eval_lengths:
        task = MQAR(seq_len=length, num_kv_pairs=c.pairs, vocab_size=c.vocab, seed=c.seed + 1)
        start = time.perf_counter()
        out[f"acc@{length}"] = mqar_accuracy(model, task, n=c.eval_n, batch_size=32)
        out[f"eval_tok_s@{length}"] = c.eval_n * length / (time.perf_counter() - start)
    return out


def compare(c: CompareConfig) -> list[dict]:
    """Trains and evaluates every preset; writes table.md, table.csv, results.json and PNG plots to c.out_dir."""
    if c.threads:
        torch.set_num_threads(c.threads)
    out = Path(c.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in c.presets:
        print(f"== {label(entry)}", flush=True)
        summary = train(run_config(c, entry), overwrite=True)   # a rerun replaces its own earlier results
        model = load_run(Path(c.out_dir) / label(entry))[0].to(resolve_device(c.device))
        rows.append({"preset": label(entry), "params": model.num_parameters(),
                     f"state@{c.seq_len}": state_floats(model, c.seq_len, c.vocab), "steps": summary["steps"],
                     "train_s": round(summary["elapsed_s"], 1), "train_tok_s": round(summary["tokens_per_s"]),
                     "loss": round(summary["loss"], 4), **evaluate_mqar(model, c)})
        print(format_row(rows[-1]), flush=True)
    write_results(c, rows)
    return rows


def format_row(row: dict) -> str:
    return "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def markdown_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(fmt(r[k]) for k in cols) + " |" for r in rows])


def write_results(c: CompareConfig, rows: list[dict]) -> None:
    out = Path(c.out_dir)
    budget = f"{c.steps} steps" if c.steps is not None else "each preset's steps (column steps)"
    header = (f"MQAR: seq_len {c.seq_len}, {c.pairs} pairs, vocab {c.vocab}; d_model {c.d_model}, {c.n_layers} layers, "
              f"{c.heads} heads; {budget} (cap {c.minutes} min/model), batch {c.batch_size}, lr {c.lr}; "
              f"accuracy over {c.eval_n} held-out sequences per length\n\n")
    (out / "table.md").write_text(header + markdown_table(rows) + "\n")
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps({"config": asdict(c), "rows": rows}, indent=2))
    lengths = c.eval_lengths
    line_plot({r["preset"]: (lengths, [r[f"acc@{n}"] for n in lengths]) for r in rows}, out / "accuracy_vs_length.png",
              "MQAR accuracy vs sequence length", "sequence length", "accuracy", logx=True,
              hline=(1.0 / (c.vocab - c.vocab // 2), "chance"))
    line_plot({r["preset"]: (lengths, [r[f"eval_tok_s@{n}"] for n in lengths]) for r in rows},
              out / "throughput_vs_length.png", "Inference throughput (forward)", "sequence length", "tokens/s",
              logx=True)
    curves = {}
    for r in rows:
        metrics = [json.loads(x) for x in (out / r["preset"] / "metrics.jsonl").read_text().splitlines()]
        train_rows = [m for m in metrics if m["kind"] == "train"]
        curves[r["preset"]] = ([m["step"] for m in train_rows], [m["loss"] for m in train_rows])
    line_plot(curves, out / "loss.png", "Training loss (MQAR, labeled positions)", "step", "loss")
