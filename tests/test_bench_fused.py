"""benchmarks/bench_fused.py end to end at a tiny size (so that it cannot rot), and its one-line refusals."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_fused",
                                              Path(__file__).parents[1] / "benchmarks" / "bench_fused.py")
bench_fused = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_fused)


def test_prints_one_row_per_preset(capsys):
    assert bench_fused.main(["--presets", "titans-lmm", "memora", "--seqlen", "32", "--model-seqlen", "16",
                             "--batch", "1", "--d-model", "16", "--repeats", "1", "--threads", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| titans-lmm") or
            line.startswith("| memora")]
    assert len(rows) == 2 and all(row.count("x |") == 2 for row in rows)


@pytest.mark.parametrize("argv, said", [(["--presets", "gated-deltanet"], "no hand-written op"),
                                        (["--presets", "nope"], "invalid"), (["--seqlen", "0"], "--seqlen 0")])
def test_bad_arguments_are_one_line(argv, said, capsys):
    assert bench_fused.main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
