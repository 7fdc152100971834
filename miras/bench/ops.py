"""`miras bench ops`: speed, speedup over the recurrent reference, share of the matmul roofline and peak
memory of every distinct memory op, on CPU, in one process.

Per preset with a distinct memory spec (block variants such as titans-mac or moneta-h share their base
spec and are skipped), batch 1, 4 heads of dim 64, float32:
  - the recurrent reference (mode="reference") at one length (default 512): it is O(T) token by token,
    so the speedups at every T divide by its per-token rate measured there;
  - the fast path (mode="auto", `select_op`) at every T: forward under no_grad and forward + backward of
    (y * fixed random weights).sum() to q, k, v, the gates and the initial state, median of the repeats
    after one warm-up;
  - peak RSS above the RSS before the cell, sampled every 2 ms by a background thread.
A fast path whose forward + backward at T took longer than the time cap, or would at the next T when
scaled linearly in T, is not run at larger T ("skipped (> cap)"); likewise for its peak memory against
the memory cap ("skipped (> memory cap)"). Results are written after every preset, so a killed run keeps them.

FLOP model (forward, matrix-multiply FLOPs only; a [m, k] @ [k, n] product is 2mkn; per head and per
chunk of c tokens, N = ceil(T / c) chunks, K = d_k, V = d_v):
  attention  causal Q K^T and P V: 2 * 2 T^2 d / 2.
  ssd        chunk_gla, c = 64: scores Q K^T (2c^2 K), scores V (2c^2 V), the chunk state K^T V (2cKV),
             the state-to-output Q S (2cKV).
  delta      chunk_gated_delta_rule, c = 64: K K^T (2c^2 K), the unit-triangular solve T = (I + A)^-1
             (c^3), w = T (beta k) (2c^2 K), u = T (beta v) (2c^2 V), Q K^T (2c^2 K), and in the state
             loop u - w S, Q S, S += K^T d (3 * 2cKV) and attn d (2c^2 V).
  minibatch  chunk_minibatch, c = spec.chunk_size, per memory layer of shape (o, i): the inner forward
             at the anchor (2coi) and the inner backward (2coi, all layers but the first); reads by the
             dual form (identity boundary): A0 h [and S0 h] (2coi each), the [c, c] scores h a^T (2c^2 i)
             and scores d (2c^2 o); with a boundary applied at chunk ends (Moneta, Memora, elastic net) the
             same dual-form read, plus base h (2coi) for an in-chunk map with a base (Memora, elastic net)
             and the chunk's last token read with the boundary-mapped weights (2oi); with
             boundary_at="every-token" by per-token weights: forming A_t = sum_r C[t, r] d_r a_r^T
             (2c^2 oi) and W_t h_t (2coi); the state at the chunk end (2coi, twice with momentum); with
             momentum the [c, c] coefficient product (2c^3).
Elementwise work (decays, exp, activations, norms, the Lq / softmax boundaries) is not counted.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..ops.dispatch import EXACT_CHUNK, memory_op, select_op
from ..ops.inputs import random_inputs
from ..space import MirasSpec, get_preset, list_presets
from ..space.retention import LqNormalization, uses_frame

SEQLENS = (512, 2048, 8192, 16384)
QUICK_SEQLENS = (256, 512)
BATCH, HEADS, D_HEAD = 1, 4, 64
DTYPE = torch.float32
SKIPPED = "skipped (> cap)"
SKIPPED_MEMORY = "skipped (> memory cap)"
PAGE = os.sysconf("SC_PAGE_SIZE")


def distinct_presets() -> list[str]:
    """The presets, in table order, whose memory spec no earlier preset has (drops block variants)."""
    seen, names = set(), []
    for name in list_presets():
        spec = get_preset(name).spec
        if spec not in seen:
            seen.add(spec)
            names.append(name)
    return names


def flops_fwd(spec: MirasSpec, path: str, T: int, heads: int = HEADS, d_k: int = D_HEAD, d_v: int = D_HEAD
              ) -> float | None:
    """Matrix-multiply FLOPs of one forward of `path` (module docstring); None for the reference."""
    if path == "attention":
        return 2.0 * T * T * d_k * heads
    if path == "ssd":
        c = EXACT_CHUNK
        per_chunk = 2 * c * c * (d_k + d_v) + 4 * c * d_k * d_v
    elif path == "delta":
        c = EXACT_CHUNK
        per_chunk = c ** 3 + 6 * c * c * d_k + 4 * c * c * d_v + 6 * c * d_k * d_v
    elif path == "minibatch":
        c = spec.chunk_size
        per_chunk = _minibatch_chunk_flops(spec, c, d_k, d_v)
    else:
        return None
    return float(math.ceil(T / c) * per_chunk * heads)


def _minibatch_chunk_flops(spec: MirasSpec, c: int, d_k: int, d_v: int) -> int:
    """One chunk of `chunk_minibatch`, one head (module docstring)."""
    mom = int(spec.algorithm.momentum)
    total = 2 * c ** 3 * mom
    for idx, (o, i) in enumerate(spec.memory.shapes(d_k, d_v).values()):
        oi = o * i
        total += 2 * c * oi * (1 + int(idx > 0))                                    # inner forward / backward
        if spec.retention.identity_boundary or uses_frame(spec.retention):
            total += 2 * c * oi * (1 + mom) + 2 * c * c * (i + o)                   # dual-form read
            if uses_frame(spec.retention):
                total += 2 * oi + 2 * c * oi * int(not isinstance(spec.retention, LqNormalization))
        else:
            total += 2 * c * c * oi + 2 * c * oi                                    # per-token weights read
        total += 2 * c * oi * (1 + mom)                                             # state at the chunk end
    return total


def matmul_roofline(n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a dense fp32 [n, n] @ [n, n] torch.matmul, median of `repeats` after a warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def _release_memory() -> None:
    """Hand freed heap back to the OS, so that the RSS before a cell does not hide the cell's allocations."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: a thread samples the process RSS every `interval` s; `.mib` = peak minus entry RSS."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> "PeakRSS":
        _release_memory()
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = (max(self.peak, self.rss()) - self.base) / 2 ** 20


