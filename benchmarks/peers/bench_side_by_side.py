"""miras next to the public references, in ONE process: tokens/s, ratio ours / peer, share of the roofline.

Run in the throwaway peer environment (benchmarks/peers/README.md), from the repository root:

    PEERS_DIR=/tmp/peers PYTHONPATH=. /tmp/peers/venv/bin/python benchmarks/peers/bench_side_by_side.py \
        --seqlens 2048 8192 --out runs/bench_peers.json

Shapes (those of ../shared/peers/bench_peers.py): batch 1, 4 heads of dim 64 (d_model 256 for layers),
float32, torch.set_num_threads(2). Per target and T, every implementation gets the same input values; after
one warm-up forward and forward + backward each, the timed runs of the implementations are INTERLEAVED
(peer, ours, peer, ours, ...) so that drift of a shared machine hits both alike; the median is reported.
"fwd" = forward under torch.no_grad(); "f+b" = forward + torch.autograd.grad of (out * fixed random
weights).sum() to every input leaf and every parameter. Before each target x T the script waits (at most
--quiet-wait s) for other processes to go idle, then measures the dense fp32 matmul roofline
(miras.bench.ops.matmul_roofline) in the same window; "% roofline" counts the matrix-multiply FLOPs of the
miras FLOP model (miras/bench/ops.py) over the forward time, also for a peer that computes the same
function (SSD, delta rules), so the two shares are comparable.

Targets (issue 3), ratio = ours / peer tokens/s:
  ssd      miras `ssd` (chunk 64, state 64)            vs mamba ssd_minimal_discrete (chunk 64):  f+b >= 1.5x,
                                                          and ours fwd >= 40% of the roofline at T = 8192
  gdr      miras chunk_gated_delta_rule (chunk 64)     vs fla naive_chunk_gated_delta_rule (64):  f+b >= 4x
  delta    miras chunk_gated_delta_rule, g=None (64)   vs fla delta_rule_chunkwise (64):          f+b >= 4x
  ttt      TTT-Linear, mini-batch 16                   vs ttt-lm-pytorch TTTLinear layer:         f+b >= 5x
  titans   Titans LMM, MLP depth 2 (x4), momentum+decay vs titans-pytorch NeuralMemory (chunk 64): f+b >= 3x

What each side includes (TTT and Titans: the peers are LAYERS):
  ttt-lm-pytorch TTTLinear: q/k/v/o projections (256 x 256), RoPE, the learned per-token lr gate and
    1 / (i + 1) token weights, the inner model W x + b with LayerNorm (learned affine) + residual, the
    dual-form mini-batch loop, post LayerNorm, o projection.
  titans-pytorch NeuralMemory: RMSNorms (store / retrieve), q/k/v projections, adaptive lr, per-chunk
    momentum and decay gates, per-sample gradients by torch.func over the MLP memory (LayerNorm gain +
    residual) for ALL chunks at the layer's initial weights (so fully parallel over chunks), two
    associative scans (momentum, decay), retrieval, retrieve gate and head combination.
  miras op: memory_op(spec) alone: q, k, v, gates and start state given (no projections); every chunk's
    gradient at that chunk's start state (the paper's mini-batch GD; for Titans this is a sequential
    chunk loop, which titans-pytorch avoids by its initial-weights approximation).
  miras layer: MemoryLayer(spec, d_model 256, 4 heads): q/k/v projections, short convs, low-rank gates,
    memory_op, per-head RMSNorm, SiLU output gate and output projection: the like-for-like comparison.
  For TTT the op-level peer fla chunk_ttt_linear_ref (mini-batch 16; an op with an inner bias, not the
  same function, see make_cases.py) is shown as well, without a target.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_cases as peers  # noqa: E402  (run-time loaders of the peer code, outside the repo)

from miras.bench.ops import OtherCPU, _inputs, _release_memory, flops_fwd, machine, matmul_roofline  # noqa: E402
from miras.layers.memory import MemoryLayer  # noqa: E402
from miras.ops.delta import chunk_gated_delta_rule  # noqa: E402
from miras.ops.dispatch import memory_op  # noqa: E402
from miras.ops.ssd import ssd  # noqa: E402
from miras.space import MirasSpec, get_preset  # noqa: E402

B, DIM, H, DH, DSTATE, CHUNK = 1, 256, 4, 64, 64, 64
DTYPE = torch.float32
TARGETS = ("ssd", "gdr", "delta", "ttt", "titans")


@dataclass
class Impl:
    """One implementation at one T: fn() -> output tensor; leaves = everything gradients go to."""

    label: str
    side: str                      # "peer" | "ours"
    fn: Callable[[], torch.Tensor]
    leaves: list
    flops: float | None = None     # forward matrix-multiply FLOPs (miras FLOP model), None: not the same function
    note: str = ""
    fwd: list = field(default_factory=list)          # seconds of every timed run
    fwd_bwd: list = field(default_factory=list)
    fwd_other: list = field(default_factory=list)    # other processes' CPU cores during that run
    fwd_bwd_other: list = field(default_factory=list)
    weights: torch.Tensor | None = None

    def run_fwd(self) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            self.fn()
        return time.perf_counter() - start

    def run_fwd_bwd(self) -> float:
        start = time.perf_counter()
        out = self.fn()
        if self.weights is None:
            self.weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        torch.autograd.grad((out * self.weights).sum(), self.leaves, allow_unused=True)
        return time.perf_counter() - start


@dataclass
class Comparison:
    """Ours vs peer rows of one target: (ours label, peer label, target ratio or None, what is compared)."""

    target: str
    impls: dict
    pairs: list


def _gen():
    return torch.Generator().manual_seed(0)


def _leaf(t):
    return t.requires_grad_()


def _params(module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- builders, one per target
def build_ssd(T: int) -> Comparison:
    mod = peers.load_ssd_minimal()
    g = _gen()
    x = torch.randn(B, T, H, DH, generator=g, dtype=DTYPE)
    dt = F.softplus(torch.randn(B, T, H, generator=g, dtype=DTYPE) - 4)
    A = -torch.exp(torch.rand(H, generator=g, dtype=DTYPE))
    Bm, Cm = (torch.randn(B, T, H, DSTATE, generator=g, dtype=DTYPE) for _ in range(2))
    p_leaves = [_leaf(t.clone()) for t in (x, dt, A, Bm, Cm)]
    o_leaves = [_leaf(t.clone()) for t in (x, dt, A, Bm, Cm)]
    px, pdt, pA, pB, pC = p_leaves
    ox, odt, oA, oB, oC = o_leaves
    flops = flops_fwd(get_preset("mamba2").spec, "ssd", T, H, DSTATE, DH)
    impls = {
        "peer": Impl("mamba ssd_minimal_discrete", "peer",
                     lambda: mod.ssd_minimal_discrete(px * pdt[..., None], pA * pdt, pB, pC, CHUNK)[0], p_leaves, flops,
                     "X * dt and A * dt formed inside the timed call"),
        "ours": Impl("miras ssd", "ours", lambda: ssd(ox, odt, oA, oB, oC, chunk_size=CHUNK), o_leaves, flops),
    }
    return Comparison("ssd", impls, [("ours", "peer", 1.5, "op vs op")])


def _delta_inputs(T: int, gated: bool):
    g = _gen()
    q = torch.randn(B, T, H, DH, generator=g, dtype=DTYPE)
    k = F.normalize(torch.randn(B, T, H, DH, generator=g, dtype=DTYPE), dim=-1)
    v = torch.randn(B, T, H, DH, generator=g, dtype=DTYPE)
    gate = F.logsigmoid(torch.randn(B, T, H, generator=g, dtype=DTYPE) + 3)
    beta = torch.rand(B, T, H, generator=g, dtype=DTYPE)
    return (q, k, v, gate, beta) if gated else (q, k, v, beta)


def build_gdr(T: int) -> Comparison:
    mod = peers.load_fla_naive("gated_delta_rule")
    vals = _delta_inputs(T, gated=True)
    pq, pk, pv, pg, pb = p_leaves = [_leaf(t.clone()) for t in vals]
    oq, ok, ov, og, ob = o_leaves = [_leaf(t.clone()) for t in vals]
    flops = flops_fwd(get_preset("gated-deltanet").spec, "delta", T)
    impls = {
        "peer": Impl("fla naive_chunk_gated_delta_rule", "peer",
                     lambda: mod.naive_chunk_gated_delta_rule(pq, pk, pv, pg, pb, chunk_size=CHUNK)[0], p_leaves, flops),
        "ours": Impl("miras chunk_gated_delta_rule", "ours",
                     lambda: chunk_gated_delta_rule(oq, ok, ov, og, ob, chunk_size=CHUNK)[0], o_leaves, flops),
    }
    return Comparison("gdr", impls, [("ours", "peer", 4.0, "op vs op")])


def build_delta(T: int) -> Comparison:
    mod = peers.load_fla_naive("delta_rule")
    vals = _delta_inputs(T, gated=False)
    # the peer takes [B, H, T, D]; ours [B, T, H, D]: same values, each in its own layout (not timed)
    pq, pk, pv, pb = p_leaves = [_leaf(t.transpose(1, 2).contiguous()) for t in vals]
    oq, ok, ov, ob = o_leaves = [_leaf(t.clone()) for t in vals]
    flops = flops_fwd(get_preset("deltanet").spec, "delta", T)
    impls = {
        "peer": Impl("fla delta_rule_chunkwise", "peer",
                     lambda: mod.delta_rule_chunkwise(pq, pk, pv, pb, chunk_size=CHUNK)[0], p_leaves, flops),
        "ours": Impl("miras chunk_gated_delta_rule (g=None)", "ours",
                     lambda: chunk_gated_delta_rule(oq, ok, ov, None, ob, chunk_size=CHUNK)[0], o_leaves, flops),
    }
    return Comparison("delta", impls, [("ours", "peer", 4.0, "op vs op")])


def _our_op(label: str, spec: MirasSpec, T: int, path: str = "minibatch") -> Impl:
    """memory_op(spec) on the inputs of `miras bench ops` (normalized q, k, bounded gates, random W0)."""
    (q, k, v, gates, state), _ = _inputs(spec, T)
    leaves = [t for t in (q, k, v, *gates.values(), *state.tensors().values()) if t.requires_grad]
    return Impl(label, "ours", lambda: memory_op(spec, q, k, v, gates, state)[0], leaves, flops_fwd(spec, path, T),
                "op only: q, k, v, gates, W0 given")


def _our_layer(label: str, spec: MirasSpec, x: torch.Tensor) -> Impl:
    torch.manual_seed(0)
    layer = MemoryLayer(spec, DIM, H).to(DTYPE)
    xl = _leaf(x.clone())
    return Impl(label, "ours", lambda: layer(xl)[0], [xl] + _params(layer), None,
                "layer: projections, convs, gates, op, norm, out gate + proj")


def build_ttt(T: int) -> Comparison:
    ttt = peers.load_ttt()
    fla_ttt = peers.load_fla_naive("ttt")
    x = torch.randn(B, T, DIM, generator=_gen(), dtype=DTYPE)
    torch.manual_seed(0)
    cfg = ttt.TTTConfig(hidden_size=DIM, num_attention_heads=H, num_hidden_layers=1, intermediate_size=2 * DIM,
                        vocab_size=64, mini_batch_size=16, ttt_layer_type="linear", use_gate=False, pre_conv=False)
    layer = ttt.TTTLinear(cfg, layer_idx=0).to(DTYPE)
    xp, pos = _leaf(x.clone()), torch.arange(T)[None]

    g = _gen()
    q, v = (torch.randn(B, T, H, DH, generator=g, dtype=DTYPE) for _ in range(2))
    k = F.normalize(torch.randn(B, T, H, DH, generator=g, dtype=DTYPE), dim=-1)
    fq, fk, fv = (_leaf(t) for t in (q, k, v))
    fw, fb = _leaf(torch.ones(H, DH, dtype=DTYPE)), _leaf(torch.zeros(H, DH, dtype=DTYPE))
    feta = _leaf(torch.rand(B, T, H, 1, generator=g, dtype=DTYPE) * 0.05)

    spec = get_preset("ttt-linear").spec
    impls = {
        "peer": Impl("ttt-lm-pytorch TTTLinear layer", "peer", lambda: layer(xp, position_ids=pos),
                     [xp] + _params(layer), None, "layer (see docstring)"),
        # q.clone(): the ref scales q in place (`q *= scale`)
        "fla": Impl("fla chunk_ttt_linear_ref (op)", "peer",
                    lambda: fla_ttt.chunk_ttt_linear_ref(fq.clone(), fk, fv, fw, fb, feta, mini_batch_size=16)[0],
                    [fq, fk, fv, fw, fb, feta], None, "op with inner bias; not the same function"),
        "ours_op": _our_op("miras ttt-linear op", spec, T),
        "ours_layer": _our_layer("miras ttt-linear MemoryLayer", spec, x),
    }
    return Comparison("ttt", impls, [("ours_layer", "peer", 5.0, "layer vs layer"),
                                     ("ours_op", "peer", 5.0, "op vs layer (upper bound)"),
                                     ("ours_op", "fla", None, "op vs op (different function)")])


def build_titans(T: int) -> Comparison:
    from titans_pytorch import NeuralMemory
    x = torch.randn(B, T, DIM, generator=_gen(), dtype=DTYPE)
    torch.manual_seed(0)
    mem = NeuralMemory(dim=DIM, heads=H, dim_head=DH, chunk_size=CHUNK).to(DTYPE)
    xp = _leaf(x.clone())
    preset = get_preset("titans-lmm").spec
    spec64 = MirasSpec(preset.memory, preset.bias, preset.retention, preset.algorithm, chunk_size=CHUNK)
    impls = {
        "peer": Impl("titans-pytorch NeuralMemory (chunk 64)", "peer", lambda: mem(xp)[0], [xp] + _params(mem), None,
                     "layer; all chunk gradients at the initial weights"),
        "ours_layer": _our_layer("miras titans-lmm MemoryLayer (chunk 64)", spec64, x),
        "ours_op": _our_op("miras titans-lmm op (chunk 64)", spec64, T),
    }
    pairs = [("ours_layer", "peer", 3.0, "layer vs layer, chunk 64"),
             ("ours_op", "peer", 3.0, "op vs layer, chunk 64 (upper bound)")]
    if T <= 2048:   # the preset's chunk 16 for information only (4x the sequential chunks; ~60 s per cell at 8192)
        impls["ours_op16"] = _our_op("miras titans-lmm op (preset chunk 16)", preset, T)
        pairs.append(("ours_op16", "peer", None, "op chunk 16 (preset) vs layer chunk 64"))
    return Comparison("titans", impls, pairs)


BUILDERS = {"ssd": build_ssd, "gdr": build_gdr, "delta": build_delta, "ttt": build_ttt, "titans": build_titans}


# ----------------------------------------------------------------------------- measuring
def _cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]
    return sum(vals) - vals[3] - vals[4], sum(vals)


def wait_quiet(max_wait: float, threshold: float = 0.08, samples: int = 3, interval: float = 2.0) -> float:
    """Wait (at most max_wait s) until the machine is idle (busy < threshold of all cores) for `samples`
    consecutive samples of `interval` s. On a shared 2-core machine a second busy process slows 2-thread
    torch by far more than 2x and erratically (a descheduled OpenMP thread stalls every parallel region).
    Returns the seconds waited."""
    start, ok = time.time(), 0
    while time.time() - start < max_wait and ok < samples:
        b0, t0 = _cpu_busy()
        time.sleep(interval)
        b1, t1 = _cpu_busy()
        ok = ok + 1 if (b1 - b0) / max(t1 - t0, 1) < threshold else 0
    return time.time() - start


CLEAN = 0.25   # a timed run during which other processes kept fewer cores busy than this is "clean"


def _timed(run) -> tuple[float, float]:
    with OtherCPU() as other:
        seconds = run()
    return seconds, other.cores


def robust_median(times: list, others: list) -> tuple[float, int]:
    """Median of the clean runs when there are at least 3 of them, else of all runs; and the clean count."""
    clean = [t for t, o in zip(times, others) if o < CLEAN]
    return statistics.median(clean if len(clean) >= 3 else times), len(clean)


def measure(comp: Comparison, repeats: int, round_wait: float = 0.0) -> float:
    """Warm up every implementation, then `repeats` rounds, each (after waiting at most round_wait s for an
    idle second) one forward of every implementation, then one forward + backward of each: peer and ours
    alternate, so drift hits both alike. Every run records the other processes' CPU use during it.
    Returns other processes' CPU cores over the whole cell."""
    impls = list(comp.impls.values())
    with OtherCPU() as other:
        for impl in impls:
            impl.run_fwd()
            impl.run_fwd_bwd()
        for _ in range(repeats):
            if round_wait > 0:
                wait_quiet(round_wait, samples=1, interval=1.0)
            for impl in impls:
                t, o = _timed(impl.run_fwd)
                impl.fwd.append(t)
                impl.fwd_other.append(o)
            for impl in impls:
                t, o = _timed(impl.run_fwd_bwd)
                impl.fwd_bwd.append(t)
                impl.fwd_bwd_other.append(o)
    return other.cores


