"""MQAR and S-NIAH: determinism, exact formats and label positions, scoring, and the trainer's task data."""
import math
import re

import pytest
import torch
from torch import nn

from miras.data import MQAR, MQAR_SETTINGS, NIAH_LENGTHS, NeedleTask, depths, get_task
from miras.eval import greedy_generate, mqar_accuracy, needle_accuracy, score_mqar, score_needle
from miras.train.data import task_batches
from miras.data.niah import HEAD, RULER_SINGLE, UUID_PATTERN, WORDS
from miras.data.rng import generator_for
from miras.models import MirasConfig, MirasLM
from miras.space import ConfigError
from miras.train.config import DataConfig, OptimConfig, RunConfig, RunOptions


class ByteTok:
    """UTF-8 bytes, one token each."""
    vocab_size, name = 256, "byte"

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


class PairTok:
    """Two bytes per token (a coarser granularity than bytes); an odd tail byte is id 65536 + byte."""
    vocab_size, name = 65536 + 256, "pair"

    def encode(self, text):
        b = text.encode()
        return [b[i] * 256 + b[i + 1] for i in range(0, len(b) - 1, 2)] + ([65536 + b[-1]] if len(b) % 2 else [])

    def decode(self, ids):
        return b"".join(bytes([i - 65536]) if i >= 65536 else bytes(divmod(i, 256)) for i in ids).decode()


def gen(seed):
    return generator_for(seed)


# ---------------------------------------------------------------- MQAR

