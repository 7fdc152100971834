"""Run folders: bad values refused before anything runs, corrupt checkpoints skipped, resume rules, no clobbering."""
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from miras.data.tokens import meta_path
from miras.eval.load import load_run
from miras.space import ConfigError
from miras.train import checkpoint as ckpt_module
from miras.train import trainer as trainer_module
from miras.models import MirasConfig, MirasLM
from miras.train.checkpoint import CorruptCheckpoint, list_checkpoints, load_checkpoint, save_checkpoint
from miras.train.config import RunConfig, load_resume_config, load_run_config
from miras.train.data import build_data
from miras.train.trainer import TrainingError, train

TINY = ["size=", "run.max_minutes=0", "model.preset=gated-deltanet", "model.d_model=16", "model.heads=2",
        "model.n_layers=1", "model.chunk_size=8", "data.seq_len=32", "optim.batch_size=2", "optim.warmup_steps=1",
        "run.threads=1", "run.eval_batches=1", "run.eval_every=100", "run.log_every=1"]


def config(out_dir, *extra) -> RunConfig:
    return load_run_config(None, TINY + [f"run.out_dir={out_dir}", *extra])


def rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run with checkpoints step-000002 and step-000004 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(config(run, "optim.steps=4", "run.save_every=2"))
    assert [p.name for p in list_checkpoints(run)] == ["step-000002", "step-000004"]
    return run


@pytest.fixture
def run_copy(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


# -- 1. values that used to crash (ZeroDivisionError, segfault, overflow, ...) are refused up front ----------------

@pytest.mark.parametrize("override,pattern", [
    ("run.save_every=0", r"run\.save_every=0 is invalid: allowed >= 1"),
    ("run.eval_every=0", r"run\.eval_every=0 is invalid"),
    ("run.log_every=0", r"run\.log_every=0 is invalid"),
    ("run.threads=-1", r"run\.threads=-1 is invalid"),
    ("run.threads=100000", r"run\.threads=100000 is invalid: allowed 0 .* to \d+"),
    ("run.seed=1e23", r"run\.seed=\d+ is invalid: allowed an integer in \[0, 2\*\*63\)"),
    ("optim.betas=[2,3]", r"optim\.betas=\(2, 3\) is invalid: allowed two numbers in \[0, 1\)"),
    ("optim.betas=[0.9]", r"optim\.betas=\(0\.9,\) is invalid"),
    ("model.head_dim=-4", r"head_dim=-4 is invalid: allowed None .* or an integer >= 1"),
    ("model.head_dim=0", r"head_dim=0 is invalid"),
    ("model.chunk_size=abc", r"chunk_size='abc' is invalid"),
    ("run.max_minutes=-1", r"run\.max_minutes=-1\.0 is invalid: allowed >= 0"),
    ("optim.weight_decay=-1", r"optim\.weight_decay=-1\.0 is invalid: allowed >= 0"),
    ('model.extra={"a":1}', r"model\.extra keys=\['a'\] is invalid"),
    ("optim.lr=Infinity", r"optim\.lr=inf is invalid"),
    ("run.eval_batches=0", r"run\.eval_batches=0 is invalid"),
])
def test_values_that_crashed_or_were_ignored_are_refused_naming_the_field(tmp_path, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        train(config(tmp_path / "run", "optim.steps=1", override))
    assert not (tmp_path / "run").exists()                  # refused before anything was written


def test_cuda_on_a_machine_without_it_is_a_config_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"run\.device='cuda' is invalid: allowed auto \| cpu here"):
        train(config(tmp_path / "run", "optim.steps=1", "run.device=cuda"))


@pytest.mark.parametrize("name,content,pattern", [
    ("list.json", b"[1, 2]", r"holds a list"),
    ("scalar.json", b"3", r"holds a int"),
    ("scalar.yaml", b"hello", r"holds a str"),
    ("latin1.toml", "[optim]\nlr = 0.002 # caf\u00e9\n".encode("latin-1"), r"is not UTF-8"),
])
def test_config_files_that_are_not_a_mapping_or_not_utf8_are_refused(tmp_path, name, content, pattern):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=f"config file .*{name} " + pattern):
        load_run_config(tmp_path / name)


# -- 2. silently wrong configurations --------------------------------------------------------------------------

def test_model_sizes_under_a_named_size_are_refused_not_ignored():
    with pytest.raises(ConfigError, match=r"model\.d_model=128 is invalid: allowed no value under size='small'"):
        load_run_config(None, ["size=small", "model.d_model=128"])
    with pytest.raises(ConfigError, match=r"model\.n_layers=3 is invalid"):
        load_run_config(None, ["size=tiny", "model.n_layers=3"])
    with pytest.raises(ConfigError, match=r"model\.vocab_size=300 is invalid: allowed no value: the data sets it"):
        load_run_config(None, ["size=", "model.vocab_size=300"])
    assert load_run_config(None, ["size=", "model.d_model=128"]).model.d_model == 128


def corpus(folder, words):
    folder.mkdir()
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(" ".join(f"{w}{i}" for w in words) * 20)
    return folder


