"""`miras export`: a run folder -> a Hugging Face folder that a process which never imports miras loads (logits of
the run's own model, pipeline batches), with a tokenizer equal to the run's; `import miras` registers the Auto
classes lazily; the command never overwrites what a user has unless asked.

The loading checks run in fresh Python processes (started together, one per core): the test process has imported
miras, which registers it with transformers.
"""
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from miras.cli import main  # noqa: E402
from miras.data import ByteTokenizer, Document, train_bpe  # noqa: E402
from miras.eval.load import load_run  # noqa: E402
from miras.models.export import export_run  # noqa: E402
from miras.space import ConfigError  # noqa: E402
from miras.train.config import load_run_config  # noqa: E402
from miras.train.trainer import train  # noqa: E402
from tests.eval.test_lm_harness import hand_run  # noqa: E402

TINY = dict(preset="gated-deltanet", d_model=32, heads=2, n_layers=2, chunk_size=8, d_state=16)
PROMPTS = ["ROMEO.\nBut soft, what light", "Hi", "Naïve café, 日本"]     # lengths 27, 2, 20 bytes
TEXTS = PROMPTS + ["", " two  spaces ", "tab\tnew\nline\r\n", "Ā is byte 0's stand-in", "<|endoftext|> eos",
                   "emoji 🎉🦀, Ελληνικά, עברית, combining e\u0301", "nul\x00byte", "the king of the sea"]
NEW = 6

FRESH = r'''
import json, sys
out, prompts, ids = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline
assert "miras" not in sys.modules
config = AutoConfig.from_pretrained(out, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
generate = pipeline("text-generation", model=out, batch_size=2, trust_remote_code=True)
kw = dict(max_new_tokens=%d, do_sample=False, return_full_text=False)
print(json.dumps({"config": type(config).__name__, "logits": logits.tolist(),
                  "encoded": [tok.encode(p) for p in prompts], "padding_side": tok.padding_side,
                  "batched": [r[0]["generated_text"] for r in generate(prompts, **kw)],
                  "alone": [generate(p, **kw)[0]["generated_text"] for p in prompts]}))
''' % NEW

# import miras where transformers cannot be imported, then import transformers: the Auto classes know miras
LAZY = r'''
import sys
out = sys.argv[1]
sys.modules["transformers"] = None
import miras
assert not any(m.startswith("transformers") for m in sys.modules if sys.modules[m] is not None)
del sys.modules["transformers"]
from transformers import AutoConfig, AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(out)      # no trust_remote_code: the classes are registered
print(type(AutoConfig.from_pretrained(out)).__module__, type(model).__module__)
'''


def python(script: str, *args: str, cwd) -> subprocess.Popen:
    env = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}   # one torch thread, as in conftest.py
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{"byte": (run, out), "bpe": (run, out)}: talkative hand-made runs (greedy tokens depend on the context)."""
    root = tmp_path_factory.mktemp("export")
    text = " ".join(f"the {w} of the {v} is here." for w in ("king", "queen", "moor", "night") for v in ("sea", "sky"))
    tokenizers = {"byte": ByteTokenizer(), "bpe": train_bpe([Document("t", text * 3)], vocab_size=300)}
    folders = {}
    for name, tok in tokenizers.items():
        run = hand_run(root / f"{name}-run", tok, talkative=True, **TINY)
        export_run(run, root / f"{name}-hf")
        folders[name] = (run, root / f"{name}-hf")
    return folders


@pytest.fixture(scope="module")
def fresh(exported, tmp_path_factory):
    """What two new processes see: FRESH on the byte export (never imports miras), LAZY on the BPE one."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    ids = ByteTokenizer().encode(TEXTS[0] + " " + TEXTS[-4])
    procs = [python(FRESH, str(exported["byte"][1]), json.dumps(PROMPTS), json.dumps(ids), cwd=cwd),
             python(LAZY, str(exported["bpe"][1]), cwd=cwd)]
    fresh_out, lazy_out = map(finish, procs)
    return {**json.loads(fresh_out), "ids": ids, "lazy": lazy_out.split()}


def greedy(model, tok, prompt: str, n: int) -> str:
    """n greedy tokens after prompt, each from a full forward pass of the run's own MirasLM."""
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    return tok.decode(ids[len(tok.encode(prompt)):])


