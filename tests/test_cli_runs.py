"""`miras train / eval / demo / plot` on bad input: exit 2 with one paragraph (no traceback); resume via the CLI."""
import json

import pytest

from miras.cli import main

TINY = ["size=", "run.max_minutes=0", "model.preset=gated-deltanet", "model.d_model=16", "model.heads=2",
        "model.n_layers=1", "model.chunk_size=8", "data.seq_len=32", "optim.batch_size=2", "optim.warmup_steps=1",
        "run.threads=1", "run.eval_batches=1", "run.eval_every=100", "run.log_every=1"]


def refused(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, f"run.out_dir={out}", "optim.steps=2", "run.save_every=2"]) == 0
    return out


@pytest.mark.parametrize("override,pattern", [
    ("run.save_every=0", "run.save_every=0 is invalid"),
    ("run.threads=100000", "run.threads=100000 is invalid"),
    ("run.seed=1e23", "run.seed=99999999999999991611392 is invalid"),
    ("optim.betas=[0.9]", "optim.betas=(0.9,) is invalid"),
    ("model.chunk_size=abc", "chunk_size='abc' is invalid"),
])
def test_train_bad_values_exit_2_in_one_paragraph(tmp_path, capsys, override, pattern):
    refused(capsys, ["train", *TINY, f"run.out_dir={tmp_path / 'r'}", override], f"miras train: error: {pattern}")


def test_train_config_file_that_is_a_list_exits_2(tmp_path, capsys):
    (tmp_path / "c.json").write_text("[]")
    refused(capsys, ["train", "--config", str(tmp_path / "c.json")], "holds a list")


@pytest.mark.parametrize("argv,pattern", [
    (["demo", "--seqlen", "-3"], "seqlen=-3 is invalid"),
    (["demo", "--heads", "0"], "heads=0 is invalid"),
])
def test_demo_bad_sizes_exit_2(capsys, argv, pattern):
    refused(capsys, argv, pattern)


def test_eval_negative_length_exits_2(run, capsys):
    refused(capsys, ["eval", str(run), "--lengths", "-5"], "lengths=[-5] is invalid: allowed context lengths >= 2")


def test_plot_skips_a_partial_last_line_with_a_note(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    lines = (run / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(lines + '{"kind": "train", "st')
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "loss.png")]) == 0
    assert "note: skipped the partial last line" in capsys.readouterr().err
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_abbreviated_flags_are_refused(run):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resum", f"run.out_dir={run}"])
    assert exit_.value.code == 2


def test_resume_uses_the_runs_config_and_says_when_it_is_already_complete(run, tmp_path, capsys):
    import shutil
    shutil.copytree(run, tmp_path / "run")
    out = tmp_path / "run"
    assert main(["train", "--resume", f"run.out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert "already complete" in printed and "nan" not in printed
    assert main(["train", "--resume", f"run.out_dir={out}", "optim.steps=3"]) == 0   # no need to repeat TINY
    assert json.loads((out / "config.json").read_text())["optim"]["steps"] == 3
    assert "done: 3 steps" in capsys.readouterr().out
    refused(capsys, ["train", "--resume", f"run.out_dir={out}", "optim.lr=0.5"], "these fields differ: optim.lr")
    refused(capsys, ["train", *TINY, f"run.out_dir={out}"], "allowed a new or empty folder for a fresh run")
    refused(capsys, ["train", "--resume", f"run.out_dir={tmp_path / 'none'}"], "a `miras train` run folder")


def test_a_non_finite_loss_stops_with_exit_1_and_one_paragraph(tmp_path, capsys, monkeypatch):
    import miras.train.trainer as trainer
    real = trainer.cross_entropy
    monkeypatch.setattr(trainer, "cross_entropy", lambda logits, labels: real(logits, labels) * float("nan"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", *TINY, f"run.out_dir={tmp_path / 'r'}", "optim.steps=2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "miras train: stopped: non-finite loss nan at step 0" in err
