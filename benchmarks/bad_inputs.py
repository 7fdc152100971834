"""The bad-input table of tests/test_cli_bad_inputs.py as a summary (not CI): per category, how many cases gave a
clear error, a traceback, nothing (exit 0 where an error was expected), or changed a run folder.

    python benchmarks/bad_inputs.py            # the table of tests/bad_inputs_table.py, in-process
    python benchmarks/bad_inputs.py --long     # ... plus random bad overrides (fixed seed)
    python benchmarks/bad_inputs.py --process  # every case as a real `miras` process (slow: ~2 s each)
    python benchmarks/bad_inputs.py -v         # ... and every case that is not a clear error, with its stderr

A case marked xfail in the table is a known bug; it is counted like any other (the table shows what a user meets).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from miras.cli import main  # noqa: E402
from tests.bad_inputs_table import CASES, TINY, as_process, long_cases, run_case  # noqa: E402

COLUMNS = ["clear", "traceback", "silent", "data lost", "unclear"]


def run(cases, process: bool, verbose: bool) -> dict:
    counts: dict[str, Counter] = defaultdict(Counter)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        finished = scratch / "finished"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", *TINY, f"run.out_dir={finished}", "optim.steps=4", "run.save_every=2"]) == 0
        for i, case in enumerate(cases):
            tmp = scratch / f"case{i}"
            tmp.mkdir()
            call = (lambda argv, tmp=tmp: as_process(argv, tmp)) if process else None
            outcome = run_case(case, tmp, finished, call)
            verdict = outcome.verdict(case)
            counts[case.category][verdict] += 1
            if verbose and verdict != "clear":
                print(f"[{verdict}] {case.id}{' (known: ' + case.xfail + ')' if case.xfail else ''}: "
                      f"{outcome.problems(case)}\n    {outcome.err.strip()[-300:]}", file=sys.stderr)
    return counts


def table(counts: dict) -> str:
    head = ["category", "cases tried", "clear errors", "tracebacks", "silent", "data lost", "unclear"]
    rows = [[cat, sum(c.values()), *(c[k] for k in COLUMNS)] for cat, c in counts.items()]
    total = Counter()
    for c in counts.values():
        total.update(c)
    rows.append(["total", sum(total.values()), *(total[k] for k in COLUMNS)])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--long", action="store_true", help="add random bad overrides (fixed seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --long's cases (default 0)")
    parser.add_argument("--count", type=int, default=300, help="--long's random cases (default 300)")
    parser.add_argument("--process", action="store_true", help="run every case as a real `miras` process")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case that is not a clear error")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = CASES + (long_cases(args.seed, args.count) if args.long else [])
    start = time.time()
    counts = run(cases, args.process, args.verbose)
    print(table(counts))
    print(f"\n{len(cases)} cases in {time.time() - start:.0f} s ({'processes' if args.process else 'in-process'}, "
          f"{sum(bool(c.xfail) for c in cases)} known bugs marked xfail in tests/bad_inputs_table.py)")


if __name__ == "__main__":
    cli()
