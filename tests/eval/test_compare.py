"""compare and eval end to end on micro budgets: tables, plots, results, clear errors."""
import json

import pytest

from miras.eval.compare import CompareConfig, compare
from miras.eval.evaluate import evaluate_run
from miras.eval.load import load_run
from miras.space import ConfigError
from miras.train.config import load_run_config
from miras.train.trainer import train

MICRO = dict(seq_len=32, pairs=2, vocab=64, d_model=16, heads=2, n_layers=1, chunk_size=8, steps=3, batch_size=4,
             eval_n=8, eval_lengths=[32, 64], minutes=0.0, threads=1)


def test_compare_writes_table_csv_results_and_plots(tmp_path):
    rows = compare(CompareConfig(presets=["gated-deltanet", "transformer"], out_dir=str(tmp_path), **MICRO))
    assert [r["preset"] for r in rows] == ["gated-deltanet", "transformer"]
    for row in rows:
        assert row["steps"] == 3 and row["params"] > 0 and 0.0 <= row["acc@32"] <= 1.0
    # recurrent state is constant; the transformer's KV cache grows with the sequence
    assert rows[0]["state@32"] < rows[1]["state@32"]
    table = (tmp_path / "table.md").read_text()
    assert "| gated-deltanet |" in table and "acc@64" in table
    assert (tmp_path / "table.csv").read_text().count("\n") == 3
    assert json.loads((tmp_path / "results.json").read_text())["config"]["pairs"] == 2
    for png in ("loss.png", "accuracy_vs_length.png", "throughput_vs_length.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_compare_rejects_unknown_presets_listing_valid_ones():
    with pytest.raises(ConfigError, match="preset='rnn'.*titans-lmm"):
        CompareConfig(presets=["rnn"])


def tiny_text_run(tmp_path, *extra):
    cfg = load_run_config(None, ["size=", "run.max_minutes=0", "model.preset=gated-deltanet",
                                 "model.d_model=16", "model.heads=2", "model.n_layers=1",
                                 "data.seq_len=32", "optim.batch_size=2", "optim.steps=2", "run.threads=1",
                                 f"run.out_dir={tmp_path}", *extra])
    train(cfg)
    return tmp_path


def test_eval_text_run_gives_perplexity_by_position_and_a_needle_grid(tmp_path):
    run = tiny_text_run(tmp_path)
    results = evaluate_run(run, lengths=[400, 512], depths=2, needles=1, windows=1)
    buckets = results["perplexity"]["buckets"]
    assert [(b["lo"], b["hi"]) for b in buckets] == [(0, 64), (64, 128), (128, 256), (256, 512)]
    assert all(b["loss"] > 0 for b in buckets)
    assert len(results["niah"]["accuracy"]) == 2 and len(results["niah"]["accuracy"][0]) == 2
    for png in ("loss_by_position.png", "niah_heatmap.png"):
        assert (run / "eval" / png).is_file()


def test_eval_niah_run_scores_the_noise_haystack_it_was_trained_on(tmp_path, monkeypatch):
    run = tiny_text_run(tmp_path, "data.task=niah", "data.seq_len=400")
    seen = []
    import miras.eval.evaluate as evaluate
    real = evaluate.needle_accuracy
    monkeypatch.setattr(evaluate, "needle_accuracy", lambda m, task, tok, n: seen.append(task) or real(m, task, tok, n))
    results = evaluate_run(run, lengths=[400, 512], depths=2, needles=1)
    assert set(results) == {"niah"} and results["niah"]["lengths"] == [400, 512]
    assert [(t.haystack, t.context_tokens, t.depth) for t in seen] == [
        ("noise", 400, 0.0), ("noise", 512, 0.0), ("noise", 400, 1.0), ("noise", 512, 1.0)]
    assert (run / "eval" / "niah_heatmap.png").is_file()


def test_eval_refuses_lengths_beyond_max_context(tmp_path):
    run = tiny_text_run(tmp_path, "model.max_context=256")
    with pytest.raises(ConfigError, match="length=512.*max_context=256"):
        evaluate_run(run, lengths=[512])


def test_load_run_errors_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_run(tmp_path)
    run = tiny_text_run(tmp_path, "data.tokenizer=bpe", "data.bpe_vocab=300")
    for f in (run / "tokenizer").iterdir():
        f.unlink()
    with pytest.raises(ConfigError, match="pass --tokenizer DIR"):
        load_run(run)
