"""lm-eval adapter: the local tasks through simple_evaluate, every number checked against MirasLM computed directly.

Needs the lmeval extra (`pip install "miras[lmeval]"`); without it only the data and import-error tests run.
"""
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from miras.data import ByteTokenizer, Document, train_bpe
from miras.eval.lm_eval_tasks import DATA_FILES, LOCAL_TASKS, TASK_DIR, local_task_names, write_task_data
from miras.models import MirasConfig, MirasLM
from miras.space import ConfigError
from miras.train.checkpoint import save_checkpoint
from miras.train.config import load_run_config

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason='needs the lmeval extra: pip install "miras[lmeval]"')


# ---------------------------------------------------------------- helpers: runs and direct computation
@pytest.fixture(scope="module")
def byte_run(tmp_path_factory):
    """A gated-deltanet run folder with the byte tokenizer (see hand_run)."""
    return hand_run(tmp_path_factory.mktemp("runs") / "byte", ByteTokenizer(), preset="gated-deltanet", d_model=16,
                    heads=2, n_layers=1)


def hand_run(path, tokenizer, successor=False, talkative=False, **model):
    """A run folder as `miras train` writes it (config.json, step-000001/, tokenizer/ for BPE) with a freshly
    initialized model: no training, no corpus tokenization (tests/eval/test_compare.py covers train -> load_run).

    successor: untied head whose row x is the embedding of x - 1, so that greedy decoding walks up the byte
    values ("light" -> "uvwxyz"); a fresh tied model just repeats its last token.
    talkative: untied head with N(0, 1) weights, so that greedy tokens vary and depend on the whole context.
    """
    torch.manual_seed(0)
    overrides = ["size=", f"data.tokenizer={tokenizer.name}", f"run.out_dir={path}"]
    cfg = load_run_config(None, overrides + [f"model.{k}={json.dumps(v)}" for k, v in model.items()])
    mcfg = MirasConfig.from_dict({**cfg.model.to_dict(), "vocab_size": tokenizer.vocab_size,
                                  **({"tie_embeddings": False} if successor or talkative else {})})
    net = MirasLM(mcfg)
    if successor:
        net.head.weight.data = net.embed.weight.data.roll(1, dims=0).clone()
    if talkative:
        net.head.weight.data = torch.randn_like(net.head.weight)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**cfg.to_dict(), "resolved_model": mcfg.to_dict()}))
    if tokenizer.name == "bpe":
        tokenizer.save(path / "tokenizer")
    opt = torch.optim.AdamW(net.parameters())
    save_checkpoint(path, 1, net.state_dict(), opt.state_dict(), {"model_config": mcfg.to_dict()})
    return path


def logprobs(model, ids):
    """[len(ids) - 1, V] log p(. | ids[:t + 1]) from one full forward pass."""
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([ids]))[0][0, :-1].double(), -1)


def direct_ll(model, ctx, cont):
    lp = logprobs(model, ctx + cont)[len(ctx) - 1:]
    picked = lp.gather(-1, torch.tensor(cont)[:, None])[:, 0]
    return float(picked.sum()), bool((lp.argmax(-1) == torch.tensor(cont)).all())


def direct_greedy(model, tok, prompt, max_new, until):
    """Greedy decoding recomputing the whole sequence at every step (no carried state)."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            token = int(model(torch.tensor([ids]))[0][0, -1, :tok.vocab_size].argmax())
            if token == tok.eos_id:
                break
            out.append(token)
            ids.append(token)
            if any(s in tok.decode(out) for s in until):
                break
    text = tok.decode(out)
    for s in until:
        text = text.split(s)[0]
    return text


def lm_convention(tok, context, continuation):
    """lm-eval's causal tokenization, written out independently of the adapter."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    ctx = tok.encode(stripped)
    return ctx, tok.encode(stripped + continuation)[len(ctx):]


def instances(kind, args):
    from lm_eval.api.instance import Instance
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


