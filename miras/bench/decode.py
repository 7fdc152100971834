"""`miras bench decode`: prefill speed, per-token decode latency and state memory of every preset's language
model at long contexts, on CPU, in one process.

Per preset, a MirasLM of d_model 256, 4 heads, 2 layers, vocab 256 (the preset's own block), float32, batch 1,
eval mode under torch.no_grad, random token ids:
  - prefill: the context is reached in pieces of at most `--prefill-chunk` tokens (default 2048) with the state
    carried (for the transformer, its KV cache), growing from one context to the next (1K, then on to 8K, then
    to 32K); prefill tok/s at L = L / the seconds of all the pieces from token 0 to L;
  - decode: from the state at L (a copy, so that the prefill goes on from exactly L), `--warmup` untimed then
    `--steps` timed single-token forward calls, each fed the greedy (argmax) token of the previous one; the
    median seconds per token is reported (the mean is in the JSON: a chunked memory does its chunk update on
    one token in chunk_size);
  - state: total bytes of every tensor of the state tree at L (`flatten_tensors`, logical size numel x
    element size, Python numbers as 0-dim tensors): constant for recurrent presets, the KV cache grows with L;
  - peak RSS during the context's prefill + decode minus the RSS before it (sampled every 10 ms);
  - dispatcher calls per token (untimed, after the timings at the smallest context): the ATen calls of
    `CALL_STEPS` decode steps over their number, views included, split by the miras package that issued each
    (`ops` and `space`: the memory op; `layers`: the mixer around it; `models`: blocks, norms, MLP, head). On
    CPU at this size a call costs microseconds whatever its tensors, so this count explains most of the latency.
The decode ratio divides the median ms/token at the largest measured context by that at the smallest; for a
recurrent preset (no full-attention layer) it should stay <= 1.1 (the target) when the range spans 1K..32K.
Per-preset time cap: once a preset has run `--max-seconds`, or its next context's prefill would take it past
the cap at the last piece's per-token rate, the larger contexts are not run ("skipped (> cap)"); a prefill
in progress that crosses the cap is abandoned and skipped too. The smallest context is always measured.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..models.config import MirasConfig
from ..models.lm import MirasLM
from ..models.state_tree import flatten_tensors, map_tensors
from ..space import get_preset, list_presets
from .ops import PeakRSS, _log, _num, _release_memory, machine

CONTEXTS = (1024, 8192, 32768)
QUICK_CONTEXTS = (64, 256)
QUICK_PRESETS = ("gated-deltanet", "transformer", "titans-lmm")
D_MODEL, HEADS, N_LAYERS, VOCAB, BATCH = 256, 4, 2, 256, 1
DTYPE = torch.float32
SKIPPED = "skipped (> cap)"
TARGET_RATIO = 1.1
RSS_INTERVAL = 0.01
CALL_STEPS = 16
_PACKAGE = str(Path(__file__).resolve().parents[1]) + os.sep
_PARTS = {"ops": "op", "space": "op", "layers": "layer", "models": "block"}


def build_model(preset: str, seed: int = 0) -> MirasLM:
    """The benchmark's model of `preset` (module docstring), in eval mode."""
    torch.manual_seed(seed)
    config = MirasConfig(preset=preset, d_model=D_MODEL, heads=HEADS, n_layers=N_LAYERS, vocab_size=VOCAB)
    return MirasLM(config).to(DTYPE).eval()


def is_recurrent(model: MirasLM) -> bool:
    """True when no layer is full attention, i.e. the state has a size independent of the context."""
    return "attention" not in model.config.pattern


def state_bytes(states) -> int:
    """Logical bytes of every tensor (and Python number) of a state tree."""
    return sum(t.numel() * t.element_size() for t in flatten_tensors(states).values())


def _clone(states):
    return map_tensors(lambda t: t.clone(), states)


class _CapExceeded(Exception):
    pass


