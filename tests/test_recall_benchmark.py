"""benchmarks/recall.py end to end at --tiny: trains, evaluates, writes the tables, and a second invocation skips
every finished model and length; bad flags are one clear line with exit 2; the streamed prompt equals the whole one."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from miras.data import ByteTokenizer
from miras.data.niah import NeedleMix, NeedleTask
from miras.eval.niah import needle_accuracy
from miras.data.rng import generator_for

ROOT = Path(__file__).resolve().parents[1]


def load_recall():
    spec = importlib.util.spec_from_file_location("recall_benchmark", ROOT / "benchmarks" / "recall.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


recall = load_recall()


def test_tiny_run_writes_tables_and_resumes_without_redoing_work(tmp_path, capsys):
    args = ["--tiny", "--mqar", "--threads", "1", "--out-dir", str(tmp_path)]
    assert recall.main(args) == 0
    first = capsys.readouterr().out
    assert "train gated-deltanet" in first and "eval transformer-conv @ 640" in first
    table = (tmp_path / "niah_table.md").read_text()
    assert "| gated-deltanet |" in table and "acc@512" in table and "acc@640" in table
    rows = (tmp_path / "niah_table.csv").read_text().splitlines()
    assert len(rows) == 3 and "niah_single_3@640" in rows[0]
    assert (tmp_path / "mqar_table.csv").read_text().count("\n") == 2
    outputs = sorted(tmp_path.glob("niah/*/len-*.json")) + sorted(tmp_path.glob("niah/*/train.json")) + \
        sorted(tmp_path.glob("mqar/*/*/done.json"))
    assert len(outputs) == 2 * 2 + 2 + 1
    for path in tmp_path.glob("niah/*/len-*.json"):
        result = json.loads(path.read_text())
        assert 0 <= result["accuracy"] <= 1 and set(result["by_variant"]) == set(recall.RULER)
    if recall.plots_available():
        assert (tmp_path / "niah" / "transformer-conv" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / "niah_accuracy_vs_length.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    assert recall.main(args) == 0
    second = capsys.readouterr().out
    assert "step 1/" not in second                                  # nothing trained again
    assert second.count("skip train") == 2 and second.count("skip eval") == 4 and second.count("skip mqar") == 1
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps    # nothing evaluated again
    assert (tmp_path / "niah_table.md").read_text() == table


def test_a_killed_training_resumes_from_its_checkpoint(tmp_path, capsys):
    args = ["--tiny", "--presets", "gated-deltanet", "--lengths", "512", "--variants", "niah_single_1",
            "--threads", "1", "--out-dir", str(tmp_path)]
    assert recall.main(args) == 0
    folder = tmp_path / "niah" / "gated-deltanet"
    (folder / "train.json").unlink()                 # as if killed after the last checkpoint, before the record
    (folder / "len-512.json").unlink()
    capsys.readouterr()
    assert recall.main(args + ["--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "resume gated-deltanet" in out and "step 3/3" in out and "step 1/" not in out
    assert json.loads((folder / "train.json").read_text())["steps"] == 3


def test_a_diverged_preset_is_recorded_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """A preset whose training stops on a non-finite gradient gets a 'diverged at step N' row and no evaluation; the
    presets after it are trained and evaluated, and a second invocation skips it."""
    import miras.train.trainer as trainer
    real_train = trainer.train

    def train(cfg, **kw):
        if "gated-deltanet" in cfg.run.out_dir:
            raise trainer.TrainingError("non-finite gradient norm inf at step 2; the last good checkpoint is intact",
                                        step=2)
        return real_train(cfg, **kw)
    monkeypatch.setattr(trainer, "train", train)
    args = ["--tiny", "--lengths", "512", "--variants", "niah_single_1", "--threads", "1", "--out-dir", str(tmp_path)]
    assert recall.main(args) == 0
    out = capsys.readouterr().out
    assert "diverged gated-deltanet: non-finite gradient norm inf at step 2" in out
    assert "eval gated-deltanet" not in out and "eval transformer-conv @ 512" in out
    rows = {r.split(" | ")[0]: r for r in (tmp_path / "niah_table.md").read_text().splitlines() if r.startswith("| ")}
    assert rows["| gated-deltanet"].endswith("| 2 | 0.000 | - | - | diverged at step 2 |")
    assert rows["| transformer-conv"].endswith(" |  |")
    assert json.loads((tmp_path / "niah" / "gated-deltanet" / "train.json").read_text())["steps"] == 2
    assert not list(tmp_path.glob("niah/gated-deltanet/len-*.json"))
    assert recall.main(args) == 0
    assert capsys.readouterr().out.count("skip train") == 2


@pytest.mark.parametrize("argv, message", [
    (["--presets", "rnn"], "--presets='rnn' is invalid: allowed one of"),
    (["--lengths", "1024,2k"], "--lengths='1024,2k' is invalid: allowed comma-separated integers"),
    (["--lengths", "100"], "--lengths='100' is invalid: allowed distinct token counts >= 512"),
    (["--variants", "niah_multi"], "--variants='niah_multi' is invalid"),
    (["--mqar-pairs", "80"], "--mqar-pairs='80' is invalid"),
    (["--stream-preset", "transformer"], "constant-size state"),
    (["--minutes", "-1"], "--minutes=-1.0 is invalid"),
])
def test_bad_flags_are_one_clear_line_with_exit_2(argv, message, tmp_path, capsys):
    assert recall.main([*argv, "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_streamed_prompt_is_the_whole_prompt_in_pieces():
    tok = ByteTokenizer()
    docs = ("Alas, poor Yorick! I knew him, Horatio. A fellow of infinite jest. Of most excellent fancy. " * 3,)
    for haystack in ("noise", "text"):
        for kind in ("numbers", "uuids"):
            for depth in (0.0, 0.37, 1.0):
                task = NeedleTask(kind, context_tokens=700, depth=depth, haystack=haystack, documents=docs)
                whole = task.build_example(tok, generator_for(3, 1))
                pieces, answer, position = task.stream_example(tok, generator_for(3, 1), 100)
                pieces = list(pieces)
                assert all(len(p) <= 100 for p in pieces)
                assert ([t for p in pieces for t in p], answer, position) == whole


def test_batched_piecewise_needle_accuracy_matches_one_at_a_time():
    from miras.models import MirasConfig, MirasLM
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset="gated-deltanet", d_model=16, heads=2, n_layers=1))
    task = NeedleTask("numbers", context_tokens=520, depth=0.5)
    examples = task.eval_examples(ByteTokenizer(), 2)
    from miras.eval.niah import greedy_generate, greedy_generate_batch
    batched = greedy_generate_batch(model, [p for p, _, _ in examples], 4, piece=128)
    assert batched == [greedy_generate(model, p, 4) for p, _, _ in examples]
    assert needle_accuracy(model, task, ByteTokenizer(), n=2, batch_size=2, piece=128) == \
        needle_accuracy(model, task, ByteTokenizer(), n=2)


def test_needle_mix_batches_are_pure_and_mix_the_variants():
    tok = ByteTokenizer()
    mix = NeedleMix(context_tokens=600, documents=("Be not afraid of greatness. Some are born great. " * 4,),
                    tokenizer=tok, batch_size=6, seed=1)
    x, y = mix.batch(0)
    assert x.shape == y.shape == (6, 600)
    assert torch.equal(x, mix.batch(0)[0]) and not torch.equal(x, mix.batch(1)[0])
    labeled = [(row != -100).sum().item() for row in y]
    assert {8, 37} & set(labeled)                   # a 7-digit number or a UUID (with its leading space)


@pytest.mark.parametrize("preset", ["titans-lmm", "titans-mac", "yaad", "memora"])
def test_recipe_variants_change_the_decay_target_and_the_step_bound_only(preset):
    """-w0 aims the preset's decay at W0, -lr01 bounds the inner step by 0.01, -w0-lr01 does both; nothing else."""
    from miras.models import MirasConfig

    def config(entry):
        return MirasConfig(**recall.base_model(recall.RecallConfig(), entry, 16))
    base = config(preset)
    assert base.memory_spec.retention.toward == "zero" and base.lr_max is None
    for suffix, toward, lr_max in (("-w0", "init", None), ("-lr01", "zero", 0.01), ("-w0-lr01", "init", 0.01)):
        variant = config(preset + suffix)
        assert variant.memory_spec.retention.toward == toward and variant.lr_max == lr_max
        assert variant.memory_spec.retention.name == base.memory_spec.retention.name
        assert variant.pattern == base.pattern and variant.persistent_tokens == base.persistent_tokens