# ---------------------------------------------------------------- tests
def test_local_task_data_is_shipped_deterministic_and_small(tmp_path):
    assert set(LOCAL_TASKS) <= set(local_task_names())
    written = write_task_data(tmp_path)
    assert sorted(p.name for p in written) == sorted(DATA_FILES.values())
    for p in written:
        assert p.read_bytes() == (TASK_DIR / p.name).read_bytes(), f"{p.name} is stale: python -m miras.eval.lm_eval_tasks"
    assert sum(p.stat().st_size for p in written) < 200_000
    mc = [json.loads(line) for line in (TASK_DIR / "shakespeare_mc.jsonl").read_text().splitlines()]
    assert len(mc) == 100 and all(len(set(d["choices"])) == 4 and 0 <= d["label"] < 4 for d in mc)
    assert {d["title"] for d in mc} <= {"othello", "romeo_and_juliet", "sonnets", "troilus_and_cressida"}
    keys = [json.loads(line) for line in (TASK_DIR / "passkey.jsonl").read_text().splitlines()]
    assert all(d["prompt"].count(d["answer"]) == 2 and d["prompt"].endswith("The pass key is") for d in keys)


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "miras.eval.lm_harness", raising=False)
    with pytest.raises(ImportError, match=r'pip install "miras\[lmeval\]"'):
        importlib.import_module("miras.eval.lm_harness")


@needs_lm_eval
def test_local_tasks_through_simple_evaluate_match_direct_computation(byte_run, tmp_path, monkeypatch):
    from miras.eval.lm_harness import evaluate, format_results
    from miras.eval.load import load_run

    monkeypatch.chdir(tmp_path)
    # piece=256: the 4 KB passages are streamed in 16 pieces with the state carried; batch_size=3 right-pads
    results = evaluate(byte_run, list(LOCAL_TASKS), limit=3, batch_size=3, piece=256, bootstrap_iters=0,
                       log_samples=True, out="results.json")
    model, tok, _ = load_run(byte_run)
    assert isinstance(tok, ByteTokenizer)
    samples, metrics = results["samples"], results["results"]
    assert json.loads((tmp_path / "results.json").read_text())["results"].keys() == metrics.keys()
    assert results["config"]["preset"] == "gated-deltanet" and results["config"]["max_length"] is None

    mc = samples["miras_shakespeare_mc"]
    assert len(mc) == 3
    hits = []
    for sample in mc:
        assert [a[1] for a in sample["arguments"]] == ["\n" + c for c in sample["doc"]["choices"]]
        lls = []
        for (context, continuation), [(ll, greedy)] in zip(sample["arguments"], sample["resps"]):
            want_ll, want_greedy = direct_ll(model, tok.encode(context), tok.encode(continuation))
            assert ll == pytest.approx(want_ll, abs=1e-5) and greedy == want_greedy
            lls.append(ll)
        hits.append(max(range(4), key=lls.__getitem__) == sample["doc"]["label"])
    assert metrics["miras_shakespeare_mc"]["acc,none"] == pytest.approx(sum(hits) / 3)

    ppl = samples["miras_shakespeare_ppl"]
    total_ll = total_bytes = 0.0
    for sample in ppl:
        text = sample["doc"]["text"]
        assert sample["arguments"] == [(text,)] and len(text.encode()) > 3000
        ids = [tok.eos_id] + tok.encode(text)
        want = float(logprobs(model, ids).gather(-1, torch.tensor(ids[1:])[:, None]).sum())
        [[ll]] = sample["resps"]
        assert ll == pytest.approx(want, rel=1e-6, abs=1e-5)
        total_ll, total_bytes = total_ll + want, total_bytes + len(text.encode())
    assert metrics["miras_shakespeare_ppl"]["byte_perplexity,none"] == pytest.approx(math.exp(-total_ll / total_bytes))
    assert metrics["miras_shakespeare_ppl"]["bits_per_byte,none"] == pytest.approx(-total_ll / total_bytes / math.log(2))

    for sample in samples["miras_passkey"]:
        context, gen_kwargs = sample["arguments"][0]
        assert gen_kwargs["until"] == ["\n", "."] and gen_kwargs["max_gen_toks"] == 12
        [[text]] = sample["resps"]
        assert text == direct_greedy(model, tok, tok.encode(context), 12, ["\n", "."])
        assert "\n" not in text and "." not in text and len(tok.encode(text)) <= 12
    assert 0.0 <= metrics["miras_passkey"]["exact_match,none"] <= 1.0
    assert "miras_shakespeare_mc" in format_results(results)