def impl_row(comp: Comparison, key: str, T: int, roofline: float, other: float) -> dict:
    impl = comp.impls[key]
    (fwd, fwd_clean), (fwd_bwd, fwd_bwd_clean) = (robust_median(impl.fwd, impl.fwd_other),
                                                  robust_median(impl.fwd_bwd, impl.fwd_bwd_other))
    gflops = None if impl.flops is None else impl.flops / fwd / 1e9
    return {"target": comp.target, "key": key, "label": impl.label, "side": impl.side, "T": T, "note": impl.note,
            "fwd_s": fwd, "fwd_bwd_s": fwd_bwd, "fwd_times": impl.fwd, "fwd_bwd_times": impl.fwd_bwd,
            "fwd_other": impl.fwd_other, "fwd_bwd_other": impl.fwd_bwd_other, "clean_runs": fwd_clean + fwd_bwd_clean,
            "runs": len(impl.fwd) + len(impl.fwd_bwd),
            "fwd_tok_s": B * T / fwd, "fwd_bwd_tok_s": B * T / fwd_bwd, "gflops_fwd": gflops,
            "roofline_frac_fwd": None if gflops is None else gflops / roofline, "other_cores": other}


def ratio_row(comp: Comparison, ours: dict, peer: dict, target: float | None, what: str) -> dict:
    r_fwd, r_fb = ours["fwd_tok_s"] / peer["fwd_tok_s"], ours["fwd_bwd_tok_s"] / peer["fwd_bwd_tok_s"]
    row = {"target": comp.target, "T": ours["T"], "ours": ours["label"], "peer": peer["label"], "what": what,
           "ratio_fwd": r_fwd, "ratio_fwd_bwd": r_fb, "target_fwd_bwd": target,
           "met": None if target is None else r_fb >= target}
    if comp.target == "ssd" and ours["T"] == 8192:
        row["target_roofline_fwd"] = 0.40
        row["met_roofline"] = ours["roofline_frac_fwd"] >= 0.40
    return row


