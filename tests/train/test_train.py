"""Training: loss falls for every family, exact resume, atomic checkpoints, NaN handling, bad input."""
import json
import math

import pytest
import torch

from miras.space import ConfigError
from miras.train import trainer as trainer_module
from safetensors.torch import load_file

from miras.train.checkpoint import list_checkpoints, load_checkpoint
from miras.train.config import RunConfig, load_run_config
from miras.train.trainer import TrainingError, train

TINY = ["size=", "run.max_minutes=0",
        "model.d_model=32", "model.heads=2", "model.n_layers=2", "model.chunk_size=8", "model.d_state=16",
        "model.window=32", "data.seq_len=48", "optim.batch_size=8", "optim.warmup_steps=5", "run.log_every=1",
        "run.threads=1", "run.eval_batches=2"]


def config(tmp_path, *extra) -> RunConfig:
    return load_run_config(None, TINY + [f"run.out_dir={tmp_path}", *extra])


def rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.parametrize("preset", ["transformer", "mamba2", "gated-deltanet", "titans-lmm", "moneta"])
def test_loss_falls_within_a_few_dozen_steps(tmp_path, preset):
    cfg = config(tmp_path, f"model.preset={preset}", "optim.steps=40", "optim.lr=1e-2", "run.eval_every=40",
                 "run.save_every=1000")
    summary = train(cfg)
    first = rows(tmp_path)[0]["loss"]
    assert first > math.log(256) - 0.7                      # starts near uniform over bytes
    assert summary["steps"] == 40 and summary["loss"] < first - 1.0, (first, summary["loss"])
    assert summary["val_loss"] < math.log(256) - 1.0
    assert (tmp_path / "config.json").is_file() and (tmp_path / "metrics_train.csv").is_file()


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    common = ["model.preset=titans-lmm", "optim.steps=8", "run.eval_every=1000", "run.save_every=4"]
    full = train(config(tmp_path / "full", *common))
    crash_after_checkpoint(config(tmp_path / "cut", *common), step=4)
    resumed = train(config(tmp_path / "cut", *common), resume=True)
    assert [r["loss"] for r in rows(tmp_path / "cut")] == [r["loss"] for r in rows(tmp_path / "full")]
    assert resumed["loss"] == full["loss"]
    wa, wb = (load_file(str(list_checkpoints(tmp_path / d)[-1] / "model.safetensors")) for d in ("full", "cut"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class Crash(Exception):
    pass


def crash_after_checkpoint(cfg, step, monkeypatch=None):
    """Train, and die right after writing the checkpoint of `step` (as a killed process would)."""
    original = trainer_module.save_checkpoint

    def save_then_crash(run_dir, at, *args, **kwargs):
        path = original(run_dir, at, *args, **kwargs)
        if at == step:
            raise Crash
        return path

    trainer_module.save_checkpoint = save_then_crash
    try:
        with pytest.raises(Crash):
            train(cfg)
    finally:
        trainer_module.save_checkpoint = original


def test_a_run_killed_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, "model.preset=gated-deltanet", "optim.steps=4", "run.save_every=2", "run.eval_every=100")
    import miras.train.checkpoint as ckpt

    calls = {"n": 0}
    original = ckpt.save_file

    def dying_save_file(tensors, path, *a, **k):
        calls["n"] += 1
        if "step-000004" in path and path.endswith("optimizer.safetensors"):
            raise Crash                                     # killed half-way through writing step 4
        return original(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", dying_save_file)
    with pytest.raises(Crash):
        train(cfg)
    done = list_checkpoints(tmp_path)
    assert [p.name for p in done] == ["step-000002"]
    assert (tmp_path / ".tmp-step-000004").is_dir()         # the partial write is not a checkpoint
    model = trainer_module.MirasLM(trainer_module.model_config(cfg, 256))
    assert load_checkpoint(done[-1], model)["step"] == 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, "model.preset=mamba2", "optim.steps=6", "run.save_every=2", "run.eval_every=100")
    real = trainer_module.cross_entropy
    count = {"n": 0}

    def poisoned(logits, labels):
        count["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if count["n"] == 4 else loss

    monkeypatch.setattr(trainer_module, "cross_entropy", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss nan at step 3") as stopped:
        train(cfg)
    assert stopped.value.step == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]


def test_nan_loss_can_be_skipped_and_counted(tmp_path, monkeypatch):
    cfg = config(tmp_path, "model.preset=mamba2", "optim.steps=5", "run.on_nan=skip", "run.eval_every=100")
    real = trainer_module.cross_entropy
    count = {"n": 0}

    def poisoned(logits, labels):
        count["n"] += 1
        return real(logits, labels) * (float("inf") if count["n"] == 2 else 1.0)

    monkeypatch.setattr(trainer_module, "cross_entropy", poisoned)
    summary = train(cfg)
    assert summary["skipped"] == 1 and math.isfinite(summary["loss"])


class FakeClock:
    """The trainer's `time` module with a clock that advances `tick` seconds per reading."""
    def __init__(self, tick):
        self.now, self.tick = 1000.0, tick

    def time(self):
        self.now += self.tick
        return self.now


def test_time_schedule_decays_over_the_time_budget_and_continues_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "time", FakeClock(tick=1.0))   # one reading a step: 1 s per step
    common = ["model.preset=gated-deltanet", "optim.steps=1000", "optim.warmup_steps=0", "optim.lr=1e-3",
              "optim.min_lr_ratio=0.1", "run.eval_every=1000", "run.save_every=4", "run.max_minutes=0.2"]
    summary = train(config(tmp_path / "full", "optim.schedule=time", *common))
    lrs = [r["lr"] for r in rows(tmp_path / "full")]
    assert summary["steps"] == 13 and len(lrs) == 13                # 12 s budget: stops after the step past it
    progress = [min(1.0, s / 12) for s in range(13)]                # step s starts s seconds into the budget
    expected = [1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * p)) for p in progress]
    assert lrs == pytest.approx(expected, rel=1e-6) and lrs[-1] == pytest.approx(1e-4)
    train(config(tmp_path / "steps", *common))                      # optim.schedule=steps: still near the peak
    assert [r["lr"] for r in rows(tmp_path / "steps")][-1] > 0.99e-3

    crash_after_checkpoint(config(tmp_path / "cut", "optim.schedule=time", *common), step=4)
    train(config(tmp_path / "cut", "optim.schedule=time", *common[:-1], "run.max_minutes=0.1"), resume=True)
    resumed = [r["lr"] for r in rows(tmp_path / "cut")]
    assert resumed[:4] == pytest.approx(expected[:4], rel=1e-6)
    # the resumed session spreads the rest of the cosine (from 4/12) over its own 6 s budget
    rest = [4 / 12 + (8 / 12) * min(1.0, s / 6) for s in range(len(resumed) - 4)]
    assert resumed[4:] == pytest.approx([1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * p)) for p in rest], rel=1e-6)
    assert resumed[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("overrides,pattern", [
    (["optim.lr=-1"], r"optim\.lr=-1\.0 is invalid: allowed > 0"),
    (["optim.steps=ten"], r"optim\.steps='ten' is invalid: allowed a int"),
    (["model.preset=rwkv7"], r"preset='rwkv7'.*moneta"),
    (["data.corpus=/nonexistent/corpus.txt"], r"/nonexistent/corpus\.txt"),
    (["optim.lrr=1"], r"optim keys=\['lrr'\]"),
    (["optim.schedule=time"], r"optim\.schedule='time' is invalid: allowed 'steps' or 'time' \(the latter with a time "
                              r"budget: run\.max_minutes > 0\)"),
    (["optim.schedule=linear", "run.max_minutes=1"], r"optim\.schedule='linear' is invalid"),
])
def test_bad_input_gives_one_clear_message(tmp_path, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        train(config(tmp_path, "optim.steps=1", *overrides))


def test_unwritable_out_dir_and_foreign_checkpoint_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        train(config(tmp_path / "file" / "run", "optim.steps=1"))
    train(config(tmp_path / "a", "model.preset=gated-deltanet", "optim.steps=2", "run.save_every=2"))
    model = trainer_module.MirasLM(trainer_module.model_config(config(tmp_path, "model.d_model=48"), 256))
    with pytest.raises(ConfigError, match="different model config.*d_model"):
        load_checkpoint(list_checkpoints(tmp_path / "a")[-1], model, expect_model_config=model.config.to_dict())


def test_config_files_json_toml_and_overrides(tmp_path):
    (tmp_path / "run.toml").write_text('[optim]\nlr = 0.002\nsteps = 7\n[model]\npreset = "moneta"\n')
    (tmp_path / "run.json").write_text(json.dumps({"optim": {"lr": 0.002}, "model": {"preset": "moneta"}}))
    for name in ("run.toml", "run.json"):
        cfg = load_run_config(tmp_path / name, ["optim.steps=9"])
        assert (cfg.optim.lr, cfg.optim.steps, cfg.model.preset) == (0.002, 9, "moneta")
    (tmp_path / "bad.toml").write_text("[optim\n")
    with pytest.raises(ConfigError, match="bad.toml could not be parsed"):
        load_run_config(tmp_path / "bad.toml")


def test_no_arguments_means_the_small_model_on_the_embedded_corpus():
    from miras.models.sizes import count_parameters
    cfg = load_run_config(None, [])
    assert (cfg.size, cfg.data.corpus, cfg.data.tokenizer, cfg.run.max_minutes) == ("small", "shakespeare", "byte", 10)
    model_cfg = trainer_module.model_config(cfg, 256)
    assert 10e6 <= count_parameters(model_cfg) <= 20e6 and model_cfg.d_model == 256
