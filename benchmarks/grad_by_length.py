"""How a memory layer's gradient grows with the sequence length: one layer, float64, random input, seed 0.

    python benchmarks/grad_by_length.py                                   # the MIRAS presets and Titans, 64..2048
    python benchmarks/grad_by_length.py --presets moneta --lr-max 0.03,0.01 --lengths 512,2048
    python benchmarks/grad_by_length.py --presets moneta --bias l2        # Moneta with the L2 bias in its place

Prints the norm of the key projection's gradient of mean(y^2) per preset and length (batch 1, d_model 56, 2 heads:
the recall benchmark's width). A stable memory keeps it of the order of its value at short lengths; growth by
orders of magnitude means the layer's backward is unstable at that length, and a trainer clipping at norm 1 then
shrinks every other parameter's step.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from miras.layers.memory import MemoryLayer  # noqa: E402
from miras.space import get_preset  # noqa: E402
from miras.space.bias import L2  # noqa: E402


def key_grad_norm(spec, T: int, lr_max: float | None, d_model: int = 56, heads: int = 2) -> float:
    x = torch.randn(1, T, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    layer = MemoryLayer(spec, d_model, heads, lr_max=lr_max).double()
    y = layer(x)[0]
    y.pow(2).mean().backward()
    return layer.proj.k.weight.grad.norm().item()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="titans-lmm,moneta,yaad,memora")
    p.add_argument("--lengths", default="64,128,256,512,2048")
    p.add_argument("--lr-max", default="", help="comma-separated inner-step bounds (default: the layer's own)")
    p.add_argument("--bias", choices=("preset", "l2"), default="preset", help="l2: the L2 bias in the preset's place")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(t) for t in args.lengths.split(",")]
    lr_maxes = [float(v) for v in args.lr_max.split(",") if v] or [None]
    print("| preset | bias | lr_max | " + " | ".join(f"T={T}" for T in lengths) + " |")
    print("|---|---|---|" + "---:|" * len(lengths))
    for name in args.presets.split(","):
        spec = get_preset(name).spec
        if args.bias == "l2":
            spec = dataclasses.replace(spec, bias=L2())
        for lr_max in lr_maxes:
            norms = [key_grad_norm(spec, T, lr_max) for T in lengths]
            print(f"| {name} | {spec.bias.name} | {lr_max if lr_max is not None else 'default'} | "
                  + " | ".join(f"{g:.3g}" for g in norms) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
