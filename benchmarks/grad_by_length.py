"""How a memory layer's gradient and its sensitivity to its input grow with the sequence length: one layer,
float64, random input, seed 0.

    python benchmarks/grad_by_length.py                                   # the MIRAS presets and Titans, 64..2048
    python benchmarks/grad_by_length.py --presets moneta --lr-max 0.1,0.01 --lengths 512,2048,8192
    python benchmarks/grad_by_length.py --presets moneta --alpha 0.9933,0.999,0.9997 --lengths 512,2048,8192
    python benchmarks/grad_by_length.py --presets moneta --bias l2        # Moneta with the L2 bias in its place
    python benchmarks/grad_by_length.py --presets moneta --retention decay
    python benchmarks/grad_by_length.py --presets moneta --toward zero --lr-max 0.1   # Moneta's retention toward 0

For each preset and length T it prints two numbers (batch 1, d_model 56, 2 heads: the recall benchmark's width):
  grad   the norm of the key projection's gradient of mean(y^2). A stable memory keeps it of the order of its value
         at short lengths; growth by orders of magnitude means the layer's backward is unstable at that length, and
         a trainer clipping at norm 1 then shrinks every other parameter's step.
  amp    how much a perturbation of the input grows by the last token: max |y'_T - y_T| / 1e-9 for x' = x + 1e-9 z,
         z ~ N(0, 1). About 1 for a stable memory; 1e6 and more means the memory's own dynamics amplify small
         differences exponentially (they are chaotic), which is what makes the gradient grow.
--alpha sets the retention gate's value at initialization (the default is sigmoid(5) = 0.9933); --lr-max the bound
on the inner step (the default: the preset's, else the layer's 0.1); --bias l2 and --retention decay swap one axis
of the preset; --toward zero / init aims the preset's decay at 0 or at the initial state W0 (moneta's).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from miras.errors import ConfigError  # noqa: E402
from miras.layers.memory import MemoryLayer  # noqa: E402
from miras.space import get_preset  # noqa: E402
from miras.space.bias import L2  # noqa: E402
from miras.space.retention import Decay, decays_toward_prior  # noqa: E402

PERTURBATION = 1e-9


def probe(spec, T: int, lr_max: float | None, alpha: float | None, d_model: int = 56, heads: int = 2
          ) -> tuple[float, float]:
    """(grad, amp) of one fresh layer on a length-T random input (the module docstring)."""
    x = torch.randn(1, T, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, T, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    layer = MemoryLayer(spec, d_model, heads, lr_max=lr_max).double()
    if alpha is not None:
        torch.nn.init.constant_(layer.gates["log_alpha"].up.bias, math.log(alpha / (1.0 - alpha)))
    y = layer(x)[0]
    y.pow(2).mean().backward()
    with torch.no_grad():
        moved = layer(x + PERTURBATION * z)[0]
    return layer.proj.k.weight.grad.norm().item(), (moved - y)[:, -1].abs().max().item() / PERTURBATION


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="titans-lmm,moneta,yaad,memora")
    p.add_argument("--lengths", default="64,128,256,512,2048")
    p.add_argument("--lr-max", default="", help="comma-separated inner-step bounds (default: the preset's, else the "
                                                "layer's 0.1)")
    p.add_argument("--alpha", default="", help="comma-separated retention values at initialization (default: the "
                                               "gate's own, 0.9933); presets with a decaying retention only")
    p.add_argument("--bias", choices=("preset", "l2"), default="preset", help="l2: the L2 bias in the preset's place")
    p.add_argument("--retention", choices=("preset", "decay"), default="preset",
                   help="decay: plain L2 decay (W = A) in the preset's place")
    p.add_argument("--toward", choices=("preset", "zero", "init"), default="preset",
                   help="the preset's decaying retention toward 0 or toward the initial state W0 (as moneta's)")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        lengths = [int(t) for t in args.lengths.split(",")]
        lr_maxes = [float(v) for v in args.lr_max.split(",") if v] or [None]
        alphas = [float(v) for v in args.alpha.split(",") if v] or [None]
    except ValueError as e:
        p.error(f"--lengths, --lr-max and --alpha take comma-separated numbers ({e})")
    if min(lengths) < 1:
        p.error(f"--lengths {args.lengths}: each length must be >= 1")
    for a in alphas:
        if a is not None and not 0.0 < a < 1.0:
            p.error(f"--alpha {a}: each value must lie in (0, 1), e.g. 0.999")
    specs = {}
    for name in args.presets.split(","):
        try:
            preset = get_preset(name)
        except ConfigError as e:
            p.error(str(e))
        spec = preset.spec
        if args.bias == "l2":
            spec = dataclasses.replace(spec, bias=L2())
        if args.retention == "decay":
            spec = dataclasses.replace(spec, retention=Decay())
        if args.toward != "preset":
            if not hasattr(spec.retention, "toward"):
                p.error(f"--toward: preset {name}'s retention {spec.retention.name!r} has no decay to aim")
            spec = dataclasses.replace(spec, retention=dataclasses.replace(spec.retention, toward=args.toward))
        if alphas != [None] and "log_alpha" not in spec.gates:
            p.error(f"--alpha: preset {name} has no decaying retention gate")
        specs[name] = spec, preset.lr_max
    print("| preset | bias | retention | lr_max | alpha | " + " | ".join(f"T={T} grad / amp" for T in lengths) + " |")
    print("|---|---|---|---|---|" + "---:|" * len(lengths))
    for name, (spec, own_lr_max) in specs.items():
        for lr_max in lr_maxes:
            lr_max = own_lr_max if lr_max is None else lr_max
            for alpha in alphas:
                cells = [probe(spec, T, lr_max, alpha) for T in lengths]
                toward = " toward W0" if decays_toward_prior(spec.retention) else ""
                print(f"| {name} | {spec.bias.name} | {spec.retention.name}{toward} | "
                      f"{lr_max if lr_max is not None else 0.1} | {alpha if alpha is not None else 'default'} | "
                      + " | ".join(f"{g:.3g} / {a:.2g}" for g, a in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
