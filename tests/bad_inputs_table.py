"""The bad-input table of the `miras` command line, shared by tests/test_cli_bad_inputs.py (CI) and
benchmarks/bad_inputs.py (the same table plus --long, printed as a summary).

Each Case is one command line. Placeholders in argv: {run} = a private copy of a finished 4-step run (checkpoints
step-000002 and step-000004; `setup` may change it first), {new} = a fresh path for a run folder, {tmp} = the
case's scratch folder. What a case must produce: exit code `code` (2 for bad input), stderr one paragraph (no blank
line, no traceback) holding every string of `expect`, and every folder it touches byte-identical before and after
(a fresh {new} folder may at most be created empty). A `fallback` case instead expects exit 0 with a warning that
names the skipped checkpoint, and the older checkpoint it fell back to unchanged.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

TINY = ["size=", "run.max_minutes=0", "model.preset=gated-deltanet", "model.d_model=16", "model.heads=2",
        "model.n_layers=1", "model.chunk_size=8", "data.seq_len=32", "optim.batch_size=2", "optim.warmup_steps=1",
        "run.threads=1", "run.eval_batches=1", "run.eval_every=100", "run.log_every=1"]
FRESH = ["train", *TINY, "run.out_dir={new}"]                       # a fresh tiny run; a case appends one override
RESUME = ["train", "--resume", "run.out_dir={run}"]
FALLBACK = "using the older intact checkpoint step-000002"


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    argv: tuple
    expect: tuple = ()
    code: int = 2
    setup: str = ""               # a SETUPS key, run on the case's folder before the command
    fallback: bool = False
    subprocess: bool = False      # also run as a real `miras` process (proves no traceback reaches a terminal)
    xfail: str = ""               # a known bug, not fixed here: the reason (the test is xfail(strict=True))

    @property
    def id(self) -> str:
        return f"{self.category}:{self.name}"


def case(category, name, argv, *expect, **kw) -> Case:
    return Case(category, name, tuple(argv), tuple(expect), **kw)


# -- what `setup` does to a case's folder ---------------------------------------------------------------------------

def _newest(run: Path) -> Path:
    return run / "step-000004"


def _rewrite_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, **changes}))


def _tensors(path: Path, name: str, change) -> None:
    from safetensors.torch import load_file, save_file
    save_file(change(load_file(str(path / name))), str(path / name))


def _first_to(state: dict, value) -> dict:
    key = next(iter(state))
    return {**state, key: value}


CORRUPT = {   # one way to break a checkpoint folder each
    "truncated model": lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:100]),
    "empty model file": lambda p: (p / "model.safetensors").write_bytes(b""),
    "model file deleted": lambda p: (p / "model.safetensors").unlink(),
    "pickle as safetensors": lambda p: __import__("torch").save({"w": 1}, p / "model.safetensors"),
    "random bytes model": lambda p: (p / "model.safetensors").write_bytes(os.urandom(4096)),
    "meta not json": lambda p: (p / "meta.json").write_text("{"),
    "meta not utf8": lambda p: (p / "meta.json").write_bytes(b"\xff\xfe{\x00"),
    "meta a list": lambda p: (p / "meta.json").write_text("[1, 2]"),
    "meta step mismatch": lambda p: _rewrite_meta(p, step=7),
    "meta step negative": lambda p: _rewrite_meta(p, step=-1),
    "optimizer.json a list": lambda p: (p / "optimizer.json").write_text("[]"),
    "optimizer tensors truncated": lambda p: (p / "optimizer.safetensors").write_bytes(b"\x08\x00"),
    "rng state invalid": lambda p: _tensors(p, "rng.safetensors", lambda s: {
        "torch": __import__("torch").zeros(7, dtype=__import__("torch").uint8)}),
    "weights nan": lambda p: _tensors(p, "model.safetensors", lambda s: {
        k: v * float("nan") if v.is_floating_point() else v for k, v in s.items()}),
    "weight wrong shape": lambda p: _tensors(p, "model.safetensors", lambda s: _first_to(
        s, __import__("torch").zeros(3, 3))),
    "weight missing": lambda p: _tensors(p, "model.safetensors", lambda s: dict(list(s.items())[1:])),
}


def _all_checkpoints(kind: str):
    def setup(run: Path) -> None:
        for path in sorted(run.glob("step-*")):
            CORRUPT[kind](path)
    return setup


def _write(name: str, content: bytes):
    return lambda folder: (folder / name).write_bytes(content)


SETUPS = {
    **{f"newest: {kind}": (lambda k: lambda run: CORRUPT[k](_newest(run)))(kind) for kind in CORRUPT},
    **{f"all: {kind}": _all_checkpoints(kind) for kind in ("truncated model", "meta not json", "weights nan")},
    "no checkpoint": lambda run: [shutil.rmtree(p) for p in run.glob("step-*")],
    "config.json not json": lambda run: (run / "config.json").write_text("{oops"),
    "config.json a list": lambda run: (run / "config.json").write_text("[]"),
    "metrics row without loss": lambda run: (run / "metrics.jsonl").write_text(
        '{"kind": "train", "step": 1}\n' + (run / "metrics.jsonl").read_text()),
    "file list.json": _write("c.json", b"[1, 2]"),
    "file scalar.json": _write("c.json", b"3"),
    "file scalar.yaml": _write("c.yaml", b"hello"),
    "file latin1.toml": _write("c.toml", "[optim]\nlr = 0.002 # caf\u00e9\n".encode("latin-1")),
    "file utf16.json": _write("c.json", '{"optim": {"lr": 0.002}}'.encode("utf-16")),
    "file unknown section": _write("c.toml", b"[optimizer]\nlr = 0.002\n"),
    "file unknown key": _write("c.toml", b"[optim]\nlearning_rate = 0.002\n"),
    "file section a number": _write("c.json", b'{"optim": 5}'),
    "file bad toml": _write("c.toml", b"[optim\nlr = \n"),
    "file bad json": _write("c.json", b'{"optim": {"lr": 0.002,}}'),
    "file bad suffix": _write("c.ini", b"[optim]\nlr = 0.002\n"),
    "file bad value": _write("c.toml", b"[optim]\nsteps = -5\n"),
    "file folder": lambda folder: (folder / "c.json").mkdir(),
    "file model size typo": _write("c.toml", b'size = ""\n[model]\nd_model = 1_000_000_000\n'),
}


# -- the table ------------------------------------------------------------------------------------------------------

def _override(name, value, *expect, **kw):
    return case("train overrides", f"{name}={value}", [*FRESH, f"{name}={value}"], *(expect or (name,)), **kw)


CASES: list[Case] = [
    # bad numbers, wrong types, out of range
    _override("optim.lr", "-1", "optim.lr=-1.0", "> 0"),
    _override("optim.lr", "NaN", "optim.lr=nan"),
    _override("optim.lr", "Infinity", "optim.lr=inf"),
    _override("optim.lr", "fast", "optim.lr='fast'", "a float"),
    _override("optim.steps", "0", "optim.steps=0", ">= 1"),
    _override("optim.steps", "2.5", "optim.steps=2.5", "a int"),
    _override("optim.steps", "1e400", "optim.steps=inf"),
    _override("optim.steps", "true", "optim.steps=True"),
    _override("optim.batch_size", "[2]", "optim.batch_size=[2]"),
    _override("optim.min_lr_ratio", "2", "optim.min_lr_ratio=2.0", "in [0, 1]"),
    _override("optim.betas", "0.9", "optim.betas=0.9", "a list"),
    _override("optim.betas", '["a","b"]', "optim.betas=('a', 'b')", "two numbers"),
    _override("optim.warmup_steps", "-1", "optim.warmup_steps=-1"),
    _override("run.seed", "-1", "run.seed=-1", "[0, 2**63)"),
    _override("run.seed", "1e23", "run.seed=99999999999999991611392"),
    _override("run.threads", "100000", "run.threads=100000"),
    _override("run.device", "tpu", "run.device='tpu'", "auto | cpu | cuda"),
    _override("run.amp", "fp8", "run.amp='fp8'"),
    _override("run.on_nan", "ignore", "run.on_nan='ignore'", "stop | skip"),
    _override("run.compile", "yes", "run.compile='yes'", "true or false"),
    _override("run.out_dir", "5", "run.out_dir=5", "a string"),
    _override("run.keep_last", "0", "run.keep_last=0"),
    _override("run.max_minutes", "-1", "run.max_minutes=-1.0"),
    _override("run.max_params", "0", "run.max_params=0"),
    _override("data.seq_len", "1", "data.seq_len=1", ">= 2"),
    _override("data.val_fraction", "1", "data.val_fraction=1.0", "in (0, 1)"),
    _override("data.task", "nope", "data.task='nope'"),
    _override("data.tokenizer", "words", "data.tokenizer='words'"),
    _override("data.documents", "merge", "data.documents='merge'"),
    _override("model.spec.bias", "hubber", "spec.bias.name='hubber'", "huber"),
    _override("model.spec.retention.qq", "3", "spec.retention", "qq"),
    _override("model.spec.retention.toward", "back", "retention.toward='back'", "'zero', 'init'"),
    _override("model.spec.retention.toward", "init", "retention.toward='init'", "'delta' algorithm"),
    _override("model.spec.bias.form", "cubic", "spec.bias", "form"),
    _override("model.spec", "3", "spec=3"),
    _override("model.spec.algorithm", "attention", "attention"),
    _override("data.corpus", "/no/such/corpus.txt", "corpus='/no/such/corpus.txt'", "no such file"),
    case("train overrides", "data.bpe_vocab=10 with bpe", [*FRESH, "data.tokenizer=bpe", "data.bpe_vocab=10"],
         "data.bpe_vocab=10", "257"),
    case("train overrides", "data.mqar_pairs=0", [*FRESH, "data.task=mqar", "data.mqar_pairs=0"], "data.mqar_pairs=0"),
    case("train overrides", "data.mqar_pairs > seq_len/4", [*FRESH, "data.task=mqar", "data.mqar_pairs=16"],
         "data.seq_len=32", "data.mqar_pairs"),
    case("train overrides", "data.mqar_vocab too small", [*FRESH, "data.task=mqar", "data.mqar_pairs=4",
                                                          "data.mqar_vocab=8"], "data.mqar_vocab=8"),
    _override("model.preset", "nope", "preset='nope'", "miras presets"),
    _override("model.heads", "3", "heads=3", "divisor of d_model=16"),
    _override("model.head_dim", "0", "head_dim=0"),
    _override("model.chunk_size", "abc", "chunk_size='abc'"),
    _override("model.window", "0", "window=0"),
    _override("model.mlp_ratio", "-1", "mlp_ratio=-1.0"),
    _override("model.norm_eps", "-1", "model.norm_eps=-1.0", "> 0"),
    _override("model.max_context", "-1", "model.max_context=-1", ">= 0"),
    _override("model.checkpoint_chunks", "-1", "model.checkpoint_chunks=-1"),
    _override("model.persistent_tokens", "-1", "persistent_tokens=-1"),
    _override("model.lr_max", "0", "lr_max=0", "finite number > 0"),
    case("train overrides", "model.lr_max for a TTT preset", [*FRESH, "model.preset=ttt-linear", "model.lr_max=0.1"],
         "lr_max=0.1", "eta_base"),
    _override("model.layer_pattern", "5", "model.layer_pattern=5", "list of mixer names"),
    _override("model.layer_pattern", '"memory"', "model.layer_pattern='memory'"),
    _override("model.layer_pattern", "[]", "model.layer_pattern=[]"),
    _override("model.layer_pattern", '["lstm"]', "layer_pattern='lstm'"),
    _override("model.extra", "5", "model.extra=5"),
    _override("model.extra", '{"a":1}', "model.extra keys=['a']"),
    _override("model.tie_embeddings", "0", "model.tie_embeddings=0", "true or false"),
    _override("model.vocab_size", "300", "model.vocab_size=300", "the data sets it"),
    _override("model.d_model", "true", "model.d_model=True"),
    # unknown keys and malformed overrides
    _override("optim.learning_rate", "1", "optim keys=['learning_rate']", "'lr'"),
    _override("run.outdir", "x", "run keys=['outdir']", "'out_dir'"),
    _override("model.dmodel", "8", "model keys=['dmodel']"),
    _override("trainer.lr", "1", "config=['trainer']", "sections"),
    _override("optim.lr.x", "1", "optim.lr={'x': 1}"),
    case("train overrides", "no '='", [*FRESH, "optim.lr"], "override='optim.lr'", "section.key=value"),
    case("train overrides", "no section", [*FRESH, "lr=0.1"], "override='lr=0.1'", "section.key=value"),
    case("train overrides", "section only", [*FRESH, "optim=1"], "override='optim=1'"),
    case("train overrides", "empty key", [*FRESH, "optim.=1"], "optim keys=['']"),
    case("train overrides", "unknown size", ["train", "size=huge", "run.out_dir={new}"], "size='huge'", "1.3B"),
    case("train overrides", "size not a string", ["train", "size=5", "run.out_dir={new}"], "size=5"),
    case("train overrides", "d_model under a named size", ["train", "size=small", "model.d_model=128",
                                                           "run.out_dir={new}"], "model.d_model=128", "size="),
    # zero cadences
    *(_override(f"run.{k}", "0", f"run.{k}=0", ">= 1") for k in ("log_every", "eval_every", "save_every",
                                                                    "eval_batches")),
    _override("optim.grad_accum", "0", "optim.grad_accum=0"),
    _override("optim.batch_size", "0", "optim.batch_size=0"),
    # absurd sizes: refused by the pre-check before anything is allocated
    _override("model.d_model", "1e9", "model.d_model=1000000000", "run.max_params=2,000,000,000", subprocess=True),
    _override("model.n_layers", "1e6", "model.n_layers=1000000"),
    case("train overrides", "model.n_layers=4000 over run.max_params", [*FRESH, "model.d_model=256",
                                                                        "model.n_layers=4000"],
         "model.n_layers=4000", "run.max_params"),
    _override("model.n_layers", "1e18", "model.n_layers=1000000000000000000", "run.max_params"),
    _override("model.n_layers", "100000", "model.n_layers=100000", "1 to 4096"),
    _override("model.mlp_ratio", "1e30", "model.mlp_ratio=1e+30", "run.max_params"),
    _override("model.head_dim", "100000000", "model.head_dim=100000000", "run.max_params"),
    _override("model.gate_rank", "100000000", "model.gate_rank=100000000", "run.max_params"),
    case("train overrides", "model.persistent_tokens=1e9", [*FRESH, "model.preset=titans-mac",
                                                             "model.persistent_tokens=1e9"],
         "model.persistent_tokens=1000000000", "run.max_params"),
    case("train overrides", "d_model=40000 over run.max_params", [*FRESH, "model.d_model=40000", "model.heads=4"],
         "model.d_model=40000", "allowed at most run.max_params=2,000,000,000"),
    case("train overrides", "a small run.max_params", [*FRESH, "model.d_model=64", "run.max_params=1000"],
         "at most run.max_params=1,000"),
    case("train overrides", "size=1.3B with a huge bpe vocab", ["train", "size=1.3B", "data.tokenizer=bpe",
                                                                "data.bpe_vocab=4e9", "run.out_dir={new}"],
         "size='1.3B', data.bpe_vocab=4000000000", "run.max_params"),
    _override("optim.batch_size", "1e9", "optim.batch_size x data.seq_len='1000000000 x 32'"),
    _override("data.seq_len", "1e12", "data.seq_len", "1000000000000"),

    # config files
    case("config files", "a list", ["train", "--config", "{tmp}/c.json"], "c.json", "holds a list",
         setup="file list.json"),
    case("config files", "a number", ["train", "--config", "{tmp}/c.json"], "c.json", "holds a int",
         setup="file scalar.json"),
    case("config files", "a yaml string", ["train", "--config", "{tmp}/c.yaml"], "c.yaml", "holds a str",
         setup="file scalar.yaml"),
    case("config files", "latin-1 bytes", ["train", "--config", "{tmp}/c.toml"], "c.toml", "is not UTF-8",
         setup="file latin1.toml", subprocess=True),
    case("config files", "utf-16 bytes", ["train", "--config", "{tmp}/c.json"], "c.json", "UTF-8",
         setup="file utf16.json"),
    case("config files", "missing", ["train", "--config", "{tmp}/missing.toml"], "missing.toml",
         "an existing .json / .toml / .yaml file"),
    case("config files", "a folder", ["train", "--config", "{tmp}/c.json"], "c.json", "an existing",
         setup="file folder"),
    case("config files", "unknown suffix", ["train", "--config", "{tmp}/c.ini"], "c.ini", "'.ini'",
         setup="file bad suffix"),
    case("config files", "unknown section", ["train", "--config", "{tmp}/c.toml"], "config=['optimizer']",
         setup="file unknown section"),
    case("config files", "unknown key", ["train", "--config", "{tmp}/c.toml"], "optim keys=['learning_rate']",
         setup="file unknown key"),
    case("config files", "a section that is a number", ["train", "--config", "{tmp}/c.json"], "optim=5",
         setup="file section a number"),
    case("config files", "TOML syntax error", ["train", "--config", "{tmp}/c.toml"], "c.toml", "could not be parsed",
         setup="file bad toml"),
    case("config files", "JSON syntax error", ["train", "--config", "{tmp}/c.json"], "c.json", "could not be parsed",
         setup="file bad json"),
    case("config files", "a bad value in the file", ["train", "--config", "{tmp}/c.toml", "run.out_dir={new}"],
         "optim.steps=-5", setup="file bad value"),
    case("config files", "a size typo in the file", ["train", "--config", "{tmp}/c.toml", "run.out_dir={new}"],
         "model.d_model=1000000000", "run.max_params", setup="file model size typo"),
    case("config files", "--config with --resume, missing", ["train", "--resume", "--config", "{tmp}/no.toml"],
         "no.toml"),

    # resume
    case("resume", "no run folder", ["train", "--resume", "run.out_dir={tmp}/none"], "run.out_dir",
         "a `miras train` run folder"),
    case("resume", "no checkpoint", RESUME, "a run folder with a complete checkpoint", setup="no checkpoint"),
    case("resume", "config.json not JSON", RESUME, "config.json is unreadable", setup="config.json not json"),
    case("resume", "config.json a list", RESUME, "config.json", setup="config.json a list"),
    case("resume", "changed optim.lr", [*RESUME, "optim.lr=0.5"], "these fields differ: optim.lr", "optim.steps"),
    case("resume", "changed model.d_model", [*RESUME, "model.d_model=32"], "model.d_model (16 in config.json, 32"),
    case("resume", "changed size", [*RESUME, "size=small"], "size='small'"),
    case("resume", "changed data.corpus", [*RESUME, "data.corpus=shakespeare2"], "corpus"),
    case("resume", "changed seed", [*RESUME, "run.seed=1"], "run.seed (0 in config.json, 1 given)"),
    case("resume", "a bad cadence", [*RESUME, "run.save_every=0"], "run.save_every=0"),
    case("resume", "with --overwrite", [*RESUME, "--overwrite"], "--resume and --overwrite"),
    case("resume", "--overwrite with a missing corpus", ["train", "--overwrite", *TINY, "run.out_dir={run}",
                                                         "data.corpus={tmp}/none.txt"], "corpus=", "none.txt"),
    case("resume", "--overwrite with an empty corpus folder", ["train", "--overwrite", *TINY, "run.out_dir={run}",
                                                              "data.corpus={tmp}"], "corpus="),
    case("resume", "--overwrite with seq_len past the corpus", ["train", "--overwrite", *TINY, "run.out_dir={run}",
                                                               "data.seq_len=8000000"], "seq_len=8000000"),
    case("resume", "--overwrite with a bad value", ["train", "--overwrite", *TINY, "run.out_dir={run}",
                                                   "optim.lr=-1"], "optim.lr=-1.0"),
    case("resume", "fresh run into a used folder", ["train", *TINY, "run.out_dir={run}"],
         "allowed a new or empty folder for a fresh run"),
    *(case("resume", f"newest corrupt: {kind}", [*RESUME, "optim.steps=4"], FALLBACK, code=0, fallback=True,
           setup=f"newest: {kind}") for kind in CORRUPT),
    *(case("resume", f"all corrupt: {kind}", [*RESUME, "optim.steps=6"], "has no intact checkpoint",
           "step-000004", "step-000002", setup=f"all: {kind}", subprocess=kind == "truncated model")
      for kind in ("truncated model", "meta not json", "weights nan")),

    # eval / demo / plot / compare / bench / lm-eval
    case("eval", "negative length", ["eval", "{run}", "--lengths", "-5"], "lengths=[-5]", ">= 2"),
    case("eval", "zero length", ["eval", "{run}", "--lengths", "1024,0"], "lengths=[1024, 0]"),
    case("eval", "length not an integer", ["eval", "{run}", "--lengths", "1e12"], "--lengths", "'1e12'",
         "comma-separated integers"),
    case("eval", "empty lengths", ["eval", "{run}", "--lengths", ""], "--lengths", "''"),
    case("eval", "absurd length", ["eval", "{run}", "--lengths", "100000000000"], "windows * length=400000000000"),
    case("eval", "zero depths", ["eval", "{run}", "--depths", "0"], "depths=0"),
    case("eval", "negative needles", ["eval", "{run}", "--needles", "-2"], "needles=-2"),
    case("eval", "zero windows", ["eval", "{run}", "--windows", "0"], "windows=0"),
    case("eval", "missing run folder", ["eval", "{tmp}/none"], "none", "config.json"),
    case("eval", "a file, not a folder", ["eval", "{run}/metrics.jsonl"], "metrics.jsonl"),
    case("eval", "missing tokenizer", ["eval", "{run}", "--tokenizer", "{tmp}/none", "--lengths", "64"],
         "tokenizer=", "none"),
    case("eval", "newest checkpoint corrupt", ["eval", "{run}", "--lengths", "400", "--depths", "1", "--needles",
                                               "1", "--windows", "1"], FALLBACK, code=0, fallback=True,
         setup="newest: truncated model"),
    case("eval", "length too short for a needle", ["eval", "{run}", "--lengths", "64", "--depths", "1", "--needles",
                                                   "1", "--windows", "1"], "context_tokens=64", "template + needle"),
    case("eval", "all checkpoints corrupt", ["eval", "{run}", "--lengths", "64"], "has no intact checkpoint",
         setup="all: truncated model"),
    case("demo", "negative seqlen", ["demo", "--seqlen", "-3"], "seqlen=-3"),
    case("demo", "zero heads", ["demo", "--heads", "0"], "heads=0"),
    case("demo", "zero d_head", ["demo", "--d-head", "0"], "d_head=0"),
    case("demo", "seqlen not a number", ["demo", "--seqlen", "x"], "--seqlen", "'x'"),
    case("demo", "absurd seqlen", ["demo", "--seqlen", "100000000000"], "seqlen", "100000000000", "at most",
         subprocess=True),
    case("demo", "absurd d_head", ["demo", "--d-head", "100000"], "d_head", "100000"),
    case("demo", "absurd heads", ["demo", "--heads", "100000000"], "heads", "100000000"),
    case("plot", "missing run folder", ["plot", "{tmp}/none"], "metrics.jsonl"),
    case("plot", "--out in a missing folder", ["plot", "{run}", "--out", "{tmp}/no/dir/x.png"], "--out=",
         "existing folder"),
    case("plot", "--out not an image", ["plot", "{run}", "--out", "{tmp}/x.txt"], "--out=", ".png"),
    case("plot", "a metrics row without its values", ["plot", "{run}", "--out", "{tmp}/x.png"], "metrics.jsonl row",
         "elapsed_s", setup="metrics row without loss"),
    case("compare", "unknown preset", ["compare", "--presets", "nope", "--out-dir", "{new}"], "preset='nope'"),
    case("compare", "zero steps", ["compare", "--steps", "0", "--out-dir", "{new}"], "steps=0"),
    case("compare", "negative steps", ["compare", "--steps", "-1", "--out-dir", "{new}"], "steps=-1"),
    case("compare", "unknown flag", ["compare", "--nope", "1"], "unrecognized arguments: --nope"),
    case("compare", "zero seq-len", ["compare", "--seq-len", "0", "--out-dir", "{new}"], "--seq-len=0"),
    case("compare", "eval lengths shorter than the pairs", ["compare", "--eval-lengths", "8", "--out-dir",
                                                            "{new}"], "--eval-lengths=[8]", ">= 4 x --pairs"),
    case("compare", "absurd d-model", ["compare", "--d-model", "1000000000", "--out-dir", "{new}"],
         "model.d_model=1000000000", "run.max_params"),
    case("compare", "absurd n-layers", ["compare", "--n-layers", "1000000000", "--out-dir", "{new}"],
         "--n-layers=1000000000"),
    case("compare", "empty presets", ["compare", "--presets", "", "--out-dir", "{new}"], "preset=''"),
    case("bench", "unknown benchmark", ["bench", "nope"], "invalid choice: 'nope'"),
    case("bench", "unknown ops flag", ["bench", "ops", "--nope"], "unrecognized arguments: --nope"),
    case("bench", "unknown decode preset", ["bench", "decode", "--presets", "nope"], "invalid choice: 'nope'"),
    case("bench", "decode zero steps", ["bench", "decode", "--steps", "0", "--out", "{tmp}/b.json"], "--steps",
         ">= 1"),
    case("bench", "decode negative context", ["bench", "decode", "--contexts", "-1", "--out", "{tmp}/b.json"],
         "--contexts", "'-1'"),
    case("bench", "ops negative seqlen", ["bench", "ops", "--seqlens", "-1", "--ref-seqlen", "8",
                                          "--out", "{tmp}/b.json"], "--seqlens"),
    case("lm-eval", "unknown task", ["lm-eval", "{run}", "--tasks", "nope_task"], "tasks='nope_task'"),
    case("lm-eval", "empty tasks", ["lm-eval", "{run}", "--tasks", ""], "tasks=''"),
    case("lm-eval", "missing run folder", ["lm-eval", "{tmp}/none", "--tasks", "miras_passkey"], "none",
         "does not exist"),
    case("lm-eval", "negative limit", ["lm-eval", "{run}", "--tasks", "miras_passkey", "--limit", "-1"], "--limit",
         "'-1'"),
    case("lm-eval", "zero limit", ["lm-eval", "{run}", "--tasks", "miras_passkey", "--limit", "0"], "--limit"),
    case("lm-eval", "zero batch size", ["lm-eval", "{run}", "--tasks", "miras_passkey", "--batch-size", "0"],
         "batch_size=0"),
    case("lm-eval", "zero max length", ["lm-eval", "{run}", "--tasks", "miras_passkey", "--max-length", "0"],
         "max_length=0"),
    case("lm-eval", "negative few-shot", ["lm-eval", "{run}", "--tasks", "miras_passkey", "--num-fewshot", "-1"],
         "--num-fewshot", "'-1'"),
    case("lm-eval", "unknown device", ["lm-eval", "{run}", "--tasks", "miras_passkey", "--device", "tpu"],
         "--device", "'tpu'"),
    case("lm-eval", "no --tasks", ["lm-eval", "{run}"], "--tasks"),

    # abbreviations (argparse would take --resum for --resume) and unknown commands
    case("abbreviations", "train --resum", ["train", "--resum", "run.out_dir={run}"], "unrecognized arguments: --resum",
         subprocess=True),
    case("abbreviations", "train --over", ["train", "--over", "run.out_dir={run}"], "unrecognized arguments: --over"),
    case("abbreviations", "train --conf", ["train", "--conf", "{tmp}/c.toml"], "unrecognized arguments: --conf"),
    case("abbreviations", "eval --len", ["eval", "{run}", "--len", "64"], "unrecognized arguments: --len"),
    case("abbreviations", "demo --seq", ["demo", "--seq", "8"], "unrecognized arguments: --seq"),
    case("abbreviations", "lm-eval --task", ["lm-eval", "{run}", "--task", "x"], "--task"),
    case("abbreviations", "compare --step", ["compare", "--step", "1"], "unrecognized arguments: --step"),
    case("abbreviations", "plot --o", ["plot", "{run}", "--o", "{tmp}/x.png"], "unrecognized arguments: --o"),
    case("abbreviations", "bench decode --step", ["bench", "decode", "--step", "0", "--out", "{tmp}/b.json"],
         "unrecognized arguments: --step"),
    case("abbreviations", "bench ops --seqlen", ["bench", "ops", "--seqlen", "0", "--ref-seqlen", "8",
                                                 "--out", "{tmp}/b.json"], "unrecognized arguments: --seqlen"),
    case("abbreviations", "a command abbreviation", ["tra"], "invalid choice: 'tra'"),
    case("abbreviations", "no command", [], "required: command"),
]


# -- running a case -------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    code: object                  # the exit code, or "exception" when one escaped main()
    out: str
    err: str
    changed: list = field(default_factory=list)   # what changed in a folder that had to stay as it was

    def problems(self, c: Case) -> list[str]:
        """Why this outcome is not what the case expects ([] = a clear error, or a clean fallback)."""
        found = []
        if self.code == "exception" or "Traceback" in self.err:
            found.append(f"traceback: {self.err.strip().splitlines()[-1] if self.err.strip() else ''}")
        elif self.code != c.code:
            found.append(f"exit code {self.code}, expected {c.code}")
        paragraphs = [p for p in self.err.strip().split("\n\n") if p.strip()]
        if c.code != 0 and len(paragraphs) != 1:
            found.append(f"stderr has {len(paragraphs)} paragraphs, expected 1")
        found += [f"stderr does not name {s!r}" for s in c.expect if s not in self.err]
        found += [f"data lost: {what}" for what in self.changed]
        return found

    def verdict(self, c: Case) -> str:
        """clear | traceback | silent | data lost | unclear (for the benchmark's table)."""
        problems = self.problems(c)
        if not problems:
            return "clear"
        if problems[0].startswith("traceback"):
            return "traceback"
        if c.code != 0 and self.code == 0:
            return "silent"
        if any(p.startswith("data lost") for p in problems):
            return "data lost"
        return "unclear"


def snapshot(folder: Path) -> dict:
    """Relative name -> sha256 of every file (and "<dir>" for every folder) under folder; {} when it is missing."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        found[name] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _diff(before: dict, after: dict, label: str) -> list[str]:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return [f"{label}: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}"] if changed else []


def fill(argv, run: Path, new: Path, tmp: Path) -> list[str]:
    return [a.replace("{run}", str(run)).replace("{new}", str(new)).replace("{tmp}", str(tmp)) for a in argv]


def in_process(argv: list[str]) -> tuple[object, str, str]:
    """miras.cli.main(argv) with stdout / stderr captured; an exception that escapes is reported as one."""
    from miras.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except Exception:  # noqa: BLE001 - what this table exists to find
            code = "exception"
            traceback.print_exc(file=err)
    return code, out.getvalue(), err.getvalue()


def as_process(argv: list[str], cwd: Path) -> tuple[object, str, str]:
    """The `miras` console script of this interpreter's environment, as a user would run it."""
    script = Path(sys.executable).with_name("miras")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "miras.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    return done.returncode, done.stdout, done.stderr


def prepare(c: Case, tmp: Path, finished: Path) -> tuple[Path, Path]:
    """The case's folders under tmp: run (a copy of finished, when the case uses {run}), new (not created)."""
    run, new = tmp / "run", tmp / "new"
    if any("{run}" in a for a in c.argv):
        shutil.copytree(finished, run)
    if c.setup:
        SETUPS[c.setup](run if run.exists() else tmp)
    return run, new


def run_case(c: Case, tmp: Path, finished: Path, call=None) -> Outcome:
    """Runs one case in tmp (its own empty folder) with call(argv) -> (code, out, err) (in_process by default)."""
    run, new = prepare(c, tmp, finished)
    older = run / "step-000002"
    before = {"run": snapshot(run), "new": snapshot(new), "older": snapshot(older)}
    code, out, err = (call or in_process)(fill(c.argv, run, new, tmp))
    if c.fallback:      # a resumed run writes; the older checkpoint it fell back to must be untouched
        changed = _diff(before["older"], snapshot(older), "the intact checkpoint step-000002")
    else:
        changed = _diff(before["run"], snapshot(run), "run folder") if run.exists() or before["run"] else []
        after_new = snapshot(new)
        changed += [f"a refused fresh run wrote {', '.join(sorted(after_new)[:5])}"] if after_new else []
    return Outcome(code, out, err, changed)


# -- --long: more cases, generated with a fixed seed ---------------------------------------------------------------

NUMERIC_KEYS = ["optim.lr", "optim.steps", "optim.batch_size", "optim.grad_accum", "optim.warmup_steps",
                "optim.weight_decay", "optim.clip", "optim.min_lr_ratio", "run.seed", "run.log_every",
                "run.eval_every", "run.save_every", "run.eval_batches", "run.keep_last", "run.threads",
                "run.max_minutes", "data.seq_len", "data.val_fraction", "model.d_model", "model.n_layers",
                "model.heads", "model.head_dim", "model.window", "model.gate_rank", "model.d_state",
                "model.segment", "model.chunk_size", "model.mlp_ratio", "model.norm_eps", "model.max_context",
                "model.persistent_tokens", "model.checkpoint_chunks", "model.lr_max"]
BAD_VALUES = ["-1", "-1e9", "1e30", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", '"12"', "twelve", "[1]",
              "{}", "null", "true", "0.5", "1e-300"]


def long_cases(seed: int = 0, count: int = 300) -> list[Case]:
    """count random (key, bad value) overrides of a fresh 1-step tiny run, in a seeded order; each must be refused
    naming its key. Values a key accepts (VALID: a fraction for a float field, 1e30 for a cadence, ...) are left
    out."""
    import random
    rng = random.Random(seed)
    pairs = sorted((k, v) for k in NUMERIC_KEYS for v in BAD_VALUES if v not in VALID.get(k, ()))
    rng.shuffle(pairs)
    return [case("random overrides (--long)", f"{key}={value}", [*FRESH, "optim.steps=1", f"{key}={value}"],
                 key.split(".", 1)[1]) for key, value in pairs[:count]]


_FRACTION = ("0.5", "1e-300")
_HUGE_OK = ("1e30",)   # a finite number the key takes as it is (a cadence never reached, an unused model field...)
VALID = {   # values some keys accept: not bad inputs
    **{k: _FRACTION for k in ("optim.min_lr_ratio", "data.val_fraction", "model.mlp_ratio")},
    "optim.lr": _FRACTION + _HUGE_OK,   # 1e30: a finite number > 0, taken as given (no upper bound)
    **{k: _FRACTION + _HUGE_OK for k in ("optim.weight_decay", "optim.clip", "run.max_minutes", "model.norm_eps")},
    **{k: _HUGE_OK for k in ("optim.steps", "optim.warmup_steps", "run.log_every", "run.eval_every",
                             "run.save_every", "run.keep_last", "run.eval_batches", "model.window", "model.segment",
                             "model.max_context", "model.checkpoint_chunks", "model.chunk_size", "model.d_state",
                             "model.persistent_tokens")},
    "optim.grad_accum": _HUGE_OK,   # 1e30 micro-batches per step: a (very) long run, not a bad value
    "model.head_dim": ("null",),
    "model.chunk_size": ("null",) + _HUGE_OK,
    "model.lr_max": ("null",) + _FRACTION + _HUGE_OK,
}