@needs_lm_eval
def test_generate_until_cuts_at_stop_strings_and_respects_max_gen_toks(tmp_path, monkeypatch):
    from miras.eval.lm_harness import MirasEvalLM

    run = hand_run(tmp_path / "succ", ByteTokenizer(), successor=True, preset="gated-deltanet", d_model=16,
                   heads=2, n_layers=1)
    lm = MirasEvalLM(path=str(run), max_gen_toks=6)
    model, tok = lm.model, lm.tok
    prompt = "ROMEO.\nBut soft, what light"
    free = direct_greedy(model, tok, tok.encode(prompt), 6, [])
    assert free == "uvwxyz"
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(a[0].shape) or forward(*a, **k))
    gen = lambda *args: lm.generate_until(instances("generate_until", list(args)))  # noqa: E731
    assert gen((prompt, {"until": []})) == [free]                          # max_gen_toks=6 from the constructor
    calls.clear()
    assert gen((prompt, {"until": ["never", "xy"]})) == ["uvw"]
    # one prefill call, then one call per token until "xy" appears: u v w x fed back, y ends it
    assert calls == [torch.Size([1, len(prompt)])] + [torch.Size([1, 1])] * 4
    assert gen((prompt, {"until": "w", "max_gen_toks": 20}), (prompt, {"max_gen_toks": 2})) == ["uv", "uv"]
    assert gen(("", {"max_gen_toks": 0})) == [""]
    with pytest.raises(ConfigError, match="greedy"):
        gen((prompt, {"do_sample": True, "temperature": 1.0}))


@needs_lm_eval
def test_bpe_run_and_a_step_checkpoint_path(tmp_path):
    from miras.eval.lm_harness import MirasEvalLM

    text = " ".join(f"the {w} of the {v} is here." for w in ("king", "queen", "moor", "night") for v in ("sea", "sky"))
    bpe = train_bpe([Document("t", text * 3)], vocab_size=300)
    run = hand_run(tmp_path / "bpe", bpe, preset="gated-deltanet", d_model=16, heads=2, n_layers=1)
    lm = MirasEvalLM(pretrained=str(run / "step-000001"), batch_size=2)
    assert lm.tok.name == "bpe" and lm.checkpoint.name == "step-000001"
    args = [("the king of the", " sea is here."), ("the moor of the ", "sky"), ("", "the night"),
            ("the queen", " of the sky is here. the king")]
    got = lm.loglikelihood(instances("loglikelihood", args))
    for (context, continuation), (ll, greedy) in zip(args, got):
        ctx, cont = lm_convention(bpe, context, continuation) if context else ([bpe.eos_id], bpe.encode(continuation))
        want_ll, want_greedy = direct_ll(lm.model, ctx, cont)
        assert ll == pytest.approx(want_ll, abs=1e-5) and greedy == want_greedy
    [gen] = lm.generate_until(instances("generate_until", [("the king", {"until": ["sky"], "max_gen_toks": 6})]))
    assert gen == direct_greedy(lm.model, bpe, bpe.encode("the king"), 6, ["sky"])


@needs_lm_eval
def test_context_limit_windows_rolling_and_truncates_left(tmp_path):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from miras.eval.lm_harness import MirasEvalLM

    tok = ByteTokenizer()
    run = hand_run(tmp_path / "attn", tok, preset="transformer", d_model=16, heads=2, n_layers=1, max_context=48)
    lm = MirasEvalLM(path=str(run), piece=20)
    assert lm.max_length == 48
    text = "Now is the winter of our discontent made glorious summer by this sun of York; " * 2
    ids = tok.encode(text)
    want = 0.0
    for ctx, pred in map(make_disjoint_window, get_rolling_token_windows(ids, tok.eos_id, 48, 1)):
        window = ctx + pred
        assert len(window) <= 49
        want += float(logprobs(lm.model, window)[-len(pred):].gather(-1, torch.tensor(pred)[:, None]).sum())
    [got] = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(text,)]))
    assert got == pytest.approx(want, abs=1e-5)
    full = [tok.eos_id] + ids
    assert abs(got - float(logprobs(lm.model, full).gather(-1, torch.tensor(full[1:])[:, None]).sum())) > 1e-3

    [(ll, _)] = lm.loglikelihood(instances("loglikelihood", [(text, "and")]))
    ctx, cont = lm_convention(tok, text, "and")
    assert cont == tok.encode(" and")                   # the context's trailing space moved to the continuation
    kept = (ctx + cont)[-49:]                           # the last max_context + 1 tokens
    assert ll == pytest.approx(direct_ll(lm.model, kept[:-4], kept[-4:])[0], abs=1e-5)
    with pytest.raises(ConfigError, match="max_length=64.*max_context=48"):
        MirasEvalLM(path=str(run), max_length=64)
    with pytest.raises(ConfigError, match="neither a `miras train` run folder"):
        MirasEvalLM(path=str(tmp_path))


