"""End to end: a tiny model trained for a few hundred steps on MQAR clearly beats chance."""
from miras.eval.load import load_run
from miras.data.mqar import MQAR
from miras.eval.mqar import mqar_accuracy
from miras.train.config import load_run_config
from miras.train.trainer import train


def test_tiny_model_learns_mqar(tmp_path):
    cfg = load_run_config(None, [
        "size=", "run.max_minutes=0", "model.preset=gated-deltanet", "model.d_model=64",
        "model.heads=2", "model.n_layers=2", "data.task=mqar",
        "data.seq_len=32", "data.mqar_pairs=4", "data.mqar_vocab=64", "optim.steps=250", "optim.batch_size=32",
        "optim.lr=3e-3", "optim.warmup_steps=20", "run.eval_every=1000", "run.save_every=1000", "run.threads=1",
        f"run.out_dir={tmp_path}"])
    train(cfg)
    model, _, _ = load_run(tmp_path)
    chance = 1 / 32
    accuracy = mqar_accuracy(model, MQAR(seq_len=32, num_kv_pairs=4, vocab_size=64, seed=5), n=256)
    assert accuracy > 5 * chance, accuracy
