"""A point of the design space written only in a config file: it trains, resumes, exports to Hugging Face,
generates and shows up in `miras compare`, and everything along the way builds the spec the file names.

Also: the spec tables (miras/space/tables.py) round-trip every preset, partial changes merge as documented, and a
wrong axis, name or parameter is a ConfigError listing what is allowed.
"""
import json
from pathlib import Path

import pytest
import torch

from miras.cli import main
from miras.eval.load import load_run
from miras.models import MirasConfig
from miras.space import ConfigError, MirasSpec, get_preset, list_presets
from miras.space.bias import Huber
from miras.space.retention import LqNormalization
from miras.space.tables import merge_spec, preset_toml, spec_from_dict, spec_to_dict

NEW_MODEL = """
size = ""
[model]
preset = "moneta"
d_model = 32
n_layers = 1
heads = 2

[model.spec]
chunk_size = 8

[model.spec.bias]
name = "huber"
form = "coord"

[model.spec.retention]
q = 3.0
"""


def expected_spec(form="coord"):
    spec = get_preset("moneta").spec
    retention = LqNormalization(q=3.0, toward="init")
    return MirasSpec(spec.memory, Huber(form=form), retention, spec.algorithm, chunk_size=8)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_round_trips_through_its_table_and_toml(name):
    spec = get_preset(name).spec
    table = spec_to_dict(spec)
    assert spec_from_dict(json.loads(json.dumps(table))) == spec
    import tomllib
    model = tomllib.loads(preset_toml(name))["model"]
    assert MirasConfig(**model).memory_spec == spec


def test_partial_changes_merge_into_the_preset():
    base = spec_to_dict(get_preset("moneta").spec)
    merged = spec_from_dict(merge_spec(base, {"bias": "huber", "retention": {"q": 3.0}, "chunk_size": 8}))
    assert merged == expected_spec(form=Huber().form)
    assert spec_from_dict(merge_spec(base, {"retention": "decay"})).retention.name == "decay"


@pytest.mark.parametrize("change, match", [
    ({"bias": "hubber"}, "spec.bias.name"),
    ({"retention": {"qq": 3}}, r"spec.retention.*'q'"),
    ({"optimizer": "adam"}, "spec"),
    ({"bias": {"name": "huber", "form": "cubic"}}, "form"),
    ({"memory": {"depth": 0}}, "memory.depth"),
    ({"algorithm": "delta"}, "delta"),                 # the delta rule needs a matrix memory and the L2 bias
])
def test_bad_specs_are_refused_with_what_is_allowed(change, match):
    with pytest.raises(ConfigError, match=match):
        MirasConfig(preset="moneta", spec=change)


def test_a_config_file_model_trains_resumes_exports_generates_and_compares(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"{i}.txt").write_text(f"{i}: to be or not to be, that is the question. " * 20)
    config = tmp_path / "new-model.toml"
    config.write_text(NEW_MODEL)
    run = tmp_path / "run"
    common = ["--config", str(config), f"data.corpus={corpus}", "data.seq_len=32", "optim.batch_size=2",
              "run.eval_every=2", "run.save_every=2", "run.eval_batches=1", f"run.out_dir={run}"]
    assert main(["train", *common, "optim.steps=2"]) == 0
    assert main(["train", *common, "optim.steps=4", "--resume"]) == 0
    model, tok, cfg = load_run(run)
    assert model.config.memory_spec == expected_spec()
    assert json.loads((run / "config.json").read_text())["resolved_model"]["spec"] == spec_to_dict(expected_spec())
    assert len(list(run.glob("step-*"))) >= 1 and "step-000004" in {p.name for p in run.glob("step-*")}

    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM
    out = tmp_path / "hf"
    assert main(["export", str(run), str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.to_miras().memory_spec == expected_spec()
    ids = torch.tensor([tok.encode("to be or not")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids)[0], rtol=1e-5, atol=1e-5)
        new = hf.generate(ids, max_new_tokens=5, do_sample=False)
        manual = ids
        for _ in range(5):
            manual = torch.cat([manual, model(manual)[0][:, -1:].argmax(-1)], dim=1)
    assert torch.equal(new, manual)

    compared = tmp_path / "compare"
    assert main(["compare", "--presets", f"gated-deltanet,{config}", "--steps", "2", "--eval-n", "8",
                 "--eval-lengths", "64", "--out-dir", str(compared), "--threads", "1"]) == 0
    table = (compared / "table.md").read_text()
    assert "| new-model |" in table and "| gated-deltanet |" in table
    assert load_run(compared / "new-model")[0].config.memory_spec == expected_spec()


def test_configs_of_other_versions_load_or_name_the_version():
    old = {k: v for k, v in MirasConfig(preset="moneta").to_dict().items() if k != "spec"}   # before `spec` existed
    assert MirasConfig.from_dict(old) == MirasConfig(preset="moneta")
    newer = {**MirasConfig(preset="moneta").to_dict(), "miras_version": "9.0.0", "mixture": 4}
    with pytest.raises(ConfigError, match=r"mixture.*written by miras 9\.0\.0"):
        MirasConfig.from_dict(newer)
    assert MirasConfig.from_dict({**old, "miras_version": "0.1.0"}) == MirasConfig(preset="moneta")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    """configs/*.toml are complete run configurations: `miras train --config` and `miras compare` take them."""
    from miras.train.config import load_run_config
    model = load_run_config(str(path)).model
    if "toward-w0" in path.name or "-w0-" in path.name:
        assert model.memory_spec.retention.toward == "init"
    if "lr01" in path.name:
        assert model.lr_max == 0.01