def prefill(model: MirasLM, ids: torch.Tensor, states, piece: int, deadline: float | None = None):
    """Feed ids [B, n] in pieces of at most `piece` tokens, carrying the states. Returns (states, seconds,
    seconds of the last piece, length of the last piece). Raises _CapExceeded after a piece ending past
    `deadline` (a perf_counter time) with more pieces to go."""
    total, last_s, last_n = 0.0, 0.0, 0
    n = ids.shape[1]
    for start in range(0, n, piece):
        chunk = ids[:, start:start + piece]
        t0 = time.perf_counter()
        _, states = model(chunk, states)
        last_s, last_n = time.perf_counter() - t0, chunk.shape[1]
        total += last_s
        if deadline is not None and start + piece < n and time.perf_counter() > deadline:
            raise _CapExceeded
    return states, total, last_s, last_n


def decode(model: MirasLM, states, first_token: torch.Tensor, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` timed greedy single-token steps after `warmup` untimed ones."""
    token, times = first_token, []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        logits, states = model(token, states)
        token = logits[:, -1:].argmax(-1)
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
    return times


class _CallCounter(TorchDispatchMode):
    """Counts the ATen calls dispatched inside it by part (_PARTS: the miras package of the innermost miras frame
    that issued the call; "other" when none did)."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame, part = sys._getframe(1), "other"
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(_PACKAGE):
                part = _PARTS.get(name[len(_PACKAGE):].split(os.sep)[0], "other")
                break
            frame = frame.f_back
        self.calls[part] += 1
        return func(*args, **(kwargs or {}))


def dispatch_calls(model: MirasLM, states, first_token: torch.Tensor, steps: int = CALL_STEPS) -> dict:
    """ATen calls per greedy decode step from `states` (mean over `steps`), in total and by part (_CallCounter)."""
    counter = _CallCounter()
    with counter:
        decode(model, states, first_token, steps, 0)
    calls = {part: counter.calls[part] / steps for part in ("op", "layer", "block", "other")}
    return {"total": sum(calls.values()), **calls}


def _skipped(L: int) -> dict:
    return {"context": L, "status": SKIPPED}


def bench_preset(name: str, contexts: list[int], steps: int, warmup: int, piece: int, max_seconds: float
                 ) -> dict:
    """One preset: a record per context (measured or skipped) and the decode ratio."""
    start = time.perf_counter()
    deadline = start + max_seconds
    model = build_model(name)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, contexts[-1] + 1), generator=gen)
    records, states, done, calls = [], None, 0, None
    cum_prefill, last_rate, skip = 0.0, None, False
    with torch.no_grad():
        _, warm = model(ids[:, :min(piece, contexts[0])])          # first-call overheads, not timed
        decode(model, warm, ids[:, :1], 2, 0)
        del warm
        for idx, L in enumerate(contexts):
            if not skip and idx > 0:
                projected = time.perf_counter() + last_rate * (L - done)
                skip = time.perf_counter() > deadline or projected > deadline
            if skip:
                records.append(_skipped(L))
                continue
            try:
                with PeakRSS(RSS_INTERVAL) as mem:
                    states, seconds, last_s, last_n = prefill(model, ids[:, done:L], states, piece,
                                                              None if idx == 0 else deadline)
                    cum_prefill += seconds
                    last_rate, done = last_s / last_n, L
                    nbytes = state_bytes(states)
                    times = decode(model, _clone(states), ids[:, L:L + 1], steps, warmup)
                    if idx == 0:
                        calls = dispatch_calls(model, _clone(states), ids[:, L:L + 1])
            except _CapExceeded:
                skip = True
                states = None
                records.append(_skipped(L))
                continue
            rec = {"context": L, "status": "ok", "prefill_s": cum_prefill, "prefill_tok_s": BATCH * L / cum_prefill,
                   "decode_ms": 1e3 * statistics.median(times), "decode_ms_mean": 1e3 * statistics.mean(times),
                   "decode_ms_min": 1e3 * min(times), "state_bytes": nbytes, "state_mib": nbytes / 2 ** 20,
                   "peak_rss_mib": mem.mib}
            records.append(rec)
            _log(f"{name:16s} L={L}: prefill {rec['prefill_tok_s']:,.0f} tok/s, decode {rec['decode_ms']:.2f} ms/tok, "
                 f"state {rec['state_mib']:.2f} MiB ({time.perf_counter() - start:.0f} s)")
    del states
    _release_memory()
    ok = [r for r in records if r["status"] == "ok"]
    ratio = ok[-1]["decode_ms"] / ok[0]["decode_ms"] if len(ok) > 1 else None
    recurrent = is_recurrent(model)
    return {"preset": name, "block": get_preset(name).block, "pattern": model.config.pattern, "recurrent": recurrent,
            "params": model.num_parameters(), "contexts": records, "calls_per_token": calls, "decode_ratio": ratio,
            "decode_ratio_contexts": [ok[0]["context"], ok[-1]["context"]] if len(ok) > 1 else None,
            "meets_target": (ratio <= TARGET_RATIO) if recurrent and ratio is not None else None,
            "seconds": time.perf_counter() - start}


def run(presets: list[str] | None = None, contexts=CONTEXTS, steps: int = 32, warmup: int = 4,
        prefill_chunk: int = 2048, max_seconds: float = 120.0, threads: int = 2) -> dict:
    """The whole benchmark: {"config", "machine", "presets"}; see the module docstring."""
    previous, load_start = torch.get_num_threads(), os.getloadavg()
    contexts = sorted(set(contexts))
    torch.set_num_threads(threads)
    try:
        results = [bench_preset(name, contexts, steps, warmup, prefill_chunk, max_seconds)
                   for name in presets or list_presets()]
    finally:
        torch.set_num_threads(previous)
    config = {"d_model": D_MODEL, "heads": HEADS, "n_layers": N_LAYERS, "vocab_size": VOCAB, "batch": BATCH,
              "dtype": str(DTYPE), "threads": threads, "contexts": contexts, "steps": steps, "warmup": warmup,
              "prefill_chunk": prefill_chunk, "max_seconds": max_seconds, "target_ratio": TARGET_RATIO}
    load = {"loadavg_start": load_start, "loadavg_end": os.getloadavg()}  # other processes skew the timings
    return {"config": config, "machine": {**machine(), **load}, "presets": results}


def _ctx(L: int) -> str:
    return f"{L // 1024}K" if L % 1024 == 0 else str(L)


def format_table(result: dict) -> str:
    """Markdown table, one row per preset, with the notes needed to read it."""
    cfg, mach = result["config"], result["machine"]
    contexts = cfg["contexts"]
    heads = ([f"prefill tok/s {_ctx(L)}" for L in contexts] + [f"decode ms/tok {_ctx(L)}" for L in contexts]
             + [f"decode {_ctx(contexts[-1])}/{_ctx(contexts[0])}"] + [f"state MiB {_ctx(L)}" for L in contexts]
             + ["ATen calls/token (op / layer / block)"])
    lines = ["| preset | state | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(heads)]
    for p in result["presets"]:
        by = {r["context"]: r for r in p["contexts"]}

        def cell(L, fmt):
            r = by[L]
            return fmt(r) if r["status"] == "ok" else "skipped"

        ratio = "-" if p["decode_ratio"] is None else f"{p['decode_ratio']:.2f}"
        if p["decode_ratio"] is not None and p["decode_ratio_contexts"] != [contexts[0], contexts[-1]]:
            ratio += f" ({_ctx(p['decode_ratio_contexts'][1])}/{_ctx(p['decode_ratio_contexts'][0])})"
        if p["meets_target"] is False:
            ratio += " !"
        cells = ([cell(L, lambda r: _num(r["prefill_tok_s"])) for L in contexts]
                 + [cell(L, lambda r: f"{r['decode_ms']:.2f}") for L in contexts] + [ratio]
                 + [cell(L, lambda r: f"{r['state_mib']:.2f}") for L in contexts]
                 + [_calls(p["calls_per_token"])])
        kind = "fixed" if p["recurrent"] else "KV cache"
        lines.append(f"| {p['preset']} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", f"MirasLM d_model {cfg['d_model']}, {cfg['heads']} heads, {cfg['n_layers']} layers, vocab "
              f"{cfg['vocab_size']}, {cfg['dtype']}, batch {cfg['batch']}, {cfg['threads']} threads, no_grad.",
              f"Prefill: the context in pieces of <= {cfg['prefill_chunk']} tokens with the state carried; tok/s = "
              f"context / seconds of all its pieces.",
              f"Decode: median of {cfg['steps']} greedy single-token steps after {cfg['warmup']} warm-up steps, from "
              f"the state at the context (the JSON also has the mean, which includes chunk updates).",
              f"decode {_ctx(contexts[-1])}/{_ctx(contexts[0])}: decode ms/token at the largest measured context over "
              f"the smallest (measured pair in brackets when not the full range); target <= {cfg['target_ratio']} for "
              f"every fixed-state preset, '!' marks one above it.",
              "State MiB: every tensor of the state tree at the context (flatten_tensors); 'fixed' = no "
              "full-attention layer (sliding-window KV caches stop growing at the window).",
              f"ATen calls/token: dispatcher calls (views included) per decode step from the state at "
              f"{_ctx(contexts[0])}, mean of {CALL_STEPS} steps, by the miras package that issued them: the memory "
              f"op (ops, space), the mixer layer around it (layers), the blocks, norms, MLPs and head (models).",
              f"skipped: the preset's {cfg['max_seconds']:g} s cap was reached, or would be by this context's prefill.",
              f"Load average (1 min) at start / end: {mach['loadavg_start'][0]:.1f} / {mach['loadavg_end'][0]:.1f} "
              f"on {mach['cores']} cores (a load above the thread count means other processes shared the CPU)."]
    return "\n".join(lines)


def _calls(c: dict | None) -> str:
    return "-" if c is None else f"{c['total']:.0f} ({c['op']:.0f} / {c['layer']:.0f} / {c['block']:.0f})"


def _ints(s: str) -> list[int]:
    values = [int(x) for x in s.replace(",", " ").split()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miras bench decode", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `miras bench decode` (also the `miras bench decode` subcommand's)."""
    p.add_argument("--presets", nargs="+", choices=list_presets(), metavar="NAME",
                   help=f"default: all {len(list_presets())} presets ({list(QUICK_PRESETS)} with --quick)")
    p.add_argument("--contexts", type=_ints, help=f"comma-separated context lengths (default "
                   f"{','.join(map(str, CONTEXTS))}; {','.join(map(str, QUICK_CONTEXTS))} with --quick)")
    p.add_argument("--steps", type=int,
                   help="timed decode steps per context, median reported (default 32, 4 with --quick)")
    p.add_argument("--warmup", type=int, default=4, help="untimed decode steps before them (default 4)")
    p.add_argument("--prefill-chunk", type=int, default=2048, help="prefill piece length (default 2048)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="per-preset time cap (default 120)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"contexts {list(QUICK_CONTEXTS)}, 4 steps, presets {list(QUICK_PRESETS)} (for tests)")
    p.add_argument("--out", default="runs/bench_decode.json", help="JSON results (folder created)")


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """p.error (exit 2, one line) for a flag out of range."""
    for name in ("steps", "warmup", "prefill_chunk", "threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}, got {value}")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    return check(p, p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    return run_args(parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    presets = args.presets or (list(QUICK_PRESETS) if args.quick else None)
    contexts = args.contexts or (QUICK_CONTEXTS if args.quick else CONTEXTS)
    steps = args.steps or (4 if args.quick else 32)
    result = run(presets, contexts, steps, args.warmup, args.prefill_chunk, args.max_seconds, args.threads)
    result["table"] = format_table(result)
    print(result["table"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