def test_mqar_same_seed_same_tensors_other_seed_differs():
    task = MQAR(seq_len=64, num_kv_pairs=8, batch_size=4)
    a, b = task.sample(gen(1), 4), task.sample(gen(1), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(task.sample(gen(2), 4)[0], a[0])
    assert torch.equal(task.batch(5)[0], task.batch(5)[0]) and not torch.equal(task.batch(5)[0], task.batch(6)[0])
    assert torch.equal(task.eval_set(8, seed=3)[1], task.eval_set(8, seed=3)[1])
    assert not torch.equal(task.eval_set(8, seed=3)[0], task.eval_set(8, seed=4)[0])


@pytest.mark.parametrize("random_fill", [True, False], ids=["random-fill", "zero-fill"])
@pytest.mark.parametrize("vocab,seq_len,pairs", [(256, 64, 4), (256, 256, 64), (8192, 128, 32)])
def test_mqar_format(vocab, seq_len, pairs, random_fill):
    inputs, labels = MQAR(seq_len=seq_len, num_kv_pairs=pairs, vocab_size=vocab,
                          random_fill=random_fill).sample(gen(0), 32)
    assert inputs.shape == labels.shape == (32, seq_len) and inputs.dtype == labels.dtype == torch.int64
    keys, values = inputs[:, 0:2 * pairs:2], inputs[:, 1:2 * pairs:2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and ((values >= vocab // 2) & (values < vocab)).all()
    for row_keys, row_inputs, row_labels, row_values in zip(keys, inputs, labels, values):
        assert len(set(row_keys.tolist())) == pairs
        where = (row_labels != -100).nonzero().flatten()
        assert len(where) == pairs and (where >= 2 * pairs).all() and (where % 2 == 0).all()
        pair_of = dict(zip(row_keys.tolist(), row_values.tolist()))
        queried = row_inputs[where].tolist()
        assert sorted(queried) == sorted(pair_of)                       # every key queried exactly once
        assert row_labels[where].tolist() == [pair_of[k] for k in queried]
        if not random_fill:
            filler = torch.ones(seq_len, dtype=torch.bool)
            filler[:2 * pairs] = False
            filler[where] = False
            assert (row_inputs[filler] == 0).all()


def test_mqar_power_law_puts_queries_near_the_pairs():
    task = MQAR(seq_len=256, num_kv_pairs=16)
    _, labels = task.sample(gen(0), 500)
    slots = ((labels != -100).nonzero()[:, 1] - 32) // 2               # 0 .. 111
    near, far = int((slots < 56).sum()), int((slots >= 56).sum())
    assert near > 2 * far, (near, far)
    counts = torch.bincount(slots, minlength=112)
    assert counts[:8].sum() > 3 * counts[-8:].sum()
    _, uniform = MQAR(seq_len=256, num_kv_pairs=16, power_a=1.0).sample(gen(0), 500)
    uniform_slots = ((uniform != -100).nonzero()[:, 1] - 32) // 2
    assert abs(int((uniform_slots < 56).sum()) / uniform_slots.numel() - 0.5) < 0.05


@pytest.mark.parametrize("kw", [dict(seq_len=60, num_kv_pairs=16), dict(vocab_size=16, num_kv_pairs=8, seq_len=64),
                                dict(power_a=0.0)], ids=["too-short", "vocab-too-small", "power_a"])
def test_mqar_rejects_impossible_settings(kw):
    with pytest.raises(ConfigError):
        MQAR(**kw)


def test_mqar_settings_fit_a_large_vocab():
    for name, grid in MQAR_SETTINGS.items():
        for seq_len, pairs in grid:
            MQAR(seq_len=seq_len, num_kv_pairs=pairs, vocab_size=8192)


def one_hot(labels, vocab, wrong=False):
    logits = torch.zeros(*labels.shape, vocab)
    target = labels.clamp(min=0)
    return logits.scatter_(-1, ((target + 1) % vocab if wrong else target).unsqueeze(-1), 1.0)


def test_score_mqar_on_hand_made_logits():
    _, labels = MQAR(seq_len=64, num_kv_pairs=4).sample(gen(0), 6)
    assert score_mqar(one_hot(labels, 256), labels) == 1.0
    assert score_mqar(one_hot(labels, 256, wrong=True), labels) == 0.0
    half = torch.cat([one_hot(labels[:3], 256), one_hot(labels[3:], 256, wrong=True)])
    assert score_mqar(half, labels) == 0.5
    with pytest.raises(ConfigError):
        score_mqar(one_hot(labels, 256), torch.full_like(labels, -100))


class MQAROracle(nn.Module):
    """Looks each input token up in its row's kv section and predicts the paired value."""

    def __init__(self, pairs, vocab):
        super().__init__()
        self.pairs, self.vocab, self.unused = pairs, vocab, nn.Parameter(torch.zeros(1))

    def forward(self, ids, states=None):
        table = torch.zeros(ids.shape[0], self.vocab, dtype=torch.int64)
        table.scatter_(1, ids[:, 0:2 * self.pairs:2], ids[:, 1:2 * self.pairs:2])
        return one_hot(table.gather(1, ids), self.vocab), states


def test_mqar_accuracy_of_an_oracle_and_a_tiny_model():
    task = MQAR(seq_len=64, num_kv_pairs=8)
    assert mqar_accuracy(MQAROracle(8, 256), task, n=40, batch_size=16) == 1.0
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(d_model=32, heads=2, n_layers=1, chunk_size=8, d_state=16))
    acc = mqar_accuracy(model, task, n=8, batch_size=4)
    assert 0.0 <= acc <= 1.0 and model.training


# ---------------------------------------------------------------- S-NIAH

NEEDLE_RE = re.compile(r"One of the special magic (\w+) for ([\w-]+) is: ([\w-]+)\. ")


@pytest.mark.parametrize("tok", [ByteTok(), PairTok()], ids=["byte", "pair"])
@pytest.mark.parametrize("kind", ["numbers", "words", "uuids"])
@pytest.mark.parametrize("length", NIAH_LENGTHS[:3])
def test_niah_prompt_and_answer_fill_exactly_context_tokens(tok, kind, length):
    """The prompt leaves room for the answer as in training: the answer's last token is predicted at position
    context_tokens - 1 (a training row's inputs are prompt + answer minus its last token, context_tokens ids)."""
    task = NeedleTask(kind, context_tokens=length, depth=0.5, tokenizer=tok)
    for seed in range(3):
        prompt, answer, position = task.build_example(tok, gen(seed))
        assert len(prompt) + len(answer) - 1 == length
        assert task.batch(seed)[0].shape == (1, length)
        text, value = tok.decode(prompt), tok.decode(answer)
        assert value.startswith(" ") and value.strip() == NEEDLE_RE.search(text).group(3)
        assert tok.decode(prompt[position:]).startswith(f"One of the special magic {kind} for ")
        assert text.endswith("mentioned in the provided text is:")


@pytest.mark.parametrize("length", [2048, 4096])
@pytest.mark.parametrize("depth", depths(5))
def test_niah_needle_sits_at_the_requested_depth(length, depth):
    tok = ByteTok()
    task = NeedleTask("numbers", context_tokens=length, depth=depth)
    prompt, _, position = task.build_example(tok, gen(7))
    text = tok.decode(prompt)
    needle = NEEDLE_RE.search(text)
    assert needle.start() == position                                 # bytes: token index == character index
    start = len(HEAD.format(kind="numbers"))
    haystack_tokens = text.index("\nWhat is the special magic") - start - len(needle.group(0))
    assert abs(position - (start + depth * haystack_tokens)) <= 0.02 * length
    assert text[position - 2:position] == ". " or text[position - 1] == "\n"      # a sentence boundary


def test_niah_value_formats_and_determinism():
    tok = ByteTok()
    patterns = {"numbers": re.compile(r"^[1-9]\d{6}$"), "uuids": UUID_PATTERN}
    for kind in ("numbers", "words", "uuids", "pass-key"):
        task = NeedleTask(kind, context_tokens=1024, depth=None)
        values = [tok.decode(task.build_example(tok, gen(s))[1]).strip() for s in range(20)]
        for value in values:
            assert value in WORDS if task.value_kind == "words" else patterns[task.value_kind].match(value)
        assert len(set(values)) > 10
        assert task.build_example(tok, gen(3)) == task.build_example(tok, gen(3))
        assert task.build_example(tok, gen(3)) != task.build_example(tok, gen(4))


def test_niah_text_haystack_inserts_at_a_sentence_boundary():
    docs = [f"Document {d} opens here. It has a second sentence! Does it have a third? Yes, sentence {d}."
            for d in range(40)]
    tok = ByteTok()
    task = NeedleTask("words", context_tokens=1024, depth=0.4, haystack="text", documents=tuple(docs))
    prompt, answer, position = task.build_example(tok, gen(0))
    text = tok.decode(prompt)
    assert len(prompt) + len(answer) - 1 == 1024 and "Document" in text and NEEDLE_RE.search(text).start() == position
    assert text[position - 2] in ".!?" and text[position - 1] == " "
    assert task.build_example(tok, gen(0)) != task.build_example(tok, gen(1))   # a random first sentence
    with pytest.raises(ConfigError):
        NeedleTask(haystack="text")


def test_niah_training_rows_label_only_the_answer():
    tok = ByteTok()
    task = NeedleTask("uuids", context_tokens=512, depth=None, tokenizer=tok, batch_size=3, seed=1)
    inputs, labels = task.batch(4)
    assert inputs.shape == labels.shape == (3, 512)
    assert torch.equal(task.batch(4)[0], inputs) and not torch.equal(task.batch(5)[0], inputs)
    for x, y in zip(inputs, labels):
        where = (y != -100).nonzero().flatten()
        assert where.tolist() == list(range(512 - 37, 512))             # " " + 36-character uuid
        assert UUID_PATTERN.match(tok.decode(y[where].tolist()).strip())
        assert tok.decode(x.tolist()).endswith("provided text is:" + tok.decode(y[where][:-1].tolist()))


def test_niah_rejects_bad_settings():
    tok = ByteTok()
    with pytest.raises(ConfigError, match="context_tokens"):
        NeedleTask(context_tokens=100).build_example(tok, gen(0))
    for kw in (dict(value_kind="colors"), dict(haystack="essays"), dict(depth=1.5)):
        with pytest.raises(ConfigError):
            NeedleTask(**kw)
    with pytest.raises(ConfigError, match="tokenizer"):
        NeedleTask(context_tokens=512).batch(0)


@pytest.mark.parametrize("generated,answer,ok", [
    (" 1234567", "1234567", True), ("1234567.", " 1234567", True), (' "1234567". The grass', "1234567", True),
    ("\n1234567\n", "1234567", True), (" 12345678", " 1234567", True), ("123456", "1234567", False),
    ("", "1234567", False), ("is 1234567", "1234567", True), ("1234 567", "1234567", False),
    ("Calm-River,", "calm-river", True), ("calm-rive", "calm-river", False), (" 7654321", "1234567", False)])
def test_score_needle_is_rulers_string_match(generated, answer, ok):
    """RULER's string_match_all: the stripped answer occurs in the generation, case ignored."""
    assert score_needle(generated, answer) is ok


def test_score_needle_refuses_an_empty_answer():
    with pytest.raises(ConfigError, match="answer"):
        score_needle("1234567", " ")


def test_depth_grid_and_lengths():
    assert depths(5) == [0.0, 0.25, 0.5, 0.75, 1.0] and len(depths()) == 10
    assert NIAH_LENGTHS == (1024, 2048, 4096, 8192, 16384)
    for haystack, kind in RULER_SINGLE.values():
        prompt, answer, _ = NeedleTask(kind, 1024, 0.5, haystack, documents=("One. Two.",)).build_example(ByteTok(),
                                                                                                        gen(0))
        assert len(prompt) + len(answer) - 1 == 1024


class NeedleOracle(nn.Module):
    """Reads the needle out of the prompt and emits " value." one byte per call (states = what is left); wrong:
    the value with its last character changed."""

    def __init__(self, wrong=False):
        super().__init__()
        self.wrong, self.unused = wrong, nn.Parameter(torch.zeros(1))

    def forward(self, ids, states=None):
        if states is None:
            value = NEEDLE_RE.search(ByteTok().decode(ids[0].tolist())).group(3)
            if self.wrong:
                value = value[:-1] + ("1" if value[-1] == "0" else "0")
            states = ByteTok().encode(" " + value + ". ")
        logits = torch.zeros(1, ids.shape[1], 256)
        logits[0, -1, states[0]] = 1.0
        return logits, states[1:]


def test_greedy_generation_and_needle_accuracy():
    tok = ByteTok()
    task = NeedleTask("uuids", context_tokens=1024, depth=None)
    prompt, answer, _ = task.build_example(tok, gen(0))
    assert greedy_generate(NeedleOracle(), prompt, len(answer)) == answer
    assert needle_accuracy(NeedleOracle(), task, tok, n=5) == 1.0
    assert needle_accuracy(NeedleOracle(wrong=True), task, tok, n=5) == 0.0


# ---------------------------------------------------------------- registry and trainer data

def test_get_task_lists_the_valid_names():
    assert isinstance(get_task("mqar", seq_len=64, num_kv_pairs=4), MQAR)
    with pytest.raises(ConfigError, match=r"\['mqar', 'niah'\]"):
        get_task("babi")


def run_config(task, seq_len, seed=0):
    return RunConfig(data=DataConfig(task=task, seq_len=seq_len), optim=OptimConfig(batch_size=4),
                     run=RunOptions(seed=seed, eval_batches=2))


@pytest.mark.parametrize("task,seq_len", [("mqar", 128), ("niah", 512)])
def test_task_batches_are_pure_per_step_and_differ_by_rank(task, seq_len):
    data = task_batches(run_config(task, seq_len), rank=0, world=2, tokenizer=ByteTok())
    again = task_batches(run_config(task, seq_len), rank=0, world=2, tokenizer=ByteTok())
    other_rank = task_batches(run_config(task, seq_len), rank=1, world=2, tokenizer=ByteTok())
    other_seed = task_batches(run_config(task, seq_len, seed=1), rank=0, world=2, tokenizer=ByteTok())
    x, y = data.train.batch(3)
    assert x.shape == y.shape == (4, seq_len) and (y != -100).any()
    assert torch.equal(again.train.batch(3)[0], x) and torch.equal(again.train.batch(3)[1], y)
    assert not torch.equal(data.train.batch(4)[0], x)
    assert not torch.equal(other_rank.train.batch(3)[0], x) and not torch.equal(other_seed.train.batch(3)[0], x)
    val = list(data.val_batches())
    assert len(val) == 2 and all(v[0].shape == (4, seq_len) for v in val)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(val, other_rank.val_batches()))
    assert data.vocab_size == 256 and data.tokenizer_name == ("mqar" if task == "mqar" else "byte")
    if task == "mqar":
        assert data.unigram_loss == pytest.approx(math.log(128))        # uniform over the 128 value ids
    else:
        assert 0 < data.unigram_loss < math.log(11)                     # " " and the digits


def test_task_batches_rejects_an_unknown_task():
    with pytest.raises(ConfigError, match="niah"):
        task_batches(run_config("copy", 64), 0, 1)


def test_task_niah_mixes_the_variants_it_is_given():
    """data.niah_variants: the rows are drawn from the named RULER variants (the text ones in the corpus's text);
    the default is the noise haystack alone."""
    cfg = RunConfig(data=DataConfig(task="niah", seq_len=512, niah_variants=["niah_single_2", "niah_single_3"]),
                    optim=OptimConfig(batch_size=8), run=RunOptions(eval_batches=1))
    inputs, _ = task_batches(cfg, rank=0, world=1, tokenizer=ByteTok()).train.batch(0)
    text = [bytes(row.tolist()).decode("utf-8", "replace") for row in inputs]
    assert not any("The grass is green" in t for t in text)                  # no noise haystack
    assert any("uuids" in t for t in text) and any("numbers" in t for t in text)
    default = task_batches(run_config("niah", 512), rank=0, world=1, tokenizer=ByteTok()).train.batch(0)[0]
    assert all("The grass is green" in bytes(row.tolist()).decode("utf-8", "replace") for row in default)
    with pytest.raises(ConfigError, match="data.niah_variants"):
        RunConfig.from_dict({"data": {"task": "niah", "niah_variants": ["niah_multi"]}})