def test_a_changed_corpus_rebuilds_the_cached_token_files(tmp_path):
    a, b = corpus(tmp_path / "a", ["alpha", "beta"]), corpus(tmp_path / "b", ["gamma", "delta", "epsilon"])
    run = tmp_path / "run"
    first = build_data(config(run, f"data.corpus={a}"), run, 0, 1, write=True)
    second = build_data(config(run, f"data.corpus={b}"), run, 0, 1, write=True)
    fresh = build_data(config(tmp_path / "fresh", f"data.corpus={b}"), tmp_path / "fresh", 0, 1, write=True)
    assert len(first.train.tokens) != len(fresh.train.tokens)
    assert torch.equal(torch.from_numpy(second.train.tokens[:].astype("int64")),
                       torch.from_numpy(fresh.train.tokens[:].astype("int64")))


def test_resume_without_a_checkpoint_is_a_clear_error_not_a_fresh_start(tmp_path, run_copy):
    with pytest.raises(ConfigError, match=r"--resume of run\.out_dir=.* allowed a `miras train` run folder"):
        load_resume_config(None, [f"run.out_dir={tmp_path / 'nothing'}"])
    for p in list_checkpoints(run_copy):
        shutil.rmtree(p)
    with pytest.raises(ConfigError, match="allowed a run folder with a complete checkpoint"):
        train(config(run_copy, "optim.steps=4", "run.save_every=2"), resume=True)


def test_resuming_a_finished_run_says_it_is_complete(run_copy):
    summary = train(config(run_copy, "optim.steps=4", "run.save_every=2"), resume=True)
    assert summary["complete"] and summary["steps"] == 4 and math.isfinite(summary["loss"])


# -- 1./5. corrupt checkpoints: the older intact one is used, with a warning; a clear error when none is ---------

def corrupt_model_shape(path):
    state = load_file(str(path / "model.safetensors"))
    key = next(iter(state))
    state[key] = torch.zeros(3, 3)
    save_file(state, str(path / "model.safetensors"))


def corrupt_model_nan(path):
    state = load_file(str(path / "model.safetensors"))
    state = {k: v * float("nan") if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path / "model.safetensors"))


CORRUPTIONS = {
    "truncated model": lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:100]),
    "renamed pickle": lambda p: torch.save({"w": torch.zeros(2)}, p / "model.safetensors"),
    "meta not json": lambda p: (p / "meta.json").write_text("{"),
    "meta empty": lambda p: (p / "meta.json").write_text(""),
    "meta empty object": lambda p: (p / "meta.json").write_text("{}"),
    "meta step 2.5": lambda p: (p / "meta.json").write_text(
        json.dumps({**json.loads((p / "meta.json").read_text()), "step": 2.5})),
    "optimizer.json": lambda p: (p / "optimizer.json").write_text("[]"),
    "rng": lambda p: save_file({"torch": torch.zeros(7, dtype=torch.uint8)}, str(p / "rng.safetensors")),
    "model shape": corrupt_model_shape,
    "nan weights": corrupt_model_nan,
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one(run_copy, capsys, kind):
    newest = list_checkpoints(run_copy)[-1]
    CORRUPTIONS[kind](newest)
    resolved = json.loads((run_copy / "config.json").read_text())["resolved_model"]
    model = MirasLM(MirasConfig.from_dict(resolved))
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint .*{newest.name} is corrupt"):
        load_checkpoint(newest, model, expect_model_config=resolved)
    load_run(run_copy)                                      # eval: the older intact checkpoint, with a warning
    assert "using the older intact checkpoint step-000002" in capsys.readouterr().err
    summary = train(config(run_copy, "optim.steps=4", "run.save_every=2"), resume=True)
    assert summary["steps"] == 4 and "using the older intact checkpoint step-000002" in capsys.readouterr().err
    assert [r["step"] for r in rows(run_copy) if r["kind"] == "train"] == [1, 2, 3, 4]   # 3, 4 replayed once
    csv_steps = [line.split(",")[1] for line in (run_copy / "metrics_train.csv").read_text().splitlines()]
    assert csv_steps == ["step", "1", "2", "3", "4"]


def test_no_intact_checkpoint_is_a_clear_error_and_writes_nothing(run_copy):
    for path in list_checkpoints(run_copy):
        CORRUPTIONS["truncated model"](path)
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="has no intact checkpoint: checkpoint .*step-000004 is corrupt"):
        train(config(run_copy, "optim.steps=6", "run.save_every=2"), resume=True)
    with pytest.raises(ConfigError, match="has no intact checkpoint"):
        load_run(run_copy)
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before   # config.json as it was


def test_a_forward_pass_on_non_finite_weights_is_a_training_error_not_a_gate_error(tmp_path, monkeypatch):
    real = trainer_module.lr_at
    monkeypatch.setattr(trainer_module, "lr_at",
                        lambda step, o, *rest: float("inf") if step == 1 else real(step, o, *rest))
    with pytest.raises(TrainingError, match="parameters are non-finite .* at step 2") as stopped:
        train(config(tmp_path / "run", "optim.steps=4", "run.on_nan=skip"))
    assert stopped.value.step == 2


