"""Every bad input of the `miras` command line (tests/bad_inputs_table.py): exit code 2 (or the documented one),
stderr one paragraph naming the field and value, no traceback, and the run folder byte-identical.

Most cases call miras.cli.main in-process (a subprocess costs 2-3 s of start-up and torch import); the cases
marked `subprocess` also run as a real `miras` process, to prove that no traceback reaches a terminal.
`python benchmarks/bad_inputs.py` runs the same table (and more, with --long) and prints a summary.
"""
import pytest

from miras.cli import main
from tests.bad_inputs_table import CASES, TINY, as_process, run_case


def params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in cases]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step tiny run with checkpoints step-000002 and step-000004 (each case copies it)."""
    run = tmp_path_factory.mktemp("bad_inputs") / "finished"
    assert main(["train", *TINY, f"run.out_dir={run}", "optim.steps=4", "run.save_every=2"]) == 0
    return run


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input_is_a_clear_error_and_changes_nothing(case, finished, tmp_path):
    outcome = run_case(case, tmp_path, finished)
    assert not outcome.problems(case), f"{outcome.problems(case)}\nexit code {outcome.code}\nstderr:\n{outcome.err}"


@pytest.mark.parametrize("case", params([c for c in CASES if c.subprocess]))
def test_as_a_real_process_no_traceback_reaches_the_terminal(case, finished, tmp_path):
    outcome = run_case(case, tmp_path, finished, call=lambda argv: as_process(argv, tmp_path))
    assert not outcome.problems(case), f"{outcome.problems(case)}\nexit code {outcome.code}\nstderr:\n{outcome.err}"


def test_the_table_covers_every_category_once_per_name():
    assert len({c.id for c in CASES}) == len(CASES)
    categories = {c.category for c in CASES}
    assert {"train overrides", "config files", "resume", "eval", "demo", "plot", "compare", "bench", "lm-eval",
            "abbreviations"} <= categories
    assert 3 <= sum(c.subprocess for c in CASES) <= 5
