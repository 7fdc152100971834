"""miras on a GPU next to fla's Triton kernels and titans-pytorch: forward and forward + backward tokens/s.

    .venv/bin/python benchmarks/bench_gpu.py                       # a CUDA machine: runs/gpu/bench_gpu.{md,json}
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --tiny   # any machine, seconds (tests/test_bench_gpu.py)

benchmarks/gpu.sh runs it after the GPU tests. Targets (ratio = ours / peer tokens/s, > 1: miras faster):

  gdr     miras.ops.delta.chunk_gated_delta_rule (chunk 64)  vs  fla.ops.gated_delta_rule.chunk_gated_delta_rule
  gla     miras.ops.ssd.chunk_gla, a decay per head (64)     vs  fla.ops.simple_gla.chunk_simple_gla
  titans  memory_op(titans-lmm, chunk 64): the op alone, and
          MemoryLayer(titans-lmm, chunk 64, d_model H x D)    vs  titans-pytorch NeuralMemory (chunk 64), a layer
  ttt     memory_op(ttt-linear): the mini-batch engine        (no peer)

Sizes: batch 8, 4 heads of dim 64 (d_model 256 for the layers), T = 2048 and 8192, float32 and bfloat16 inputs
(q, k, v and the op-level gates in that dtype; memory_op's gates and start state in float32, as the layers give
them; the layers are cast to the dtype). The same input values go to ours and the peer. gdr and gla compute the
same function as their peer: the table shows the relative RMS difference of the two forward outputs. titans'
peer is a whole layer that takes every chunk's gradient at the layer's initial weights; ours steps chunk by chunk
(docs/benchmarks.md), so there the ratio compares two different computations of similar purpose.

Timing: forward under torch.no_grad(); forward + backward = forward and torch.autograd.grad of
(out * fixed random weights).sum() to every input and parameter. Per cell (implementation x T x dtype): one
warm-up forward and one warm-up forward + backward (fla's Triton autotuning happens there), then up to --repeats
timed runs of each, fewer once a cell's timed runs pass --cell-s seconds; the median is reported. On CUDA the
runs are timed with CUDA events (device time between two events recorded around the call, synchronized), on the
CPU with perf_counter. A cell is not started when the time left (--budget-s for the whole run) is less than its
estimate (the same implementation at the previous T, scaled linearly in T); it is reported as skipped. Peak
memory: torch.cuda.max_memory_allocated over the cell. A peer that cannot be imported is "not installed"; fla's
Triton kernels need CUDA ("needs CUDA" with --device cpu). Results are written after every cell, so a run that is
cut short leaves what it measured.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from miras.layers.memory import MemoryLayer  # noqa: E402
from miras.ops.delta import chunk_gated_delta_rule  # noqa: E402
from miras.ops.dispatch import memory_op  # noqa: E402
from miras.ops.inputs import random_inputs  # noqa: E402
from miras.ops.ssd import chunk_gla  # noqa: E402
from miras.space import MirasSpec, get_preset  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    batch: int
    heads: int
    d_head: int
    seqlens: tuple[int, ...]
    chunk: int = 64

    @property
    def d_model(self) -> int:
        return self.heads * self.d_head


FULL = Sizes(batch=8, heads=4, d_head=64, seqlens=(2048, 8192))
TINY = Sizes(batch=1, heads=2, d_head=16, seqlens=(40, 72), chunk=16)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class PeerUnavailable(Exception):
    """The peer cannot run here: (status for the table: "not installed", "needs CUDA", ..., detail)."""


@dataclass
class Impl:
    """One implementation on one input: fn() -> output; leaves: what gradients go to."""

    fn: Callable[[], torch.Tensor]
    leaves: list


@dataclass
class Side:
    label: str
    build: Callable[[Sizes, int, torch.dtype, torch.device], Impl]


@dataclass
class Target:
    name: str
    ours: list[Side]
    peer: Side | None = None
    same_function: bool = False       # ours and the peer compute the same function: compare their outputs
    what: str = ""


# -- inputs ---------------------------------------------------------------------------------------------------------

def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaf(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return x.to(device=device, dtype=dtype).requires_grad_(True)


def _op_inputs(s: Sizes, T: int, gated: bool):
    """q, unit-norm k, v [B, T, H, D]; log decay g = logsigmoid(N(0, 1) + 3) and beta = sigmoid(N(0, 1)) [B, T, H];
    drawn on the CPU with a fixed seed, in float32 (the same values for ours and the peer)."""
    g = _gen()
    shape = (s.batch, T, s.heads, s.d_head)
    q, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    k = F.normalize(torch.randn(shape, generator=g), dim=-1)
    decay = F.logsigmoid(torch.randn(shape[:3], generator=g) + 3)
    beta = torch.sigmoid(torch.randn(shape[:3], generator=g))
    return (q, k, v, decay, beta) if gated else (q, k, v, decay)


def _op(fn, values, device, dtype) -> Impl:
    leaves = [_leaf(x, device, dtype) for x in values]
    return Impl(lambda: fn(*leaves)[0], leaves)


def ours_gdr(s, T, dtype, device):
    return _op(lambda q, k, v, g, b: chunk_gated_delta_rule(q, k, v, g, b, chunk_size=s.chunk),
               _op_inputs(s, T, True), device, dtype)


def ours_gla(s, T, dtype, device):
    return _op(lambda q, k, v, g: chunk_gla(q, k, v, g, chunk_size=s.chunk), _op_inputs(s, T, False), device, dtype)


def _fla(module: str, name: str, device: torch.device):
    if device.type != "cuda":
        raise PeerUnavailable("needs CUDA", "fla's Triton kernels run on a GPU only")
    return getattr(_import(module, "flash-linear-attention"), name)


def fla_gdr(s, T, dtype, device):
    fn = _fla("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", device)
    return _op(lambda q, k, v, g, b: fn(q, k, v, g, b), _op_inputs(s, T, True), device, dtype)


def fla_gla(s, T, dtype, device):
    fn = _fla("fla.ops.simple_gla", "chunk_simple_gla", device)
    return _op(lambda q, k, v, g: fn(q, k, v, g=g), _op_inputs(s, T, False), device, dtype)


def _spec(preset: str, chunk: int | None = None) -> MirasSpec:
    spec = get_preset(preset).spec
    return spec if chunk is None else MirasSpec(spec.memory, spec.bias, spec.retention, spec.algorithm,
                                                chunk_size=chunk)


def _memory_op(spec: MirasSpec, s: Sizes, T: int, dtype, device) -> Impl:
    """memory_op(spec) on random_inputs (unit q, k, the gates' typical values, a random W0): q, k, v in dtype,
    gates and start state in float32, all leaves."""
    q, k, v, gates, state = random_inputs(spec, s.batch, T, s.heads, s.d_head, dtype=torch.float32, seed=0)
    q, k, v = (_leaf(x, device, dtype) for x in (q, k, v))
    gates = {n: _leaf(g, device, torch.float32) for n, g in gates.items()}
    state = type(state)(**{name: None if group is None else {n: _leaf(t, device, torch.float32)
                                                             for n, t in group.items()}
                           for name, group in state.groups().items()}, offset=state.offset)
    leaves = [q, k, v, *gates.values(), *state.tensors().values()]
    return Impl(lambda: memory_op(spec, q, k, v, gates, state)[0], leaves)


def ours_titans_op(s, T, dtype, device):
    return _memory_op(_spec("titans-lmm", s.chunk), s, T, dtype, device)


def ours_ttt_op(s, T, dtype, device):
    return _memory_op(_spec("ttt-linear"), s, T, dtype, device)


def _layer_input(s: Sizes, T: int, device, dtype) -> torch.Tensor:
    return _leaf(torch.randn(s.batch, T, s.d_model, generator=_gen(1)), device, dtype)


def ours_titans_layer(s, T, dtype, device):
    torch.manual_seed(0)
    layer = MemoryLayer(_spec("titans-lmm", s.chunk), s.d_model, s.heads).to(device=device, dtype=dtype)
    x = _layer_input(s, T, device, dtype)
    return Impl(lambda: layer(x)[0], [x, *layer.parameters()])


def titans_pytorch(s, T, dtype, device):
    NeuralMemory = _import("titans_pytorch", "titans-pytorch").NeuralMemory
    torch.manual_seed(0)
    mem = NeuralMemory(dim=s.d_model, heads=s.heads, dim_head=s.d_head, chunk_size=s.chunk).to(device=device,
                                                                                               dtype=dtype)
    x = _layer_input(s, T, device, dtype)
    return Impl(lambda: mem(x)[0], [x, *(p for p in mem.parameters() if p.requires_grad)])


def _import(module: str, dist: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as err:
        raise PeerUnavailable("not installed", f"{dist}: {err}") from None
    except Exception as err:  # noqa: BLE001 - e.g. Triton without a usable GPU at import
        raise PeerUnavailable("not importable", f"{dist}: {type(err).__name__}: {err}") from None


TARGETS = [
    Target("gdr", [Side("miras chunk_gated_delta_rule", ours_gdr)],
           Side("fla chunk_gated_delta_rule (Triton)", fla_gdr), True, "op vs op"),
    Target("gla", [Side("miras chunk_gla (decay per head)", ours_gla)],
           Side("fla chunk_simple_gla (Triton)", fla_gla), True, "op vs op"),
    Target("titans", [Side("miras titans-lmm op (memory_op)", ours_titans_op),
                      Side("miras titans-lmm MemoryLayer", ours_titans_layer)],
           Side("titans-pytorch NeuralMemory", titans_pytorch), False, "op / layer vs layer"),
    Target("ttt", [Side("miras ttt-linear op (memory_op, mini-batch 16)", ours_ttt_op)], None, False, "op"),
]


# -- timing ---------------------------------------------------------------------------------------------------------

def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """fn -> seconds it took: CUDA events on a GPU (device time, synchronized), perf_counter elsewhere."""
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return run

    def run(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    return run


@dataclass
class Cell:
    target: str
    side: str                 # "ours" | "peer"
    label: str
    T: int
    dtype: str
    status: str = "ok"
    detail: str = ""
    fwd_s: float | None = None
    fwd_bwd_s: float | None = None
    fwd_tok_s: float | None = None
    fwd_bwd_tok_s: float | None = None
    fwd_times: list = field(default_factory=list)
    fwd_bwd_times: list = field(default_factory=list)
    peak_gib: float | None = None
    wall_s: float = 0.0
    output: torch.Tensor | None = field(default=None, repr=False)   # the forward output (same-function targets)

    def record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "output"}


def measure(impl: Impl, device: torch.device, repeats: int, cell_s: float, keep_output: bool):
    """(fwd times, fwd + bwd times, the forward output or None): one warm-up of each, then timed runs until
    `repeats` or until they add up to cell_s / 2 (each mode; at least one)."""
    timer = _timer(device)
    weights = {}

    def forward():
        with torch.no_grad():
            return impl.fn()

    def forward_backward():
        out = impl.fn()
        if "w" not in weights:
            weights["w"] = torch.randn(out.shape, generator=_gen(2)).to(device=device, dtype=out.dtype)
        torch.autograd.grad((out * weights["w"]).sum(), impl.leaves, allow_unused=True)

    out = forward()
    output = out.detach().float().cpu() if keep_output else None
    del out
    forward_backward()
    times = {}
    for name, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
        runs = []
        while len(runs) < repeats and (not runs or sum(runs) < cell_s / 2):
            runs.append(timer(fn))
        times[name] = runs
    return times["fwd"], times["fwd_bwd"], output


def run_cell(target: Target, side: Side, kind: str, s: Sizes, T: int, dtype_name: str, device: torch.device,
             repeats: int, cell_s: float) -> Cell:
    cell = Cell(target.name, kind, side.label, T, dtype_name)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    impl = None
    try:
        impl = side.build(s, T, DTYPES[dtype_name], device)
        fwd, fwd_bwd, cell.output = measure(impl, device, repeats, cell_s, target.same_function)
        cell.fwd_times, cell.fwd_bwd_times = fwd, fwd_bwd
        cell.fwd_s, cell.fwd_bwd_s = statistics.median(fwd), statistics.median(fwd_bwd)
        cell.fwd_tok_s, cell.fwd_bwd_tok_s = s.batch * T / cell.fwd_s, s.batch * T / cell.fwd_bwd_s
    except PeerUnavailable as why:
        cell.status, cell.detail = why.args
    except torch.cuda.OutOfMemoryError:
        cell.status = "out of memory"
    except Exception as err:  # noqa: BLE001 - one cell's failure is that cell's result
        first = str(err).splitlines()[0][:300] if str(err) else ""
        cell.status, cell.detail = "error", f"{type(err).__name__}: {first}"
        traceback.print_exc(limit=3, file=sys.stderr)
    finally:
        del impl
    if device.type == "cuda":
        cell.peak_gib = torch.cuda.max_memory_allocated(device) / 2 ** 30
        torch.cuda.empty_cache()
    cell.wall_s = time.perf_counter() - start
    return cell


# -- the run --------------------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
           "torch": torch.__version__, "device": str(device), "cuda": torch.version.cuda}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    for dist in ("flash-linear-attention", "fla-core", "triton", "titans-pytorch"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = "not installed"
    return env


def _rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def run(s: Sizes, device: torch.device, dtypes: list[str], targets: list[str], repeats: int, cell_s: float,
        budget_s: float, progress: Callable[[dict], None] | None = None) -> dict:
    """Every cell in the order T, dtype, target (the small T first, so a cut-short run has every target)."""
    deadline = time.perf_counter() + budget_s
    cells: list[Cell] = []
    diffs: dict[tuple, float | None] = {}
    last_wall: dict[tuple, tuple[int, float]] = {}            # (label, dtype) -> (T, wall seconds) of the last cell
    chosen = [t for t in TARGETS if t.name in targets]
    for T in s.seqlens:
        for dtype_name in dtypes:
            for target in chosen:
                sides = [("ours", side) for side in target.ours] + ([("peer", target.peer)] if target.peer else [])
                done = []
                for kind, side in sides:
                    left = deadline - time.perf_counter()
                    prev = last_wall.get((side.label, dtype_name))
                    estimate = 0.0 if prev is None else prev[1] * T / prev[0]
                    if left <= 0 or estimate > left:
                        cell = Cell(target.name, kind, side.label, T, dtype_name,
                                    status="skipped (time budget)",
                                    detail=f"{max(left, 0):.0f} s left, estimate {estimate:.0f} s")
                    else:
                        cell = run_cell(target, side, kind, s, T, dtype_name, device, repeats, cell_s)
                        if cell.status == "ok":
                            last_wall[(side.label, dtype_name)] = (T, cell.wall_s)
                    print(f"{target.name:6s} T={T:5d} {dtype_name:8s} {side.label:48s} {_summary(cell)}",
                          file=sys.stderr, flush=True)
                    done.append(cell)
                    cells.append(cell)
                if target.same_function and target.peer:
                    peer = done[-1]
                    for cell in done[:-1]:
                        diffs[(target.name, T, dtype_name, cell.label)] = _rel(cell.output, peer.output)
                for cell in done:
                    cell.output = None
                if progress:
                    progress(result(s, device, dtypes, repeats, cell_s, budget_s, cells, diffs))
    return result(s, device, dtypes, repeats, cell_s, budget_s, cells, diffs)


def _summary(cell: Cell) -> str:
    if cell.status != "ok":
        return f"{cell.status} ({cell.detail})" if cell.detail else cell.status
    return f"fwd {_tok(cell.fwd_tok_s)} tok/s, f+b {_tok(cell.fwd_bwd_tok_s)} tok/s ({cell.wall_s:.1f} s)"


def result(s, device, dtypes, repeats, cell_s, budget_s, cells, diffs) -> dict:
    rows = []
    for target in TARGETS:
        for cell in [c for c in cells if c.target == target.name and c.side == "ours"]:
            peer = next((c for c in cells if c.target == target.name and c.side == "peer" and c.T == cell.T
                         and c.dtype == cell.dtype), None)
            ok = peer is not None and peer.status == "ok" and cell.status == "ok"
            rows.append({"target": target.name, "what": target.what, "T": cell.T, "dtype": cell.dtype,
                         "ours": cell.label, "peer": None if peer is None else peer.label,
                         "ratio_fwd": cell.fwd_tok_s / peer.fwd_tok_s if ok else None,
                         "ratio_fwd_bwd": cell.fwd_bwd_tok_s / peer.fwd_bwd_tok_s if ok else None,
                         "output_rel_diff": diffs.get((target.name, cell.T, cell.dtype, cell.label))})
    config = {"batch": s.batch, "heads": s.heads, "d_head": s.d_head, "d_model": s.d_model, "chunk": s.chunk,
              "seqlens": list(s.seqlens), "dtypes": dtypes, "repeats": repeats, "cell_s": cell_s,
              "budget_s": budget_s}
    out = {"config": config, "environment": environment(device), "cells": [c.record() for c in cells],
           "rows": rows}
    out["table"] = format_table(out)
    return out


def _tok(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:,.2f}M" if x >= 1e6 else f"{x / 1e3:,.1f}k" if x >= 1e3 else f"{x:,.0f}"


def format_table(res: dict) -> str:
    cells = {(c["label"], c["T"], c["dtype"]): c for c in res["cells"]}

    def speed(label, T, dtype, key):
        c = cells.get((label, T, dtype))
        if c is None:
            return "-"
        return _tok(c[key]) if c["status"] == "ok" else c["status"] if key == "fwd_tok_s" else ""

    def peak(label, T, dtype):
        c = cells.get((label, T, dtype))
        return "-" if c is None or c["peak_gib"] is None else f"{c['peak_gib']:.2f}"

    lines = ["| target | T | dtype | ours | ours fwd tok/s | ours f+b tok/s | peer | peer fwd tok/s | peer f+b tok/s "
             "| fwd ratio | **f+b ratio** | out rel. diff | peak GiB ours / peer |",
             "|---|---:|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        T, dt, peer = r["T"], r["dtype"], r["peer"]
        ratio = lambda x: "-" if x is None else f"{x:.2f}x"  # noqa: E731
        diff = "-" if r["output_rel_diff"] is None else f"{r['output_rel_diff']:.1e}"
        lines.append(f"| {r['target']} ({r['what']}) | {T} | {dt} | {r['ours']} "
                     f"| {speed(r['ours'], T, dt, 'fwd_tok_s')} "
                     f"| {speed(r['ours'], T, dt, 'fwd_bwd_tok_s')} | {peer or '-'} "
                     f"| {speed(peer, T, dt, 'fwd_tok_s') if peer else '-'} "
                     f"| {speed(peer, T, dt, 'fwd_bwd_tok_s') if peer else '-'} | {ratio(r['ratio_fwd'])} "
                     f"| **{ratio(r['ratio_fwd_bwd'])}** | {diff} | {peak(r['ours'], T, dt)} / "
                     f"{peak(peer, T, dt) if peer else '-'} |")
    cfg, env = res["config"], res["environment"]
    where = env.get("gpu") or f"{env.get('cpu')} ({env.get('threads')} threads)"
    peers = ", ".join(f"{d} {env[d]}" for d in ("flash-linear-attention", "fla-core", "triton", "titans-pytorch"))
    lines += ["", f"{where}, torch {env['torch']} (CUDA {env['cuda']}), {env['date']}; {peers}.",
              f"Batch {cfg['batch']}, {cfg['heads']} heads of dim {cfg['d_head']} (d_model {cfg['d_model']} for the "
              f"layers), chunk {cfg['chunk']} (ours and fla's are chunk-invariant; titans: chunks of {cfg['chunk']} on "
              "both sides; ttt-linear: its mini-batch 16); median of up to {cfg['repeats']} timed runs after "
              "one warm-up "
              f"(fewer past {cfg['cell_s']:g} s per cell); {'CUDA events' if 'gpu' in env else 'perf_counter'}. "
              "Ratio = ours / peer tokens/s (> 1: miras faster). out rel. diff: relative RMS difference of ours and "
              "the peer's forward outputs (same function). Command: benchmarks/gpu.sh (benchmarks/bench_gpu.py)."]
    return "\n".join(lines)


def write(res: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_gpu.json").write_text(json.dumps(res, indent=1))
    (out_dir / "bench_gpu.md").write_text(res["table"] + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu")
    ap.add_argument("--tiny", action="store_true", help=f"tiny sizes ({TINY}) and 1 repeat: seconds, for CI")
    ap.add_argument("--targets", nargs="+", choices=[t.name for t in TARGETS], default=[t.name for t in TARGETS])
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    ap.add_argument("--seqlens", nargs="+", type=int, help="override T (default 2048 8192; --tiny: 64 128)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell and mode (default 10; --tiny 1)")
    ap.add_argument("--cell-s", type=float, default=6.0, help="stop a cell's timed runs past this many seconds")
    ap.add_argument("--budget-s", type=float, default=300.0, help="start no cell past this many seconds")
    ap.add_argument("--out-dir", type=Path, default=Path("runs/gpu"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch {torch.__version__} sees no GPU (use --device cpu --tiny)")
    sizes = TINY if args.tiny else FULL
    if args.seqlens:
        sizes = Sizes(sizes.batch, sizes.heads, sizes.d_head, tuple(args.seqlens), sizes.chunk)
    repeats = args.repeats or (1 if args.tiny else 10)
    res = run(sizes, device, args.dtypes, args.targets, repeats, args.cell_s, args.budget_s,
              progress=lambda partial: write(partial, args.out_dir))
    write(res, args.out_dir)
    print(res["table"])
    print(f"\nwrote {args.out_dir / 'bench_gpu.md'} and {args.out_dir / 'bench_gpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
