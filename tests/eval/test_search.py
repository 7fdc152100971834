"""`miras search` on micro budgets: leaderboard and plot, resume after a stop, invalid points, clear errors."""
import csv
import json

import pytest

from miras.cli import main
from miras.eval.search import SearchConfig, invalid_points, load_space, open_study, pareto_front, search
from miras.space import ConfigError

MICRO = dict(steps=2, min_steps=1, eta=2, seq_len=16, pairs=2, vocab=32, d_model=16, heads=2, n_layers=1,
             batch_size=2, eval_n=4, minutes=0.0, threads=1)
# a small space: 2 x 2 x 2 x 2 points, 6 of them refused (the delta rule with the deep memory or the dot bias)
SPACE = {"memory": ["matrix", "mlp"], "bias": ["l2", "dot"], "retention": ["decay", "none"],
         "algorithm": ["gd", "delta"], "chunk_size": [8]}


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return str(path)


def test_tiny_search_writes_the_leaderboard_csv_and_pareto_plot(tmp_path, space):
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    rows = search(SearchConfig(trials=2, space=space, out_dir=str(out), **MICRO))
    assert len(rows) == 2 and [r["rank"] for r in rows] == [1, 2]
    for row in rows:
        assert row["steps"] in (1, 2) and 0.0 <= row["acc@16"] <= 1.0
        assert row["state@16"] > 0 and row["params"] > 0 and row["train_tok_s"] > 0 and row["decode_tok_s"] > 0
        assert row["spec"].endswith(" c8") and len(row["spec"].split()) == 5
    table = (out / "leaderboard.md").read_text()
    assert "successive halving" in table and f"| {rows[0]['spec']} |" in table
    with open(out / "leaderboard.csv") as f:
        parsed = list(csv.DictReader(f))
    assert [r["spec"] for r in parsed] == [r["spec"] for r in rows] and float(parsed[0]["acc@16"]) >= 0
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "search.lock").exists()


def test_a_stopped_search_resumes_without_training_its_finished_trials_again(tmp_path, space, monkeypatch):
    pytest.importorskip("optuna")
    import miras.train.trainer as trainer
    real, calls = trainer.train, []

    def killed_after_one_trial(cfg, **kw):                  # the 2nd trial's first step: the process is "killed"
        if calls and cfg.run.out_dir != calls[0] and not kw.get("resume"):
            raise KeyboardInterrupt
        calls.append(cfg.run.out_dir)
        return real(cfg, **kw)

    out = tmp_path / "search"
    cfg = SearchConfig(trials=2, space=space, out_dir=str(out), **MICRO)
    monkeypatch.setattr(trainer, "train", killed_after_one_trial)
    with pytest.raises(KeyboardInterrupt):
        search(cfg)
    first_dir, first = calls[0], len(calls)
    assert first == 2 and calls == [first_dir] * 2               # its two rungs
    assert len(list(csv.DictReader(open(out / "leaderboard.csv")))) == 1  # written after each trial

    def counted(cfg, **kw):
        calls.append(cfg.run.out_dir)
        return real(cfg, **kw)
    monkeypatch.setattr(trainer, "train", counted)
    rows = search(cfg)
    assert len(rows) == 2 and int(first_dir[-4:]) in [r["trial"] for r in rows]
    assert first_dir not in calls[first:]                         # the finished trial was not trained again
    study = open_study(cfg, load_space(space))
    states = {t.number: t.state.name for t in study.trials}
    killed = [t for t in study.trials if t.state.name == "FAIL" and "duplicate_of" not in t.user_attrs]
    assert len(killed) == 1 and any(t.user_attrs.get("retry_of") == killed[0].number for t in study.trials), states
    assert sum(s in ("COMPLETE", "PRUNED") and "acc" in t.user_attrs
               for s, t in zip(states.values(), study.trials)) == 2
    assert search(cfg) == rows                                # complete: nothing more to do
    with pytest.raises(ConfigError, match=r"--steps 2 there, 4 now"):
        search(SearchConfig(**{**vars(cfg), "steps": 4}))   # a resumed study keeps its flags


def test_refused_points_are_found_before_the_search_and_an_empty_space_is_an_error(tmp_path, space):
    cfg = SearchConfig(space=space, out_dir=str(tmp_path), **MICRO)
    bad = invalid_points(cfg, load_space(space))
    assert len(bad) == 6 and "delta rule" in bad["mlp l2 decay delta c8"] and "mlp l2 decay gd c8" not in bad
    path = tmp_path / "none.json"
    path.write_text(json.dumps({**SPACE, "memory": ["mlp"], "algorithm": ["delta"]}))
    with pytest.raises(ConfigError, match="--space=.*all 4 are refused"):
        search(SearchConfig(space=str(path), out_dir=str(tmp_path / "x"), **MICRO))
    assert not (tmp_path / "x").exists()


def test_pareto_front_keeps_the_rows_nothing_beats_on_both_axes():
    rows = [{"acc": a, "state": s, "id": i} for i, (a, s) in enumerate([(0.5, 10), (0.4, 20), (0.9, 40), (0.9, 80),
                                                                         (1.0, 100), (0.2, 5)])]
    assert [r["id"] for r in pareto_front(rows, "acc", "state")] == [5, 0, 2, 4]


BAD = [
    (["--trials", "0"], "--trials=0"),
    (["--minutes", "-1"], "--minutes=-1.0"),
    (["--minutes", "nan"], "--minutes=nan"),
    (["--steps", "0"], "--steps=0"),
    (["--eta", "1"], "--eta=1"),
    (["--min-steps", "700"], "--min-steps=700"),
    (["--seq-len", "4"], "--seq-len=4"),
    (["--space", "{dir}/missing.toml"], "--space='{dir}/missing.toml'"),
    (["--space", "{dir}/axis.json"], "--space {dir}/axis.json=['memry']"),
    (["--space", "{dir}/param.json"], "--space {dir}/param.json: spec.bias=\"lp with ['q']\""),
    (["--space", "{dir}/name.json"], "spec.retention.name='decey'"),
    (["--space", "{dir}/chunks.json"], "chunk_size=[0]"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(f) for f, _ in BAD])
def test_bad_flags_exit_2_with_one_paragraph_and_write_nothing(flags, message, tmp_path, capsys):
    for name, data in {"axis": {"memry": ["mlp"]}, "param": {"bias": [{"name": "lp", "q": 3}]},
                       "name": {"retention": ["decey"]}, "chunks": {"chunk_size": [0]}}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    argv = ["search", *[f.format(dir=tmp_path) for f in flags], "--out-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("miras search: error: ") and message.format(dir=tmp_path) in err, err
    assert "Traceback" not in err and err.count("\n") == 1 and ("allowed" in err or "fix" in err)
    assert not out.exists()


def test_a_second_search_in_the_same_folder_is_refused(tmp_path, space, capsys):
    pytest.importorskip("optuna")
    import os
    import socket
    out = tmp_path / "out"
    out.mkdir()
    (out / "search.lock").write_text(f"{socket.gethostname()} {os.getppid()}\n")   # a live process
    assert main(["search", "--space", space, "--out-dir", str(out), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "no other search is running in (process" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["search.lock"]