# ----------------------------------------------------------------------------- report
def _tok(x: float) -> str:
    return f"{x / 1e3:,.1f}k" if x >= 1e3 else f"{x:,.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(result: dict) -> str:
    lines = ["| target | ours | peer | T | ours fwd tok/s | peer fwd tok/s | fwd ratio | ours f+b tok/s "
             "| peer f+b tok/s | **f+b ratio** | target (f+b) | met | ours fwd % roofline | peer fwd % roofline "
             "| roofline GFLOP/s | other CPU | clean runs ours, peer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for c in result["ratios"]:
        o = next(r for r in result["impls"] if r["label"] == c["ours"] and r["T"] == c["T"])
        p = next(r for r in result["impls"] if r["label"] == c["peer"] and r["T"] == c["T"])
        target = "-" if c["target_fwd_bwd"] is None else f">= {c['target_fwd_bwd']:g}x"
        met = "-" if c["met"] is None else ("yes" if c["met"] else "**no**")
        roof = _pct(o["roofline_frac_fwd"])
        if "met_roofline" in c:
            roof += f" (target >= 40%: {'yes' if c['met_roofline'] else '**no**'})"
        lines.append(f"| {c['target']} ({c['what']}) | {c['ours']} | {c['peer']} | {c['T']} | {_tok(o['fwd_tok_s'])} "
                     f"| {_tok(p['fwd_tok_s'])} | {c['ratio_fwd']:.2f}x | {_tok(o['fwd_bwd_tok_s'])} "
                     f"| {_tok(p['fwd_bwd_tok_s'])} | **{c['ratio_fwd_bwd']:.2f}x** | {target} | {met} | {roof} "
                     f"| {_pct(p['roofline_frac_fwd'])} | {c['roofline_gflops']:.0f} | {max(o['other_cores'], p['other_cores']):.2f} "
                     f"| {o['clean_runs']}/{o['runs']}, {p['clean_runs']}/{p['runs']} |")
    cfg = result["config"]
    rf = result["roofline_gflops"]
    lines += ["", f"Batch {cfg['batch']}, {cfg['heads']} heads x {cfg['d_head']}, d_model {cfg['d_model']}, "
                  f"{cfg['dtype']}, {cfg['threads']} threads; {cfg['repeats']} interleaved rounds after one warm-up "
                  f"each; median of the clean runs (other processes busy < {CLEAN} cores during the run) when there "
                  "are at least 3, else of all. Ratio = ours / peer tokens/s (> 1: miras faster).",
              f"Roofline: dense fp32 1024 x 1024 matmul (miras.bench.ops.matmul_roofline), measured in this process "
              f"right before each target x T (column 'roofline'; {rf['before']:.1f} GFLOP/s at the start, "
              f"{rf['after']:.1f} at the end); '% roofline' counts the matrix-multiply FLOPs of the miras FLOP model "
              "over the forward time, '-' where the implementation does not compute the same function.",
              "Other CPU: cores kept busy by other processes during the target's cells (well above 0: contention); "
              "clean runs: of the fwd and f+b runs, those with other CPU below the threshold."]
    return "\n".join(lines)


def run(targets, seqlens, repeats, threads, quiet_wait=0.0, round_wait=0.0, progress=None) -> dict:
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    warnings.filterwarnings("ignore")
    before = matmul_roofline()
    impl_rows, ratio_rows = [], []
    for name in targets:
        for T in seqlens:
            _release_memory()
            waited = wait_quiet(quiet_wait) if quiet_wait > 0 else 0.0
            start = time.time()
            roofline = matmul_roofline()       # in the same quiet window as the cell
            comp = BUILDERS[name](T)
            other = measure(comp, repeats, round_wait)
            rows = {key: {**impl_row(comp, key, T, roofline, other), "roofline_gflops": roofline} for key in comp.impls}
            impl_rows += rows.values()
            for ours, peer, target, what in comp.pairs:
                r = ratio_row(comp, rows[ours], rows[peer], target, what)
                r["waited_s"], r["roofline_gflops"] = waited, roofline
                ratio_rows.append(r)
                print(f"{name:7s} T={T:5d} {what:38s} fwd {r['ratio_fwd']:6.2f}x  f+b {r['ratio_fwd_bwd']:6.2f}x"
                      f"  (target {r['target_fwd_bwd']})", file=sys.stderr, flush=True)
            print(f"{name:7s} T={T:5d} done in {time.time() - start:.0f} s (after waiting {waited:.0f} s for an idle "
                  f"machine), roofline {roofline:.1f} GFLOP/s, other CPU {other:.2f}", file=sys.stderr, flush=True)
            del comp
            if progress:
                progress(impl_rows, ratio_rows)
    after = matmul_roofline()
    versions = {}
    for dist in ("flash-linear-attention", "fla-core", "titans-pytorch"):
        try:
            import importlib.metadata as md
            versions[dist] = md.version(dist)
        except Exception:  # noqa: BLE001
            versions[dist] = "not installed"
    versions["mamba ssd_minimal.py"] = peers._commit("ssd_minimal.py")
    versions["ttt-lm-pytorch ttt.py"] = peers._commit("ttt.py")
    config = {"batch": B, "heads": H, "d_head": DH, "d_state": DSTATE, "d_model": DIM, "chunk": CHUNK,
              "dtype": str(DTYPE), "threads": threads, "seqlens": list(seqlens), "repeats": repeats,
              "targets": list(targets), "quiet_wait_s": quiet_wait,
              "round_wait_s": round_wait, "clean_threshold_cores": CLEAN}
    return {"config": config, "machine": machine(), "peers": versions,
            "roofline_gflops": {"before": before, "after": after}, "impls": impl_rows, "ratios": ratio_rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    ap.add_argument("--seqlens", nargs="+", type=int, default=[2048, 8192])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per implementation and mode (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--round-wait", type=float, default=20.0,
                    help="before each timed round, wait up to this many seconds for an idle second (0: off)")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="before each target x T, wait up to this many seconds for other processes to go idle (0: off)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_peers.json"))
    ap.add_argument("--md", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = lambda i, r: args.out.write_text(json.dumps({"partial": True, "impls": i, "ratios": r}, indent=1))  # noqa
    result = run(args.targets, args.seqlens, args.repeats, args.threads, args.quiet_wait, args.round_wait,
                 progress=partial)
    result["table"] = format_table(result)
    print(result["table"])
    args.out.write_text(json.dumps(result, indent=1))
    if args.md:
        args.md.write_text(result["table"] + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
