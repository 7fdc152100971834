"""Denormal floats are flushed to zero while miras trains or runs a command, and the caller's setting is back
afterwards (hypothesis, for one, refuses to run on a thread that flushes them)."""
import torch

from miras import cli
from miras.train import trainer as trainer_module
from miras.train.config import load_run_config
from miras.train.denormals import denormals_flushed, flushing

TINY = ["size=", "run.max_minutes=0", "model.preset=gated-deltanet", "model.d_model=16", "model.heads=2",
        "model.n_layers=1", "data.seq_len=16", "optim.batch_size=2", "optim.steps=2", "run.threads=1",
        "run.eval_batches=1", "run.save_every=1000"]


def test_block_flushes_and_restores_the_callers_setting():
    tiny = torch.tensor(1e-39, dtype=torch.float32)
    assert not flushing() and float(tiny * 2.0) > 0.0
    with denormals_flushed():
        assert flushing() and float(tiny * 2.0) == 0.0
        with denormals_flushed():
            assert flushing()
        assert flushing()                                     # the inner block restored the outer one's setting
    assert not flushing()
    torch.set_flush_denormal(True)
    try:
        with denormals_flushed():
            pass
        assert flushing()                                     # a caller that flushed still flushes
    finally:
        torch.set_flush_denormal(False)


def test_train_and_the_cli_flush_while_they_run(tmp_path, monkeypatch):
    seen = []
    real = trainer_module._train
    monkeypatch.setattr(trainer_module, "_train", lambda *a: seen.append(flushing()) or real(*a))
    summary = trainer_module.train(load_run_config(None, TINY + [f"run.out_dir={tmp_path / 'a'}"]))
    assert summary["steps"] == 2 and seen == [True] and not flushing()
    assert cli.main(["train", *TINY, f"run.out_dir={tmp_path / 'b'}"]) == 0
    assert seen == [True, True] and not flushing()
