"""Recall over long context: S-NIAH by length and depth, MQAR by state size, and a 1M-token streamed pass key.

    python benchmarks/recall.py                     # S-NIAH: 12 presets, matched parameters, 512..16K (~2 h, 2 cores)
    python benchmarks/recall.py --all               # ... plus --mqar and --stream
    python benchmarks/recall.py --quick --all --threads 1     # 3 small presets, lengths <= 2K: minutes
    python benchmarks/recall.py --tiny --all        # the CI configuration (tests/test_recall_benchmark.py): seconds

S-NIAH (default part). Every preset is sized to the same parameter count (--params; d_model solved per preset,
n_layers and heads fixed, so counts land within a few percent), trained with `miras train`'s trainer on task niah
at --train-len tokens (default 512) for at most --minutes each (the cosine over --steps, so the learning rate stays
near its peak within the cap: annealing over the minutes instead, optim.schedule=time, delays recall's late drop in
loss), on RULER's single-needle variants --variants (default niah_single_1 = the 7-digit pass key in the
repeated-noise haystack; _2 = the number in real text, _3 = a UUID in real text, mixed per row when several are
given; the text haystack is the embedded corpus, train split for training, validation split for evaluation), then
scored by RULER's string match (miras.eval.niah.score_needle) at every --lengths x --depths cell (--needles
held-out needles per cell and variant). Writes to --out-dir:
niah_table.md / niah_table.csv, niah_accuracy_vs_length.png, and per preset niah/<preset>/heatmap.png (depth x
length, mean over the variants) next to its run folder and per-length results. The attention rows are
transformer-conv / transformer-swa-conv (attention_conv=4, docs/design-space.md); plain attention learns recall
far more slowly at this scale.

--mqar: MQAR at zoology's scale (256 tokens, --mqar-pairs 16/32/64, vocab 256), each preset at each --mqar-d-models
width (default 64) via `miras compare` (miras.eval.compare), the plain transformer next to transformer-conv;
mqar_table.md / .csv and mqar_state_p<P>.png (accuracy vs floats of recurrent state). --stream: the S-NIAH model of
--stream-preset (trained here if missing) reads a pass-key haystack of --stream-lengths tokens (default up to 1M)
in pieces of --stream-piece tokens, its states carried between calls, the prompt never held whole; accuracy,
tokens/s and peak RSS per length (each length in a fresh process, so its peak RSS is its own); stream_table.md /
.csv.

Resumable: a killed run started again with the same flags continues where it stopped. Training resumes from the
run folder's newest checkpoint (the trainer's resume; the wall-clock cap counts the minutes already spent), a
finished model is skipped (niah/<preset>/train.json), and every evaluated length (niah/<preset>/len-<L>.json,
stream/len-<L>.json) and MQAR model (mqar/.../done.json) is written atomically when done and skipped when present
("skip ..." lines). Retraining a preset deletes its evaluated lengths. A preset whose training diverges (the
trainer's non-finite gradient or loss) is recorded as such in its train.json, shown as "diverged at step N" in the
table and not evaluated, and the run goes on; delete niah/<preset> to train it again.

Training on the variant mixture is the trainer's own data.niah_variants (recorded in each run's config.json).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from miras.space import ConfigError, get_preset, list_presets  # noqa: E402
from miras.errors import require  # noqa: E402
from miras.train.denormals import denormals_flushed  # noqa: E402

_W0, _LR01 = {"spec": {"retention": {"toward": "init"}}}, {"lr_max": 0.01}
VARIANTS = {  # named model variants; -conv: a depthwise convolution (kernel 4) on attention's q, k, v
    "transformer-swa": {"preset": "transformer", "layer_pattern": ["swa"]},
    "transformer-conv": {"preset": "transformer", "attention_conv": 4},
    "transformer-swa-conv": {"preset": "transformer", "layer_pattern": ["swa"], "attention_conv": 4},
    # the deep memories with Moneta's recipe, in parts (docs/results.md): -w0, the decay aimed at the initial state W0
    # instead of 0; -lr01, the inner step bounded by lr_max 0.01 instead of 0.1; -w0-lr01, both
    **{f"{p}{suffix}": {"preset": p, **fields} for p in ("titans-lmm", "titans-mac", "yaad", "memora")
       for suffix, fields in (("-w0", _W0), ("-lr01", _LR01), ("-w0-lr01", {**_W0, **_LR01}))}}
NIAH_PRESETS = ("transformer-conv", "transformer-swa-conv", "mamba2", "gated-deltanet", "titans-lmm", "titans-mac",
                "moneta", "yaad", "memora", "moneta-h", "yaad-h", "memora-h")
MQAR_PRESETS = ("transformer", "transformer-conv", "mamba2", "gated-deltanet", "titans-lmm", "moneta")
RULER = ("niah_single_1", "niah_single_2", "niah_single_3")
MIN_LENGTH = 512      # the RULER template + needle + query take ~420 byte tokens (a UUID needle the most)
VOCAB = 256           # byte tokenizer


@dataclass
class RecallConfig:
    presets: list[str] = field(default_factory=lambda: list(NIAH_PRESETS))
    out_dir: str = "runs/recall"
    niah: bool = True
    params: int = 140_000            # target parameter count (d_model solved per preset)
    n_layers: int = 2
    heads: int = 2
    window: int = 256                # sliding window of swa / hybrid attention
    train_len: int = 512
    steps: int = 5000
    minutes: float = 10.0            # wall-clock cap of training per preset (0: none)
    batch_size: int = 16
    lr: float = 3e-3
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192, 16384])
    depths: int = 5
    needles: int = 2
    variants: list[str] = field(default_factory=lambda: ["niah_single_1"])   # the pass key; RULER: all three
    piece: int = 2048                # evaluation reads prompts in pieces of this many tokens
    mqar: bool = False
    mqar_presets: list[str] = field(default_factory=lambda: list(MQAR_PRESETS))
    mqar_pairs: list[int] = field(default_factory=lambda: [16, 32, 64])
    mqar_d_models: list[int] = field(default_factory=lambda: [64])
    mqar_seq_len: int = 256
    mqar_vocab: int = 256
    mqar_steps: int = 1500
    mqar_minutes: float = 3.0
    stream: bool = False
    stream_preset: str = "gated-deltanet"
    stream_lengths: list[int] = field(default_factory=lambda: [65536, 1048576])
    stream_depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    stream_piece: int = 16384
    threads: int = 0
    seed: int = 0

    def __post_init__(self):
        valid = sorted(list_presets()) + sorted(VARIANTS)
        for flag, names in (("--presets", self.presets), ("--mqar-presets", self.mqar_presets)):
            require(len(names) >= 1 and len(set(names)) == len(names), flag, ",".join(names),
                    "one or more distinct preset names", "e.g. --presets transformer,moneta")
            for name in names:
                require(name in valid, flag, name, f"one of {valid}", "see `miras presets`")
        ints = {"--params": (self.params, 1000), "--n-layers": (self.n_layers, 1), "--heads": (self.heads, 1),
                "--window": (self.window, 1), "--train-len": (self.train_len, MIN_LENGTH),
                "--steps": (self.steps, 1), "--batch-size": (self.batch_size, 1), "--depths": (self.depths, 2),
                "--needles": (self.needles, 1), "--piece": (self.piece, 1), "--mqar-seq-len": (self.mqar_seq_len, 4),
                "--mqar-vocab": (self.mqar_vocab, 4), "--mqar-steps": (self.mqar_steps, 1),
                "--stream-piece": (self.stream_piece, 1), "--seed": (self.seed, 0)}
        for flag, (value, low) in ints.items():
            require(isinstance(value, int) and not isinstance(value, bool) and value >= low, flag, value,
                    f"an integer >= {low}")
        require(self.n_layers <= 64, "--n-layers", self.n_layers, "1 to 64")
        for flag, value in (("--minutes", self.minutes), ("--mqar-minutes", self.mqar_minutes)):
            require(math.isfinite(value) and value >= 0, flag, value, "a finite number >= 0 (0: no cap)")
        require(math.isfinite(self.lr) and self.lr > 0, "--lr", self.lr, "a finite number > 0", "e.g. --lr 3e-3")
        max_threads = 4 * (os.cpu_count() or 1)
        require(0 <= self.threads <= max_threads, "--threads", self.threads, f"0 (torch's default) to {max_threads}")
        for flag, lengths in (("--lengths", self.lengths), ("--stream-lengths", self.stream_lengths)):
            require(len(lengths) >= 1 and all(n >= MIN_LENGTH for n in lengths) and len(set(lengths)) == len(lengths),
                    flag, ",".join(map(str, lengths)), f"distinct token counts >= {MIN_LENGTH} (the RULER template "
                    "and needle take ~420 byte tokens)", "e.g. --lengths 1024,2048")
        require(len(self.variants) >= 1 and all(v in RULER for v in self.variants), "--variants",
                ",".join(self.variants), f"one or more of {list(RULER)}", "e.g. --variants niah_single_1")
        P, T, V = self.mqar_pairs, self.mqar_seq_len, self.mqar_vocab
        require(len(P) >= 1 and all(1 <= p and 4 * p <= T and p <= V // 2 - 1 for p in P), "--mqar-pairs",
                ",".join(map(str, P)), f"pair counts from 1 to {min(T // 4, V // 2 - 1)} (4 x pairs <= --mqar-seq-len="
                f"{T}, pairs < --mqar-vocab / 2 = {V // 2})", "e.g. --mqar-pairs 16,32,64")
        require(len(self.mqar_d_models) >= 1 and all(d >= 2 * self.heads and d % (2 * self.heads) == 0
                                                     for d in self.mqar_d_models), "--mqar-d-models",
                ",".join(map(str, self.mqar_d_models)), f"widths that are multiples of 2 x --heads = {2 * self.heads}",
                "e.g. --mqar-d-models 32,64")
        require(len(self.stream_depths) >= 1 and all(0 <= d <= 1 for d in self.stream_depths), "--stream-depths",
                ",".join(map(str, self.stream_depths)), "depths in [0, 1]", "e.g. --stream-depths 0.1,0.5,0.9")
        require(self.stream_preset in valid, "--stream-preset", self.stream_preset, f"one of {valid}")
        from miras.models import MirasConfig
        pattern = MirasConfig(**model_fields(self.stream_preset), n_layers=1).pattern
        require("attention" not in pattern, "--stream-preset", self.stream_preset, "a preset with constant-size state "
                "(full attention's cache grows with the stream)", "e.g. --stream-preset gated-deltanet")
        require(self.niah or self.mqar or self.stream, "parts", "none", "at least one of S-NIAH, --mqar, --stream",
                "drop --no-niah or add --mqar / --stream")


QUICK = dict(presets=["transformer-conv", "mamba2", "gated-deltanet"], params=40_000, train_len=512, steps=400,
             minutes=0.75, batch_size=4, lengths=[1024, 2048], depths=3, needles=2,
             mqar_presets=["transformer-conv", "gated-deltanet"], mqar_d_models=[16, 32], mqar_steps=150,
             mqar_minutes=0.25, stream_lengths=[32768, 131072],
             stream_piece=8192, out_dir="runs/recall_quick")
TINY = dict(presets=["gated-deltanet", "transformer-conv"], variants=list(RULER), params=8_000, train_len=512, steps=2,
            minutes=0.0, batch_size=2,
            lengths=[512, 640], depths=2, needles=1, piece=256, mqar_presets=["gated-deltanet"], mqar_pairs=[2],
            mqar_d_models=[8], mqar_seq_len=16, mqar_vocab=16, mqar_steps=2, mqar_minutes=0.0, stream_lengths=[2048],
            stream_depths=[0.5], stream_piece=512, out_dir="runs/recall_tiny")


# ---------------------------------------------------------------------------------------------------- helpers

def model_fields(name: str) -> dict:
    """The model of a --presets name: a preset, or a named variant (VARIANTS)."""
    if name in VARIANTS:
        return dict(VARIANTS[name])
    get_preset(name)                  # ConfigError listing the valid names
    return {"preset": name}


def write_json(path: Path, data) -> None:
    """Atomic: a kill leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_table(rows: list[dict], path_md: Path, header: str) -> None:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in cols) + " |" for r in rows]
    path_md.write_text(header + "\n\n" + "\n".join(lines) + "\n")
    with open(path_md.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    print(path_md.read_text(), flush=True)


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def base_model(c: RecallConfig, name: str, d_model: int) -> dict:
    return {**model_fields(name), "vocab_size": VOCAB, "d_model": d_model, "heads": c.heads, "n_layers": c.n_layers,
            "chunk_size": 16, "d_state": 32, "window": c.window, "segment": 64}


def match_parameters(c: RecallConfig, name: str) -> tuple[int, int]:
    """(d_model, parameters): the width (a multiple of 2 x heads: RoPE needs even head dims) whose model is
    closest to c.params parameters. Counted on the meta device (nothing is allocated): the count is quadratic in
    d_model, so three counts fit it, and the widths around the fit's solution are counted exactly."""
    from miras.models import MirasConfig
    from miras.models.sizes import count_parameters
    step, counts = 2 * c.heads, {}

    def count(d: int) -> int:
        if d not in counts:
            counts[d] = count_parameters(MirasConfig(**base_model(c, name, d)))
        return counts[d]

    xs = [4 * step, 8 * step, 16 * step]
    (x0, x1, x2), (y0, y1, y2) = xs, [count(x) for x in xs]
    a = ((y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0)) / (x2 - x0)          # y = a x^2 + b x + c0
    b = (y1 - y0) / (x1 - x0) - a * (x0 + x1)
    c0 = y0 - a * x0 * x0 - b * x0
    guess = (-b + math.sqrt(max(b * b - 4 * a * (c0 - c.params), 0.0))) / (2 * a) if a > 0 else c.params / max(b, 1)
    d = max(step, step * round(guess / step))
    while d > step and count(d) > c.params:                # the fit is close; walk to the bracketing widths
        d -= step
    while count(d + step) <= c.params:
        d += step
    best = min((d, d + step), key=lambda w: abs(count(w) - c.params))
    return best, count(best)


def matched(c: RecallConfig, name: str) -> tuple[int, int]:
    """match_parameters, or the width a finished preset was trained at (its train.json)."""
    done = Path(c.out_dir) / "niah" / name / "train.json"
    if done.is_file():
        record = json.loads(done.read_text())
        if "d_model" in record:
            return record["d_model"], record["parameters"]
    return match_parameters(c, name)


_DOCS: dict = {}


def documents(split: str) -> tuple[str, ...]:
    """The embedded corpus's train or validation documents (the trainer's split: 10 %, seed 0)."""
    if split not in _DOCS:
        from miras.data import load_documents, split_documents
        train_docs, val_docs = split_documents(load_documents("shakespeare"), 0.1, seed=0)
        _DOCS["train"], _DOCS["val"] = (tuple(d.text for d in docs) for docs in (train_docs, val_docs))
    return _DOCS[split]


def spent_minutes(run_dir: Path) -> float:
    """Training minutes already spent in a run folder: the sum over its sessions (elapsed_s restarts at a resume)
    of each session's last logged elapsed_s."""
    from miras.eval.plots import read_metrics
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    total, last = 0.0, 0.0
    for row in read_metrics(path):
        if row.get("kind") != "train" or not isinstance(row.get("elapsed_s"), (int, float)):
            continue
        if row["elapsed_s"] < last:
            total += last
        last = row["elapsed_s"]
    return (total + last) / 60


# ---------------------------------------------------------------------------------------------------- S-NIAH

def run_config(c: RecallConfig, name: str, d_model: int, run_dir: Path, minutes: float):
    from miras.models import MirasConfig
    from miras.train.config import DataConfig, OptimConfig, RunConfig, RunOptions
    return RunConfig(model=MirasConfig(**base_model(c, name, d_model)), size="",
                     data=DataConfig(task="niah", seq_len=c.train_len, niah_variants=list(c.variants)),
                     optim=OptimConfig(lr=c.lr, steps=c.steps, batch_size=c.batch_size,
                                       warmup_steps=min(50, c.steps // 10)),
                     run=RunOptions(out_dir=str(run_dir), seed=c.seed, log_every=max(1, min(50, c.steps // 10)),
                                    eval_every=c.steps, eval_batches=2, save_every=max(1, min(50, c.steps)),
                                    keep_last=1, threads=c.threads, max_minutes=minutes))


def train_preset(c: RecallConfig, name: str, d_model: int, params: int) -> dict:
    """Trains (or resumes, or skips) one preset of d_model (params parameters); returns its train.json."""
    from miras.train.checkpoint import list_checkpoints
    from miras.train.trainer import TrainingError, train
    folder = Path(c.out_dir) / "niah" / name
    done, run_dir = folder / "train.json", folder / "run"
    if done.is_file():
        print(f"skip train {name}: done ({done})", flush=True)
        return json.loads(done.read_text())
    resume = run_dir.is_dir() and bool(list_checkpoints(run_dir))
    minutes = c.minutes
    if resume and c.minutes:
        minutes = max(c.minutes - spent_minutes(run_dir), 0.01)
    for stale in folder.glob("len-*.json"):              # results of an earlier model of this name
        stale.unlink()
    print(f"{'resume' if resume else 'train'} {name}: d_model {d_model}, {c.steps} steps, "
          f"{minutes:.2f} min cap", flush=True)
    start = time.time()
    try:
        summary = train(run_config(c, name, d_model, run_dir, minutes), resume=resume, overwrite=not resume)
    except TrainingError as err:        # a diverged preset is a result: recorded, not evaluated, and the run goes on
        summary = {"steps": err.step, "parameters": params, "diverged": str(err)}
    record = {"d_model": d_model, "steps": summary["steps"], "loss": summary.get("loss"),
              "val_loss": summary.get("val_loss"),
              "parameters": summary["parameters"], "train_min": spent_minutes(run_dir) or (time.time() - start) / 60,
              "tokens_per_s": summary.get("tokens_per_s")}
    if "diverged" in summary:
        record["diverged"] = summary["diverged"]
        print(f"diverged {name}: {summary['diverged']}\n  recorded in {done}; to train it again, delete {folder}",
              flush=True)
    write_json(done, record)
    return record


def evaluate_preset(c: RecallConfig, name: str) -> dict[int, dict]:
    """{length: results} for every --lengths; each length is computed once and written to len-<L>.json."""
    from miras.eval.load import load_run
    from miras.data.niah import RULER_SINGLE, NeedleTask, depths
    from miras.eval.niah import needle_accuracy
    folder = Path(c.out_dir) / "niah" / name
    out, model, tok = {}, None, None
    for length in c.lengths:
        path = folder / f"len-{length}.json"
        if path.is_file():
            print(f"skip eval {name} @ {length}: done ({path})", flush=True)
            out[length] = json.loads(path.read_text())
            continue
        if model is None:
            model, tok, _ = load_run(folder / "run")
        start, grid = time.time(), {}
        for variant in c.variants:
            haystack, kind = RULER_SINGLE[variant]
            docs = documents("val") if haystack == "text" else ()
            grid[variant] = [needle_accuracy(model, NeedleTask(kind, context_tokens=length, depth=dep,
                                                               haystack=haystack, documents=docs),
                                             tok, n=c.needles, seed=c.seed + 1000 + j, batch_size=c.needles,
                                             piece=c.piece)
                             for j, dep in enumerate(depths(c.depths))]
        cells = [a for accs in grid.values() for a in accs]
        out[length] = {"length": length, "depths": depths(c.depths), "accuracy": sum(cells) / len(cells),
                       "by_variant": grid, "needles_per_cell": c.needles, "seconds": round(time.time() - start, 1)}
        write_json(path, out[length])
        print(f"eval {name} @ {length}: accuracy {out[length]['accuracy']:.3f} "
              f"({out[length]['seconds']} s)", flush=True)
    return out


def run_niah(c: RecallConfig) -> list[dict]:
    from miras.eval.plots import heatmap, line_plot
    out = Path(c.out_dir)
    rows, curves = [], {}
    for name in c.presets:
        d_model, params = matched(c, name)
        record = train_preset(c, name, d_model, params)
        diverged = "diverged" in record
        results = {} if diverged else evaluate_preset(c, name)
        row = {"preset": name, "d_model": d_model, "params": params,
               "vs_target": f"{100 * (params - c.params) / c.params:+.1f}%", "steps": record["steps"],
               "train_min": round(record["train_min"], 1),
               "val_loss": "-" if diverged else round(record["val_loss"] or float("nan"), 3)}
        row.update({f"acc@{n}": "-" if diverged else results[n]["accuracy"] for n in c.lengths})
        for variant in c.variants:
            row.update({f"{variant}@{n}": "-" if diverged else sum(results[n]["by_variant"][variant]) / c.depths
                        for n in c.lengths})
        row["note"] = f"diverged at step {record['steps']}" if diverged else ""
        rows.append(row)
        if diverged:
            continue
        curves[name] = (c.lengths, [results[n]["accuracy"] for n in c.lengths])
        if plots_available():
            grid = [[sum(results[n]["by_variant"][v][j] for v in c.variants) / len(c.variants) for n in c.lengths]
                    for j in range(c.depths)]
            from miras.data.niah import depths
            heatmap(grid, depths(c.depths), c.lengths, out / "niah" / name / "heatmap.png",
                    f"S-NIAH: {name}", "context length", "needle depth")
    shown = [{k: v for k, v in r.items() if not k.startswith("niah_single")} for r in rows]
    header = (f"S-NIAH ({', '.join(c.variants)}), byte tokenizer: trained at {c.train_len} tokens ({c.steps} steps "
              f"max, {c.minutes} min cap per preset, batch {c.batch_size}, lr {c.lr}); {c.n_layers} layers, {c.heads} "
              f"heads, d_model matched to {c.params:,} parameters; RULER string match over {c.depths} depths x "
              f"{c.needles} needles x {len(c.variants)} variants per length (per-variant columns in the CSV)")
    write_table(shown, out / "niah_table.md", header)
    with open(out / "niah_table.csv", "w", newline="") as f:           # the CSV with every column
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if plots_available() and curves:
        line_plot(curves, out / "niah_accuracy_vs_length.png", f"S-NIAH accuracy (trained at {c.train_len})",
                  "context length", "accuracy (RULER string match)", logx=True)
    return rows


# ---------------------------------------------------------------------------------------------------- MQAR

def run_mqar(c: RecallConfig) -> list[dict]:
    """Each (pairs, d_model, preset) is one `miras compare` of one preset, skipped when its done.json exists."""
    from miras.eval.compare import CompareConfig, compare
    from miras.eval.plots import line_plot
    out = Path(c.out_dir)
    rows = []
    for pairs in c.mqar_pairs:
        for d_model in c.mqar_d_models:
            for name in c.mqar_presets:
                folder = out / "mqar" / f"pairs{pairs}-d{d_model}" / name
                done = folder / "done.json"
                if done.is_file():
                    print(f"skip mqar {name} pairs {pairs} d_model {d_model}: done ({done})", flush=True)
                    rows.append(json.loads(done.read_text()))
                    continue
                if name in VARIANTS:
                    entry = folder.parent / f"{name}.json"
                    write_json(entry, {"model": model_fields(name)})
                else:
                    entry = name
                cc = CompareConfig(presets=[str(entry)], seq_len=c.mqar_seq_len, pairs=pairs, vocab=c.mqar_vocab,
                                   d_model=d_model, heads=c.heads, n_layers=c.n_layers, steps=c.mqar_steps,
                                   minutes=c.mqar_minutes, batch_size=32, lr=c.lr, eval_n=256,
                                   eval_lengths=[c.mqar_seq_len], out_dir=str(folder), seed=c.seed, threads=c.threads)
                r = compare(cc)[0]
                row = {"preset": name, "pairs": pairs, "d_model": d_model, "params": r["params"],
                       "state_floats": r[f"state@{c.mqar_seq_len}"], "steps": r["steps"], "train_s": r["train_s"],
                       "loss": r["loss"], "accuracy": r[f"acc@{c.mqar_seq_len}"]}
                write_json(done, row)
                rows.append(row)
    header = (f"MQAR: {c.mqar_seq_len} tokens, vocab {c.mqar_vocab}, {c.n_layers} layers, {c.heads} heads; "
              f"{c.mqar_steps} steps max ({c.mqar_minutes} min cap per model), batch 32, lr {c.lr}; accuracy over 256 "
              "held-out sequences; state_floats: recurrent state per sequence after the sequence, all layers (the "
              "transformer's KV cache)")
    write_table(rows, out / "mqar_table.md", header)
    if plots_available():
        for pairs in c.mqar_pairs:
            series = {}
            for name in c.mqar_presets:
                points = sorted((r["state_floats"], r["accuracy"]) for r in rows
                                if r["preset"] == name and r["pairs"] == pairs)
                series[name] = ([x for x, _ in points], [y for _, y in points])
            line_plot(series, out / f"mqar_state_p{pairs}.png", f"MQAR, {c.mqar_seq_len} tokens, {pairs} pairs",
                      "recurrent state (floats)", "accuracy", logx=True,
                      hline=(1.0 / (c.mqar_vocab - c.mqar_vocab // 2), "chance"))
    return rows


# ---------------------------------------------------------------------------------------------------- stream

def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux: kilobytes


def stream_length(run_dir: str, length: int, depths_: list[float], piece: int, seed: int, threads: int) -> dict:
    """The pass key in a noise haystack of `length` tokens, read `piece` tokens per call with the states carried."""
    from miras.eval.load import load_run
    from miras.data.niah import NeedleTask
    from miras.eval.niah import score_needle
    from miras.data.rng import EVAL, generator_for
    if threads:
        torch.set_num_threads(threads)
    model, tok, _ = load_run(run_dir)
    rss_loaded = peak_rss_mb()
    hits, tokens, seconds, answers = 0, 0, 0.0, []
    with torch.no_grad():
        for j, depth in enumerate(depths_):
            task = NeedleTask("numbers", context_tokens=length, depth=depth, haystack="noise")
            pieces, answer, _ = task.stream_example(tok, generator_for(seed, EVAL, 77, j), piece)
            states, start = None, time.perf_counter()
            for ids in pieces:
                logits, states = model(torch.tensor([ids]), states)
                tokens += len(ids)
            seconds += time.perf_counter() - start
            out = [int(logits[0, -1].argmax())]
            while len(out) < len(answer) + 2:
                logits, states = model(torch.tensor([out[-1:]]), states)
                out.append(int(logits[0, -1].argmax()))
            hit = score_needle(tok.decode(out), tok.decode(answer))
            hits += hit
            answers.append({"depth": depth, "answer": tok.decode(answer).strip(), "generated": tok.decode(out),
                            "hit": hit})
    return {"length": length, "accuracy": hits / len(depths_), "tokens_per_s": round(tokens / seconds),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_after_load_mb": round(rss_loaded, 1),
            "piece": piece, "answers": answers}


def run_stream(c: RecallConfig) -> list[dict]:
    name = c.stream_preset
    if "diverged" in train_preset(c, name, *matched(c, name)):     # (skipped when trained: its train.json)
        print(f"stream: skipped, the S-NIAH model of {name} diverged; try another --stream-preset", flush=True)
        return []
    run_dir = Path(c.out_dir) / "niah" / name / "run"
    rows = []
    for length in c.stream_lengths:
        path = Path(c.out_dir) / "stream" / f"len-{length}.json"
        if path.is_file():
            print(f"skip stream {name} @ {length}: done ({path})", flush=True)
            rows.append(json.loads(path.read_text()))
            continue
        job = {"run_dir": str(run_dir), "length": length, "depths_": c.stream_depths, "piece": c.stream_piece,
               "seed": c.seed, "threads": c.threads}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--stream-worker", json.dumps(job)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise RuntimeError(f"the stream worker for {length} tokens failed (exit {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        write_json(path, result)
        print(f"stream {name} @ {length}: accuracy {result['accuracy']:.3f}, {result['tokens_per_s']} tok/s, "
              f"peak RSS {result['peak_rss_mb']} MB", flush=True)
        rows.append(result)
    table = [{"preset": name, "tokens": r["length"], "accuracy": r["accuracy"], "tokens_per_s": r["tokens_per_s"],
              "peak_rss_mb": r["peak_rss_mb"], "rss_after_load_mb": r["rss_after_load_mb"]} for r in rows]
    header = (f"Streamed pass key: {name} (the S-NIAH model above) reads a noise haystack in pieces of "
              f"{c.stream_piece} tokens with its states carried; needle at depths {c.stream_depths}; peak RSS of a "
              "fresh process per length (rss_after_load_mb: after loading the model, before reading)")
    write_table(table, Path(c.out_dir) / "stream_table.md", header)
    return rows


# ---------------------------------------------------------------------------------------------------- CLI

def _ints(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}={text!r} is invalid: allowed comma-separated integers; fix: e.g. {flag} "
                          "1024,2048") from None


def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag}={text!r} is invalid: allowed comma-separated numbers; fix: e.g. {flag} "
                          "0.1,0.5") from None


LIST_FLAGS = {"presets": str, "mqar_presets": str, "variants": str, "lengths": int, "mqar_pairs": int,
              "mqar_d_models": int, "stream_lengths": int, "stream_depths": float}


def parse(argv: list[str]) -> RecallConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 small presets, lengths <= 2K: a few minutes")
    mode.add_argument("--tiny", action="store_true", help="the CI configuration: seconds")
    p.add_argument("--all", action="store_true", help="S-NIAH plus --mqar and --stream")
    p.add_argument("--mqar", action="store_true", help="add the MQAR part")
    p.add_argument("--stream", action="store_true", help="add the streamed pass-key part")
    p.add_argument("--no-niah", action="store_true", help="skip the S-NIAH part")
    defaults = RecallConfig.__dataclass_fields__
    for name, f in defaults.items():
        if name in ("niah", "mqar", "stream"):
            continue
        flag = "--" + name.replace("_", "-")
        kind = str if name in LIST_FLAGS else {"int": int, "float": float, "str": str}[f.type]
        p.add_argument(flag, type=kind, default=None, metavar=name.upper())
    a = p.parse_args(argv)
    values = dict(QUICK if a.quick else TINY if a.tiny else {})
    for name in defaults:
        given = getattr(a, name, None)
        if name in ("niah", "mqar", "stream") or given is None:
            continue
        flag = "--" + name.replace("_", "-")
        if name in LIST_FLAGS:
            kind = LIST_FLAGS[name]
            given = (_ints(flag, given) if kind is int else _floats(flag, given) if kind is float
                     else [x.strip() for x in given.split(",") if x.strip()])
        values[name] = given
    values.update(niah=not a.no_niah, mqar=a.mqar or a.all, stream=a.stream or a.all)
    return RecallConfig(**values)


def run(c: RecallConfig) -> dict:
    if c.threads:
        torch.set_num_threads(c.threads)
    Path(c.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(c.out_dir) / "config.json", asdict(c))
    start, out = time.time(), {}
    if c.niah:
        out["niah"] = run_niah(c)
    if c.mqar:
        out["mqar"] = run_mqar(c)
    if c.stream:
        out["stream"] = run_stream(c)
    print(f"recall: done in {(time.time() - start) / 60:.1f} min; results in {c.out_dir}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    with denormals_flushed():            # as `miras`: before any parallel op (miras/train/denormals.py)
        return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--stream-worker"]:
        print(json.dumps(stream_length(**json.loads(argv[1]))), flush=True)
        return 0
    try:
        run(parse(argv))
    except ConfigError as err:          # bad input: one clear line, no traceback
        print(f"recall.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
