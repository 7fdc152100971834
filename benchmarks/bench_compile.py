"""torch.compile against eager on CPU: compile time and steady-state forward + backward speed, in one process.

    python benchmarks/bench_compile.py                        # everything (cold compile caches: about half an hour)
    python benchmarks/bench_compile.py --ops mamba2 --train none --repeats 2     # one op
    python benchmarks/bench_compile.py --ops none --train titans-lmm --modes both --steps 3   # run.compile=true

Ops: memory_op(compile=False / True) (ops/compiled.py: the op compiled in segments of SEGMENT_TOKENS tokens; here
every chunked family, also those COMPILED_OPS leaves eager) on random inputs, B = 1, H = 4, d = 64, float32, forward +
backward of a fixed projection of the output. Training: the trainer's step on a model of --size (`train_case`),
eager against the compiled modes, which take turns step by step.

Columns: tok/s at steady state (the best of --repeats / later steps, after the call that compiles), the compile
time (the first compiled call minus a steady one, less the eager first call's own overhead for training; with fresh
inductor caches unless --warm-cache), the speedup, and the break-even: how many tokens (ops) or steps (training) the
faster steady state takes to pay the compile time back ("never" when compiled is not faster). rel err: compiled
against eager on the first 256 outputs (long fp32 runs of the random deep memories drift apart, as fp32 and fp64
do). On a busy machine the numbers are indicative: run it on a quiet one.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

OP_PRESETS = {"mamba2": "ssd", "gated-deltanet": "delta", "titans-lmm": "minibatch", "ttt-linear": "minibatch"}
TRAIN_PRESETS = ("titans-lmm", "gated-deltanet", "mamba2", "transformer")


def op_case(preset: str, T: int, repeats: int, heads: int = 4, d: int = 64) -> dict:
    """Eager and compiled forward + backward seconds of the preset's op at T tokens."""
    import torch

    from miras.ops.dispatch import memory_op, select_op
    from miras.ops.inputs import random_inputs
    from miras.space import get_preset
    spec = get_preset(preset).spec
    q, k, v, gates, state = random_inputs(spec, 1, T, heads, d, d, torch.float32, requires_grad=True)
    leaves = [t for t in (q, k, v, *gates.values(), *state.tensors().values()) if t.requires_grad]
    weights = torch.randn(1, T, heads, d, generator=torch.Generator().manual_seed(1))

    def step(compile: bool) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        y, _ = memory_op(spec, q, k, v, gates, state, compile=compile)
        torch.autograd.grad((y * weights).sum(), leaves, allow_unused=True)
        return time.perf_counter() - start, y.detach()

    eager_y = step(False)[1]                                   # warm-up
    first, compiled_y = step(True)                             # compiles (forward, then backward)
    eager, compiled = [], []
    for _ in range(repeats):                                   # interleaved: both see the same machine load
        eager.append(step(False)[0])
        compiled.append(step(True)[0])
    n = min(T, 256)          # the first segment (a long random-input run can be chaotic in fp32: compare its start)
    err = ((compiled_y[:, :n] - eager_y[:, :n]).norm() / eager_y[:, :n].norm()).item()
    return {"preset": preset, "op": select_op(spec), "T": T, "eager_s": min(eager), "compiled_s": min(compiled),
            "compile_s": first - min(compiled), "rel_err": err}