def test_a_non_finite_gradient_norm_is_handled_by_on_nan_before_the_update(tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def inf_once(params, clip):
        calls["n"] += 1
        norm = real(params, clip)
        return norm * float("inf") if calls["n"] == 2 else norm

    monkeypatch.setattr(trainer_module.torch.nn.utils, "clip_grad_norm_", inf_once)
    with pytest.raises(TrainingError, match="non-finite gradient norm inf at step 1") as stopped:
        train(config(tmp_path / "stop", "optim.steps=3"))
    assert stopped.value.step == 1
    calls["n"] = 0
    summary = train(config(tmp_path / "skip", "optim.steps=3", "run.on_nan=skip"))
    assert summary["skipped"] == 1 and math.isfinite(summary["loss"])


# -- 3. nothing clobbered, nothing half-deleted ---------------------------------------------------------------

def test_a_fresh_run_into_a_used_folder_is_refused_unless_overwrite(run_copy):
    before = (run_copy / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"allowed a new or empty folder for a fresh run; it holds config\.json"):
        train(config(run_copy, "optim.steps=2"))
    assert (run_copy / "config.json").read_text() == before
    summary = train(config(run_copy, "optim.steps=2"), overwrite=True)
    assert summary["steps"] == 2 and [p.name for p in list_checkpoints(run_copy)] == ["step-000002"]
    assert [r["step"] for r in rows(run_copy) if r["kind"] == "train"] == [1, 2]


def test_checkpoints_sort_by_step_number_not_by_name(tmp_path):
    for step in (999999, 1000000, 5):
        (tmp_path / f"step-{step:06d}").mkdir()
        (tmp_path / f"step-{step:06d}" / "meta.json").write_text(json.dumps({"step": step}))
    (tmp_path / "step-backup").mkdir()
    (tmp_path / "step-backup" / "meta.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000005", "step-999999", "step-1000000"]


def test_a_run_killed_while_pruning_leaves_no_half_deleted_complete_checkpoint(tmp_path, monkeypatch):
    state = {"w": torch.ones(2)}
    save_checkpoint(tmp_path, 1, state, {"state": {}, "param_groups": []}, {})
    real = shutil.rmtree

    def killed_rmtree(path, *args, **kwargs):               # deletes one file, then the process dies
        model = tmp_path.joinpath(path, "model.safetensors")
        if model.is_file():
            model.unlink()
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_module.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, state, {"state": {}, "param_groups": []}, {}, keep_last=1)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000002"]
    save_checkpoint(tmp_path, 3, state, {"state": {}, "param_groups": []}, {}, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000003"]   # the leftover .trash-* is cleaned up


def test_a_kill_between_the_token_file_and_its_meta_is_rebuilt(tmp_path):
    run = tmp_path / "run"
    build_data(config(run), run, 0, 1, write=True)
    meta_path(run / "data" / "train.bin").unlink()         # killed after train.bin, before train.bin.json
    data = build_data(config(run), run, 0, 1, write=True)
    assert len(data.train.tokens) > 0 and meta_path(run / "data" / "train.bin").is_file()


def test_a_kill_while_saving_the_bpe_tokenizer_leaves_none_behind(tmp_path, monkeypatch):
    from miras.data.tokenizer import BPETokenizer
    real = BPETokenizer.save

    def killed_save(self, out_dir):                          # the process dies half-way through tokenizer.json
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer.json").write_text('{"half')
        raise KeyboardInterrupt

    run, bpe = tmp_path / "run", ["data.tokenizer=bpe", "data.bpe_vocab=300"]
    monkeypatch.setattr(BPETokenizer, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        build_data(config(run, *bpe), run, 0, 1, write=True)
    monkeypatch.setattr(BPETokenizer, "save", real)
    assert build_data(config(run, *bpe), run, 0, 1, write=True).vocab_size <= 300


# -- 4. resume takes the run's own config; only run-length and cadence fields may change ----------------------

def test_resume_refuses_changes_outside_the_resumable_fields_before_writing(run_copy):
    before = (run_copy / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"these fields differ: model\.d_model \(16 in config\.json, 32 given\), "
                                          r"optim\.lr .*allowed changes on resume: optim\.steps"):
        train(config(run_copy, "optim.steps=4", "run.save_every=2", "model.d_model=32", "optim.lr=0.1"),
              resume=True)
    assert (run_copy / "config.json").read_text() == before
    cfg = load_resume_config(None, [f"run.out_dir={run_copy}", "optim.steps=6"])   # only what changes is given
    assert (cfg.optim.steps, cfg.model.d_model, cfg.data.seq_len) == (6, 16, 32)
    summary = train(cfg, resume=True)
    assert summary["steps"] == 6 and json.loads((run_copy / "config.json").read_text())["optim"]["steps"] == 6
    assert [r["step"] for r in rows(run_copy) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
