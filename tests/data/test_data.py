import json
import math
import re

import numpy as np
import pytest
import torch

from miras.data import (BPETokenizer, ByteTokenizer, Document, LMBatches, build_token_file, load_documents,
                        load_tokenizer, open_token_file, split_documents, train_bpe, unigram_entropy, val_batches)
from miras.data.corpus import write_documents
from miras.space import ConfigError


def raises_naming(path):
    return pytest.raises(ConfigError, match=re.escape(str(path)))


@pytest.fixture(scope="module")
def docs():
    return load_documents()


@pytest.fixture(scope="module")
def split(docs):
    return split_documents(docs)


@pytest.fixture(scope="module")
def bpe_dir(split, tmp_path_factory):
    train, _ = split
    out = tmp_path_factory.mktemp("bpe")
    train_bpe(train[:2], vocab_size=512, out_dir=out)
    return out


def test_embedded_corpus_has_42_works(docs):
    assert len(docs) == 42 and len({d.title for d in docs}) == 42
    assert all(isinstance(d, Document) and len(d.text) > 1000 for d in docs)
    assert "hamlet" in {d.title for d in docs}


def test_split_is_deterministic_and_by_whole_documents(docs, split):
    train, val = split
    assert split_documents(docs) == split
    assert split_documents(docs[::-1])[1] == val[::-1]  # a document's side does not depend on the order
    assert len(val) == 4 and len(train) + len(val) == len(docs)
    assert not {d.title for d in train} & {d.title for d in val}
    assert split_documents(docs, seed=1) != split
    assert len(split_documents(docs[:2], val_fraction=0.01)[1]) == 1


def test_file_formats(tmp_path):
    docs = [Document("a", "first\ndocument é"), Document("b", "second")]
    for name in ("c.jsonl", "c.jsonl.xz"):
        assert load_documents(write_documents(docs, tmp_path / name)) == docs
    (tmp_path / "dir").mkdir()
    for d in docs:
        (tmp_path / "dir" / f"{d.title}.txt").write_text(d.text, encoding="utf-8")
    assert load_documents(tmp_path / "dir") == docs
    assert load_documents(tmp_path / "dir" / "a.txt") == docs[:1]