def test_a_process_that_never_imports_miras_gets_the_runs_logits(exported, fresh):
    model, _, _ = load_run(exported["byte"][0])
    with torch.no_grad():
        want = model(torch.tensor([fresh["ids"]]))[0][0]
    got = torch.tensor(fresh["logits"])
    assert got.shape == want.shape == (len(fresh["ids"]), 256)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert want.std(0).mean() > 0.1                         # logits that vary along the text
    assert fresh["config"] == "MirasHFConfig"


def test_pipeline_batches_prompts_of_different_lengths_on_the_left(exported, fresh):
    model, tok, _ = load_run(exported["byte"][0])
    want = [greedy(model, tok, p, NEW) for p in PROMPTS]
    assert fresh["batched"] == fresh["alone"] == want
    assert len(set(want)) == len(PROMPTS)                   # the continuations depend on the prompts


def test_import_miras_registers_the_auto_classes_only_when_transformers_loads(fresh):
    assert fresh["lazy"] == ["miras.models.hf_config", "miras.models.hf"]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_exported_tokenizer_encodes_and_decodes_like_the_runs(exported, fresh, kind):
    from transformers import AutoTokenizer

    run, out = exported[kind]
    _, tok, _ = load_run(run)
    hf = AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text) == hf(text)["input_ids"] == ids, text
        assert hf.decode(ids) == tok.decode(ids) == text
    rng = random.Random(0)
    for _ in range(300):                                     # any ids, invalid UTF-8 included
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 9))]
        assert hf.decode(ids) == tok.decode(ids), ids
    assert hf.eos_token_id == hf.pad_token_id == hf.bos_token_id == tok.eos_id
    assert hf.padding_side == "left" and len(hf) == tok.vocab_size
    if kind == "byte":
        assert fresh["encoded"] == [tok.encode(p) for p in PROMPTS] and fresh["padding_side"] == "left"
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert config["eos_token_id"] == config["pad_token_id"] == generation["pad_token_id"] == tok.eos_id


def test_export_command_never_overwrites_unasked_and_names_bad_runs(tmp_path, capsys):
    overrides = ["size=", "run.max_minutes=0", "optim.steps=2", "optim.warmup_steps=1", "optim.batch_size=2",
                 "data.seq_len=32", "run.eval_every=100", "run.save_every=2", "run.threads=1", "run.eval_batches=1",
                 f"run.out_dir={tmp_path / 'run'}"] + [f"model.{k}={v}" for k, v in TINY.items()]
    run = Path(train(load_run_config(None, overrides))["run_dir"])
    out = tmp_path / "hf"
    assert main(["export", str(run), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step-000002" in printed and "modeling_miras.py" in printed and "tokenizer.json" in printed
    config = (out / "config.json").read_text()
    assert '"auto_map"' in config and (out / "model.safetensors").is_file()

    (out / "config.json").write_text("mine")
    (out / "notes.txt").write_text("mine too")
    assert main(["export", str(run), str(out)]) == 2
    err = capsys.readouterr().err
    assert "out_dir=" in err and "--force" in err and "Traceback" not in err
    assert (out / "config.json").read_text() == "mine"                  # nothing touched
    assert main(["export", str(run / "step-000002"), str(out), "--force"]) == 0
    assert (out / "config.json").read_text() == config and (out / "notes.txt").read_text() == "mine too"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind

    for bad_out in (run, run / "step-000002"):                          # even with --force
        with pytest.raises(ConfigError, match="neither the run folder"):
            export_run(run, bad_out, force=True)
    with pytest.raises(ConfigError, match=r"run='.*nowhere' is invalid \(it does not exist\)"):
        export_run(tmp_path / "nowhere", tmp_path / "x")
    with pytest.raises(ConfigError, match="no resolved_model"):          # an exported folder is no run
        export_run(out, tmp_path / "x")
    mqar = tmp_path / "mqar"
    shutil.copytree(run, mqar)
    meta = json.loads((mqar / "config.json").read_text())
    (mqar / "config.json").write_text(json.dumps({**meta, "data": {**meta["data"], "task": "mqar"}}))
    with pytest.raises(ConfigError, match="synthetic task 'mqar'"):
        export_run(mqar, tmp_path / "x")
    assert not (tmp_path / "x").exists()
