"""Decode benchmark (`miras bench decode`): run as `python benchmarks/bench_decode.py [flags]`;
see miras/bench/decode.py."""
import sys

from miras.bench.decode import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