class OtherCPU:
    """Context manager: `.cores` = CPU cores kept busy by other processes during the block, on average
    (system busy time from /proc/stat minus this process's CPU time, over the wall time): the timings of
    a cell with other_cores well above 0 were slowed by contention."""

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system

    def __enter__(self) -> "OtherCPU":
        self._start = (time.perf_counter(), self._busy_s(), self._own_s())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = (now - then for now, then in zip((time.perf_counter(), self._busy_s(), self._own_s()),
                                                           self._start))
        self.cores = max(busy - own, 0.0) / wall


@dataclass
class Timing:
    fwd_s: float
    fwd_bwd_s: float
    peak_mib: float
    other_cores: float


def _inputs(spec: MirasSpec, T: int):
    """(q, k, v, gates, state) with grad-requiring leaves, and the fixed loss weights of y's shape."""
    inputs = random_inputs(spec, BATCH, T, HEADS, D_HEAD, D_HEAD, DTYPE, seed=0, requires_grad=True)
    weights = torch.randn(BATCH, T, HEADS, D_HEAD, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    return inputs, weights


def _fwd(spec: MirasSpec, inputs, mode: str) -> float:
    q, k, v, gates, state = inputs
    start = time.perf_counter()
    with torch.no_grad():
        memory_op(spec, q, k, v, gates, state, mode=mode)
    return time.perf_counter() - start


def _fwd_bwd(spec: MirasSpec, inputs, weights, mode: str) -> float:
    q, k, v, gates, state = inputs
    leaves = [t for t in (q, k, v, *gates.values(), *state.tensors().values()) if t.requires_grad]
    start = time.perf_counter()
    y, _ = memory_op(spec, q, k, v, gates, state, mode=mode)
    torch.autograd.grad((y * weights).sum(), leaves, allow_unused=True)
    return time.perf_counter() - start


def measure(spec: MirasSpec, T: int, mode: str, repeats: int, warmup_T: int | None = None) -> Timing:
    """Median forward and forward + backward seconds at T after one warm-up (at warmup_T if given), and
    the peak memory and other processes' CPU use of the whole cell."""
    inputs, weights = _inputs(spec, T)
    warm, warm_weights = (inputs, weights) if warmup_T is None else _inputs(spec, warmup_T)
    with PeakRSS() as mem, OtherCPU() as other:
        _fwd(spec, warm, mode)
        _fwd_bwd(spec, warm, warm_weights, mode)
        fwd = statistics.median(_fwd(spec, inputs, mode) for _ in range(repeats))
        fwd_bwd = statistics.median(_fwd_bwd(spec, inputs, weights, mode) for _ in range(repeats))
    return Timing(fwd, fwd_bwd, mem.mib, other.cores)


def _row(preset: str, path: str, T: int, t: Timing, ref: dict | None, flops: float | None, roofline: float
         ) -> dict:
    """One result row; speedups divide by the reference's per-token rate (1.0 for the reference itself)."""
    fwd_tok, fwd_bwd_tok = BATCH * T / t.fwd_s, BATCH * T / t.fwd_bwd_s
    gflops = None if flops is None else flops / t.fwd_s / 1e9
    return {"preset": preset, "path": path, "T": T, "status": "ok", "fwd_s": t.fwd_s, "fwd_bwd_s": t.fwd_bwd_s,
            "fwd_tok_s": fwd_tok, "fwd_bwd_tok_s": fwd_bwd_tok,
            "speedup_fwd": 1.0 if ref is None else fwd_tok / ref["fwd_tok_s"],
            "speedup_fwd_bwd": 1.0 if ref is None else fwd_bwd_tok / ref["fwd_bwd_tok_s"],
            "gflop_fwd": None if flops is None else flops / 1e9, "gflops_fwd": gflops,
            "roofline_frac_fwd": None if gflops is None else gflops / roofline, "peak_mib": t.peak_mib,
            "other_cores": t.other_cores}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Caps:
    """A fast path is not run at a larger T when its forward + backward at this T, scaled linearly in T, would
    take longer than `seconds` or use more than `mib` of memory."""

    seconds: float = 60.0
    mib: float = 0.5 * os.sysconf("SC_PHYS_PAGES") * PAGE / 2 ** 20


def _over_cap(row: dict, scale: float, caps: Caps) -> str | None:
    if row["fwd_bwd_s"] * scale > caps.seconds:
        return SKIPPED
    if row["peak_mib"] * scale > caps.mib:
        return SKIPPED_MEMORY
    return None


def bench_preset(name: str, seqlens: list[int], repeats: int, ref_seqlen: int, ref_repeats: int, caps: Caps,
                 roofline: float) -> list[dict]:
    """The reference row and one row per T (measured or skipped) of one preset."""
    spec = get_preset(name).spec
    path = select_op(spec)
    ref = _row(name, "reference", ref_seqlen,
               measure(spec, ref_seqlen, "reference", ref_repeats, warmup_T=min(64, ref_seqlen)), None, None, roofline)
    _log(f"{name:16s} reference T={ref_seqlen}: fwd+bwd {ref['fwd_bwd_s']:.2f} s, other {ref['other_cores']:.2f}")
    rows, skip = [ref], None
    for idx, T in enumerate(seqlens):
        if skip:
            rows.append({"preset": name, "path": path, "T": T, "status": skip})
            continue
        row = _row(name, path, T, measure(spec, T, "auto", repeats), ref, flops_fwd(spec, path, T), roofline)
        rows.append(row)
        _log(f"{name:16s} {path} T={T}: fwd+bwd {row['fwd_bwd_s']:.2f} s, peak {row['peak_mib']:.0f} MiB, "
             f"other {row['other_cores']:.2f}")
        skip = _over_cap(row, seqlens[min(idx + 1, len(seqlens) - 1)] / T, caps)
    return rows


def machine() -> dict:
    cpu = platform.processor()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def run(presets: list[str] | None = None, seqlens=SEQLENS, repeats: int = 3, ref_seqlen: int = 512,
        ref_repeats: int = 1, caps: Caps | None = None, threads: int = 2, progress=None) -> dict:
    """The whole benchmark: {"config", "machine", "roofline_gflops", "rows"}; see the module docstring.
    progress(rows so far) is called after every preset."""
    caps = caps or Caps()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        roofline = matmul_roofline()
        _log(f"matmul roofline: {roofline:.1f} GFLOP/s")
        seqlens = sorted(seqlens)
        rows = []
        for name in presets or distinct_presets():
            rows += bench_preset(name, seqlens, repeats, ref_seqlen, ref_repeats, caps, roofline)
            if progress:
                progress(rows)
    finally:
        torch.set_num_threads(previous)
    config = {"batch": BATCH, "heads": HEADS, "d_head": D_HEAD, "dtype": str(DTYPE), "threads": threads,
              "seqlens": seqlens, "repeats": repeats, "ref_seqlen": ref_seqlen, "ref_repeats": ref_repeats,
              "max_seconds": caps.seconds, "max_mib": caps.mib}
    return {"config": config, "machine": machine(), "roofline_gflops": roofline, "rows": rows}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def format_table(result: dict) -> str:
    """Markdown table of the rows, with the notes needed to read it."""
    cfg = result["config"]
    lines = ["| preset | path | T | fwd tok/s | fwd+bwd tok/s | speedup fwd / fwd+bwd vs reference "
             "| % matmul roofline (fwd) | peak MiB | other CPU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['preset']} | {r['path']} | {r['T']} | {r['status']} | | | | | |")
            continue
        frac = "-" if r["roofline_frac_fwd"] is None else f"{100 * r['roofline_frac_fwd']:.2g}%"
        speedup = "-" if r["path"] == "reference" else f"{r['speedup_fwd']:.3g}x / {r['speedup_fwd_bwd']:.3g}x"
        lines.append(f"| {r['preset']} | {r['path']} | {r['T']} | {_num(r['fwd_tok_s'])} | {_num(r['fwd_bwd_tok_s'])} "
                     f"| {speedup} | {frac} | {r['peak_mib']:,.0f} | {r['other_cores']:.2f} |")
    lines += ["", f"Batch {cfg['batch']}, {cfg['heads']} heads of dim {cfg['d_head']}, {cfg['dtype']}, "
              f"{cfg['threads']} threads; median of {cfg['repeats']} after one warm-up "
              f"(reference: {cfg['ref_repeats']} run after a 64-token warm-up).",
              f"The reference is measured at T = {cfg['ref_seqlen']} only; speedups at every T divide by its "
              f"per-token rate there (for the transformer, whose reference is O(T^2), this understates the "
              f"reference's cost at larger T).",
              f"Roofline: dense fp32 1024x1024 matmul, {result['roofline_gflops']:.1f} GFLOP/s; a path's share "
              f"counts matrix-multiply FLOPs only (FLOP model: miras/bench/ops.py).",
              f"{SKIPPED}: forward + backward at the previous T took longer than {cfg['max_seconds']:g} s, "
              f"or would at this T when scaled linearly in T; {SKIPPED_MEMORY}: likewise for peak memory "
              f"above {cfg['max_mib']:,.0f} MiB.",
              "Peak MiB: peak RSS during the cell (warm-up, forward and forward + backward) minus the RSS before it.",
              "Other CPU: cores kept busy by other processes during the cell, on average; well above 0 means "
              "the cell's timings were slowed by contention."]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="miras bench ops", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `miras bench ops` (also the `miras bench ops` subcommand's)."""
    p.add_argument("--presets", nargs="+", choices=list_presets(), metavar="NAME",
                   help="default: every distinct memory spec (`miras presets` lists the names)")
    p.add_argument("--seqlens", nargs="+", type=int,
                   help=f"default {list(SEQLENS)} ({list(QUICK_SEQLENS)} with --quick)")
    p.add_argument("--repeats", type=int, help="timed runs per cell, median reported (default 3, 1 with --quick)")
    p.add_argument("--ref-seqlen", type=int, default=512, help="length at which the reference is measured")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the reference")
    p.add_argument("--max-seconds", type=float, default=Caps.seconds, help="per-cell cap on one forward + backward")
    p.add_argument("--max-mib", type=float, default=Caps.mib, help="per-cell memory cap (default: half the RAM)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--quick", action="store_true", help=f"T = {list(QUICK_SEQLENS)}, 1 repeat")
    p.add_argument("--out", default="runs/bench_ops.json", help="JSON results (folder created)")


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """p.error (exit 2, one line) for a flag out of range."""
    for name in ("seqlens", "repeats", "ref_seqlen", "ref_repeats", "threads", "max_seconds", "max_mib"):
        values = getattr(args, name)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not value > 0:
                p.error(f"--{name.replace('_', '-')}={value} is invalid: allowed a number > 0")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    return check(p, p.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    return run_args(parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    seqlens = args.seqlens or (QUICK_SEQLENS if args.quick else SEQLENS)
    repeats = args.repeats or (1 if args.quick else 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = lambda rows: out.write_text(json.dumps({"partial": True, "rows": rows}, indent=1))  # noqa: E731
    result = run(args.presets, seqlens, repeats, args.ref_seqlen, args.ref_repeats,
                 Caps(args.max_seconds, args.max_mib), args.threads, progress=partial)
    result["table"] = format_table(result)
    print(result["table"])
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
