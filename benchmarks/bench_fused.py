"""The hand-written mini-batch ops against the generic engine, in one process: forward + backward of the memory op
(B = 1, 4 heads of dim 64) and one training step of a small language model (the S-NIAH model of benchmarks/recall.py:
2 layers, 2 heads, batch 8), each timed with the op and with the generic engine, alternating, median of the repeats.

    python benchmarks/bench_fused.py                       # titans-lmm, moneta, yaad, memora, ttt-linear
    python benchmarks/bench_fused.py --presets moneta --seqlen 2048 --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from miras.models import MirasConfig, MirasLM
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk as engine
from miras.space import get_preset

DEFAULT = ["titans-lmm", "moneta", "yaad", "memora", "ttt-linear"]


def _op_step(spec, T: int):
    q, k, v, g, st = random_inputs(spec, batch=1, seqlen=T, heads=4, d_k=64, d_v=64, dtype=torch.float32,
                                   requires_grad=True)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(0))

    def step():
        y, _ = engine.chunk_minibatch(spec, q, k, v, g, st)
        (y * w).sum().backward()
    return step


def _model_step(name: str, d_model: int, T: int, batch: int):
    model = MirasLM(MirasConfig(preset=name, vocab_size=256, d_model=d_model, heads=2, n_layers=2))
    x = torch.randint(0, 256, (batch, T), generator=torch.Generator().manual_seed(0))

    def step():
        model.zero_grad(set_to_none=True)
        model(x)[0].float().logsumexp(-1).mean().backward()
    return step


def timed(step, repeats: int) -> dict[str, float]:
    """Seconds per call with the op and with the generic engine (engine.FUSED without the spec's op), alternating
    after one warm-up of each, medians."""
    fused, times = engine.FUSED, {"op": [], "generic": []}
    try:
        for rep in range(repeats + 1):
            for label in ("generic", "op"):
                engine.FUSED = fused if label == "op" else ()
                t0 = time.perf_counter()
                step()
                if rep:
                    times[label].append(time.perf_counter() - t0)
    finally:
        engine.FUSED = fused
    return {label: statistics.median(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=DEFAULT)
    p.add_argument("--seqlen", type=int, default=2048, help="op tokens (default 2048)")
    p.add_argument("--model-seqlen", type=int, default=512, help="model tokens per row (default 512)")
    p.add_argument("--batch", type=int, default=8, help="model batch (default 8)")
    p.add_argument("--d-model", type=int, default=56, help="model width (default 56, moneta's S-NIAH width)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    for flag in ("seqlen", "model_seqlen", "batch", "d_model", "repeats", "threads"):
        if getattr(a, flag) < 1:
            print(f"bench_fused: --{flag.replace('_', '-')} {getattr(a, flag)}: must be >= 1", file=sys.stderr)
            return 2
    for name in a.presets:
        try:
            spec = get_preset(name).spec
        except Exception as err:                               # an unknown name: one line, the list to pick from
            print(f"bench_fused: {err}", file=sys.stderr)
            return 2
        if not any(f.applies(spec) for f in engine.FUSED):
            print(f"bench_fused: {name} has no hand-written op (FUSED: linear_ln, mlp2)", file=sys.stderr)
            return 2
    torch.set_num_threads(a.threads)
    print(f"{a.threads} threads; op: B = 1, H = 4, d = 64, T = {a.seqlen}; model: d_model {a.d_model}, 2 layers, "
          f"2 heads, batch {a.batch} x {a.model_seqlen}; median of {a.repeats}, alternating\n")
    print("| preset | op tok/s: generic | op tok/s: hand-written | speed-up | train tok/s: generic "
          "| train tok/s: hand-written | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in a.presets:
        op = timed(_op_step(get_preset(name).spec, a.seqlen), a.repeats)
        lm = timed(_model_step(name, a.d_model, a.model_seqlen, a.batch), a.repeats)
        n_lm = a.batch * a.model_seqlen
        print(f"| {name} | {a.seqlen / op['generic']:,.0f} | {a.seqlen / op['op']:,.0f} | "
              f"{op['generic'] / op['op']:.2f}x | {n_lm / lm['generic']:,.0f} | {n_lm / lm['op']:,.0f} | "
              f"{lm['generic'] / lm['op']:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
