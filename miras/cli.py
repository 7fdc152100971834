"""`miras` command line: presets, demo (and later bench, train, eval, compare, generate)."""
from __future__ import annotations

import argparse
import sys

import torch


def _presets(args) -> None:
    from .spec import get_preset, list_presets
    for name in list_presets():
        p = get_preset(name)
        ax = p.spec.axes()
        print(f"{name:17s} block={p.block:11s} memory={ax['memory']} | bias={ax['bias']} | "
              f"retention={ax['retention']} | algorithm={ax['algorithm']} | chunk={p.spec.chunk_size}")


def _demo(args) -> None:
    from .demo import format_table, run_demo
    print(f"Recurrent reference of every preset: batch 1, T={args.seqlen}, {args.heads} heads of dim {args.d_head}, "
          f"float32, {torch.get_num_threads()} threads\n")
    print(format_table(run_demo(args.seqlen, args.heads, args.d_head)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="miras", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list the named models and their four axes").set_defaults(fn=_presets)
    demo = sub.add_parser("demo", help="run every preset's recurrent reference on a random batch")
    demo.add_argument("--seqlen", type=int, default=64)
    demo.add_argument("--heads", type=int, default=2)
    demo.add_argument("--d-head", type=int, default=16)
    demo.set_defaults(fn=_demo)
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