def train_case(preset: str, steps: int, size: str, seq_len: int, batch: int, modes: tuple[str, ...]) -> dict:
    """Seconds per training step of the preset's model in each mode: the trainer's step (forward, cross-entropy,
    backward, clipping, AdamW) on random byte tokens. Modes: "eager"; "ops": the memory layers' ops compiled in
    segments (MemoryLayer.compile); "model": torch.compile of the whole model (the ops traced into its graph);
    "both": the two, the ops compiled on their own (what run.compile=true does). The modes take turns on the same
    model, step by step, so that all see the same machine load; each compiles with its own inductor cache (a cold
    one unless --warm-cache). -> mode -> (first step s, best later step s)."""
    import torch

    from miras.layers.memory import MemoryLayer
    from miras.models.lm import MirasLM, cross_entropy
    from miras.train import config as train_config
    from miras.train.optim import build_optimizer
    from miras.train.trainer import model_config
    cfg = train_config.load_run_config(None, [f"model.preset={preset}", f"size={size}", f"data.seq_len={seq_len}",
                                              f"optim.batch_size={batch}"])
    torch.manual_seed(0)
    model = MirasLM(model_config(cfg, 256))
    optimizer = build_optimizer(model, cfg.optim)
    whole = torch.compile(model) if {"model", "both"} & set(modes) else None
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    ids = torch.randint(0, 256, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))

    def step(mode: str) -> float:
        for m in model.modules():
            if isinstance(m, MemoryLayer):
                m.compile = mode in ("ops", "both")
        if cache:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = f"{cache}-{mode}"
        start = time.perf_counter()
        logits = (whole if mode in ("model", "both") else model)(ids[:, :-1])[0]
        cross_entropy(logits, ids[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {mode: [] for mode in modes}
    for _ in range(steps):
        for mode in modes:
            times[mode].append(step(mode))
    return {"preset": preset, "parameters": sum(p.numel() for p in model.parameters()), "tokens": batch * seq_len,
            **{mode: (t[0], min(t[1:])) for mode, t in times.items()}}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def break_even(compile_s: float, eager_s: float, compiled_s: float, units: float) -> str:
    """Units (tokens or steps) after which the compiled run has caught up with the eager one."""
    saved = eager_s - compiled_s
    return "never" if saved <= 0 else _num(compile_s / saved * units)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", default=",".join(OP_PRESETS), help="presets whose op to time ('none': skip)")
    p.add_argument("--train", default=",".join(TRAIN_PRESETS), help="presets to train ('none': skip)")
    p.add_argument("--T", type=int, default=2048, help="op sequence length (default 2048)")
    p.add_argument("--segment", type=int, help="ops/compiled.py SEGMENT_TOKENS (default: its own, 512)")
    p.add_argument("--repeats", type=int, default=3, help="steady-state repeats per op (the best is kept)")
    p.add_argument("--steps", type=int, default=6, help="training steps per mode (default 6)")
    p.add_argument("--modes", default="ops,model,both", help="compiled training modes: ops (the memory ops), model "
                   "(torch.compile of the whole model), both (run.compile=true)")
    p.add_argument("--size", default="small", help="training model size (default small)")
    p.add_argument("--seq-len", type=int, default=256, help="training sequence length (default 256)")
    p.add_argument("--batch", type=int, default=8, help="training batch size (default 8)")
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache (default: a fresh one, "
                   "so compile times are cold)")
    args = p.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="bench_compile_")
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp.name) / "inductor")
    import torch

    import miras.ops.compiled as compiled
    if args.segment:
        compiled.SEGMENT_TOKENS = args.segment
    compiled.COMPILED_OPS = ("ssd", "delta", "minibatch")   # measure every family (memory_op compiles COMPILED_OPS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cold cache: {not args.warm_cache}, "
          f"segment {compiled.SEGMENT_TOKENS} tokens", flush=True)
    ops = [x for x in args.ops.split(",") if x and x != "none"]
    if ops:
        print(f"\nops, forward + backward, T = {args.T}, B = 1, H = 4, d = 64, fp32\n"
              f"{'preset':16}{'op':11}{'eager tok/s':>12}{'compiled':>10}{'speedup':>9}{'compile s':>11}"
              f"{'break-even tokens':>19}{'rel err':>9}", flush=True)
        for preset in ops:
            r = op_case(preset, args.T, args.repeats)
            print(f"{preset:16}{r['op']:11}{_num(args.T / r['eager_s']):>12}{_num(args.T / r['compiled_s']):>10}"
                  f"{r['eager_s'] / r['compiled_s']:>8.2f}x{r['compile_s']:>11.1f}"
                  f"{break_even(r['compile_s'], r['eager_s'], r['compiled_s'], args.T):>19}{r['rel_err']:>9.1e}",
                  flush=True)
    presets = [x for x in args.train.split(",") if x and x != "none"]
    modes = ("eager", *[m for m in args.modes.split(",") if m != "eager"])
    if presets:
        print(f"\ntraining steps, size={args.size}, seq_len {args.seq_len}, batch {args.batch}, {args.steps} steps "
              f"per mode\n{'preset':16}{'params':>8}{'mode':>7}{'tok/s':>9}{'speedup':>9}{'compile s':>11}"
              f"{'break-even steps':>18}", flush=True)
        for preset in presets:
            r = train_case(preset, args.steps, args.size, args.seq_len, args.batch, modes)
            e_first, e_step = r["eager"]
            for mode in modes:
                first, best = r[mode]
                compile_s = (first - best) - (e_first - e_step)
                print(f"{preset:16}{r['parameters'] / 1e6:>7.1f}M{mode:>7}{_num(r['tokens'] / best):>9}"
                      f"{e_step / best:>8.2f}x" + ("" if mode == "eager" else
                      f"{compile_s:>11.1f}{break_even(compile_s, e_step, best, 1):>18}"), flush=True)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