def test_bad_corpus_raises_naming_the_path(tmp_path):
    with raises_naming(tmp_path / "missing.jsonl"):
        load_documents(tmp_path / "missing.jsonl")
    good = write_documents([Document("a", "x" * 10_000)], tmp_path / "good.jsonl.xz").read_bytes()
    (tmp_path / "trunc.jsonl.xz").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.jsonl.xz").write_bytes(b"not xz at all")
    (tmp_path / "bad.jsonl").write_text('{"title": "a", "text": "ok"}\n{"title": broken\n')
    (tmp_path / "notext.jsonl").write_text('{"title": "a"}\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    for name in ("trunc.jsonl.xz", "garbage.jsonl.xz", "notext.jsonl", "latin1.txt", "data.csv", "empty"):
        with raises_naming(tmp_path / name):
            load_documents(tmp_path / name)
    with raises_naming(f"{tmp_path / 'bad.jsonl'}:2"):
        load_documents(tmp_path / "bad.jsonl")


def test_byte_tokenizer_round_trip(split, tmp_path):
    tok = ByteTokenizer()
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("byte", 256, 0)
    for d in split[1]:
        ids = tok.encode(d.text)
        assert max(ids) < 256 and tok.decode(ids) == d.text
    assert tok.decode([104, 105, 300]) == "hi\ufffd"
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert isinstance(load_tokenizer(tok.save(tmp_path)), ByteTokenizer)


def test_bpe_round_trip_on_every_val_document(split, bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert isinstance(tok, BPETokenizer) and tok.name == "bpe" and tok.vocab_size == 512
    assert tok.decode([tok.eos_id]) == "<|endoftext|>"
    for d in split[1]:
        ids = tok.encode(d.text)
        assert len(ids) < len(d.text.encode()) and max(ids) < tok.vocab_size
        assert tok.decode(ids) == d.text


def test_bad_tokenizer_dir_raises(tmp_path):
    with raises_naming(tmp_path):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{")
    with raises_naming(tmp_path / "tokenizer.json"):
        load_tokenizer(tmp_path)


def test_autotokenizer_loads_saved_bpe(split, bpe_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
    tok = load_tokenizer(bpe_dir)
    text = split[1][0].text[:20_000]
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf.decode(tok.encode(text)) == text and hf.eos_token_id == tok.eos_id


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_token_file_round_trip(split, bpe_dir, tmp_path, kind):
    tok = load_tokenizer("byte" if kind == "byte" else bpe_dir)
    docs = split[1][:2]
    tf = build_token_file(docs, tok, tmp_path / "val.bin")
    expected = np.concatenate([tok.encode(d.text) + [tok.eos_id] for d in docs])
    again = open_token_file(tmp_path / "val.bin")
    assert len(tf) == len(again) == len(expected) and tf.tokens.dtype == np.uint16
    np.testing.assert_array_equal(again.tokens, expected)
    assert again.meta["tokenizer"] == kind and again.meta["vocab_size"] == tok.vocab_size
    assert again.meta["documents"] == 2 and len(again.meta["source_hash"]) == 64
    assert not again.tokens.flags.writeable


def test_bad_token_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "t.bin"
    build_token_file([Document("a", "hello world")], ByteTokenizer(), path)
    meta = path.with_name("t.bin.json")
    path.write_bytes(path.read_bytes()[:-3])  # truncated
    with raises_naming(path):
        open_token_file(path)
    meta.write_text("{not json")
    with raises_naming(meta):
        open_token_file(path)
    meta.write_text(json.dumps({"dtype": "uint16"}))
    with raises_naming(meta):
        open_token_file(path)
    meta.unlink()
    with raises_naming(meta):
        open_token_file(path)


def test_batches_are_a_pure_function_of_seed_step_rank():
    tokens = np.arange(10_000, dtype=np.int64)  # every window is identified by its first id
    a, b = LMBatches(tokens, 16, 4, seed=7), LMBatches(tokens, 16, 4, seed=7)
    b.batch(11)
    for step in (0, 5, 123_456):
        torch.testing.assert_close(a.batch(step), b.batch(step), rtol=0, atol=0)
    x, y = a.batch(3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], y[:, :-1])
    assert not torch.equal(x, a.batch(4)[0])
    ranks = [LMBatches(tokens, 16, 4, seed=7, rank=r, world_size=2).batch(3)[0] for r in range(2)]
    assert not torch.equal(ranks[0], ranks[1]) and torch.equal(ranks[0], x)
    assert not torch.equal(x, LMBatches(tokens, 16, 4, seed=8).batch(3)[0])


def test_batches_from_a_token_file(docs, tmp_path):
    tf = build_token_file(docs[:3], ByteTokenizer(), tmp_path / "t.bin")
    x, y = LMBatches(tf.tokens, 64, 8, seed=0).batch(0)
    assert int(x.max()) < 256 and int(y.max()) < 256 and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ConfigError):
        LMBatches(tf.tokens, len(tf), 1, seed=0)
    with pytest.raises(ConfigError):
        LMBatches(tf.tokens, 8, 1, seed=0, rank=2, world_size=2)


def test_val_batches_are_consecutive_windows():
    tokens = np.arange(105, dtype=np.int64)
    batches = list(val_batches(tokens, seq_len=10, batch_size=4))  # 10 windows: 4 + 4 + 2
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert torch.equal(x.flatten(), torch.arange(100)) and torch.equal(y, x + 1)
    again = list(val_batches(tokens, 10, 4, max_batches=2))
    assert len(again) == 2 and all(torch.equal(p[0], q[0]) for p, q in zip(again, batches))


def test_unigram_entropy():
    for vocab in (2, 256, 512):
        uniform = np.tile(np.arange(vocab, dtype=np.uint16), 7)
        assert abs(unigram_entropy(uniform, vocab) - math.log(vocab)) < 1e-6
    assert unigram_entropy(np.zeros(10, dtype=np.uint16), 256) == 0.0
    assert abs(unigram_entropy(torch.tensor([0, 0, 1, 1]), 4) - math.log(2)) < 1e-12
    with pytest.raises(ConfigError):
        unigram_entropy(np.array([0, 5]), 4)