@needs_lm_eval
def test_cli_prints_the_table_and_writes_json(byte_run, tmp_path, capsys):
    from miras.cli import main

    out = tmp_path / "r.json"
    assert main(["lm-eval", str(byte_run), "--tasks", "miras_shakespeare_mc", "--limit", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "miras_shakespeare_mc" in printed and "acc" in printed and str(out) in printed
    assert "acc,none" in json.loads(out.read_text())["results"]["miras_shakespeare_mc"]
    assert main(["lm-eval", str(tmp_path), "--tasks", "miras_shakespeare_mc"]) == 2
    assert "neither a `miras train` run folder" in capsys.readouterr().err


# ---------------------------------------------------------------- lm-eval as its users run it
# one fresh process, both import orders: miras's adapter first, then (registry and modules dropped) lm-eval's models
REGISTRY = r'''
import sys
import miras.eval.lm_harness
from lm_eval.api.registry import get_model, model_registry
print(get_model("hf").__name__, get_model("miras").__name__)
model_registry._clear()
for name in ("lm_eval.models", "miras.eval.lm_harness"):
    del sys.modules[name]
import lm_eval.models
import miras.eval.lm_harness
print(get_model("hf").__name__, get_model("miras").__name__)
'''


@needs_lm_eval
def test_importing_the_adapter_keeps_lm_evals_own_models_in_either_order(tmp_path):
    proc = subprocess.run([sys.executable, "-c", REGISTRY], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["HFLM", "MirasEvalLM"] * 2


@needs_lm_eval
def test_simple_evaluate_model_miras_runs_the_local_tasks_from_any_folder(byte_run, tmp_path, monkeypatch):
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    import miras.eval.lm_harness  # noqa: F401  (registers "miras")

    monkeypatch.chdir(tmp_path)                      # neither the task folder nor the repository
    results = simple_evaluate(model="miras", model_args=f"path={byte_run}", tasks=list(LOCAL_TASKS), limit=2,
                              task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False),
                              bootstrap_iters=0)
    assert {task: len(results["samples"][task]) for task in LOCAL_TASKS} == dict.fromkeys(LOCAL_TASKS, 2)
    assert not list(tmp_path.iterdir())


@needs_lm_eval
def test_unknown_task_names_are_config_errors(byte_run, capsys):
    from miras.cli import main
    from miras.eval.lm_harness import evaluate

    with pytest.raises(ConfigError, match=r"tasks='miras_shakespeare_mcq' is invalid: allowed the local tasks "
                                          r"\(miras_passkey, .*\).*did you mean .*miras_shakespeare_mc.*lm-eval ls"):
        evaluate(byte_run, "miras_shakespeare_mc,miras_shakespeare_mcq")
    assert main(["lm-eval", str(byte_run), "--tasks", "miras_passkey,no_such_task,hellaswag"]) == 2
    err = capsys.readouterr().err
    assert "tasks='no_such_task'" in err and "hellaswag" not in err and "Traceback" not in err


@needs_lm_eval
def test_lm_eval_hf_on_an_exported_folder_gives_the_numbers_of_miras_lm_eval(byte_run, tmp_path):
    pytest.importorskip("transformers")
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    from miras.eval.lm_harness import evaluate
    from miras.models.export import export_run

    export_run(byte_run, tmp_path / "hf")
    kw = dict(tasks=list(LOCAL_TASKS), limit=3, bootstrap_iters=0, log_samples=True)
    ours = evaluate(byte_run, **kw)
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},trust_remote_code=True,device=cpu",
                             task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False), **kw)
    assert theirs["config"]["model"] == "hf"
    for task in LOCAL_TASKS:
        metrics = {k: v for k, v in ours["results"][task].items() if k.endswith(",none") and "stderr" not in k}
        assert len(metrics) >= 1
        assert {k: theirs["results"][task][k] for k in metrics} == pytest.approx(metrics, rel=1e-4)
        for a, b in zip(ours["samples"][task], theirs["samples"][task], strict=True):
            assert a["doc"] == b["doc"] and a["arguments"] == b["arguments"]
            assert same_responses(a["resps"], b["resps"]), (task, a["resps"], b["resps"])


def same_responses(a, b) -> bool:
    """Log-likelihoods to 1e-5 relative, everything else (greedy flags, generated text) exactly."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same_responses, a, b))
    if isinstance(a, float) and not isinstance(a, bool):
        return b == pytest.approx(a, rel=1e-5, abs=1e-6)
    return a == b
