"""Ops benchmark (`miras bench ops`): run as `python benchmarks/bench_ops.py [flags]`; see miras/bench/ops.py."""
import sys

from miras.bench.ops import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
