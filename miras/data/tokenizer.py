"""Tokenizers: raw UTF-8 bytes (vocab 256) and a byte-level BPE trained offline with `tokenizers`.

Both have the same interface: name, vocab_size, eos_id, encode(str) -> list[int], decode(list[int]) -> str,
save(dir). `load_tokenizer("byte" | dir)` returns the one saved in dir.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..errors import require
from .corpus import Document

EOS = "<|endoftext|>"
BYTE_FILE = "byte_tokenizer.json"
BPE_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255.

    eos_id = 0, the NUL byte: it keeps the vocabulary at exactly 256 and never occurs in text
    (a text that does contain NUL would read as a document break there). Ids >= 256 (a padded
    model vocabulary) decode as U+FFFD.
    """
    name = "byte"
    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i if 0 <= i < 256 else 0xFF for i in ids).decode("utf-8", errors="replace")

    @classmethod
    def config(cls) -> dict:
        return {"name": cls.name, "vocab_size": cls.vocab_size, "eos_id": cls.eos_id}

    def save(self, out_dir: str | Path) -> Path:
        """Writes byte_tokenizer.json (what load_tokenizer(out_dir) reads back)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / BYTE_FILE).write_text(json.dumps(self.config(), indent=1))
        return out_dir


class BPETokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenization, no normalization: decode(encode(s)) == s).

    eos_id is the special token "<|endoftext|>"; encode adds no special tokens, decode keeps them.
    """
    name = "bpe"

    def __init__(self, tokenizer):
        """tokenizer: a `tokenizers.Tokenizer` whose vocabulary contains "<|endoftext|>"."""
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.token_to_id(EOS)
        require(self.eos_id is not None, "tokenizer", "BPE", f"a vocabulary with the special token {EOS!r}",
                "train it with train_bpe")
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, out_dir: str | Path) -> Path:
        """Writes tokenizer.json and tokenizer_config.json (loadable by transformers' AutoTokenizer)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(out_dir / BPE_FILE))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
                  "unk_token": EOS, "clean_up_tokenization_spaces": False, "add_prefix_space": False}
        (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
        return out_dir

    @classmethod
    def load(cls, out_dir: str | Path) -> BPETokenizer:
        from tokenizers import Tokenizer

        path = Path(out_dir) / BPE_FILE
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            require(False, "tokenizer", str(path), "a tokenizers JSON file", f"retrain with train_bpe ({e})")


def train_bpe(docs: list[Document], vocab_size: int = 4096, out_dir: str | Path | None = None) -> BPETokenizer:
    """Trains a byte-level BPE on docs (streamed one document at a time); saves it in out_dir if given.

    The vocabulary is the 256 byte symbols, "<|endoftext|>" and up to vocab_size - 257 merges (fewer
    if the corpus runs out of pairs: read .vocab_size).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    require(vocab_size >= 257, "vocab_size", vocab_size, ">= 257 (256 bytes + <|endoftext|>)")
    require(len(docs) > 0, "len(docs)", 0, ">= 1 document")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d.text for d in docs), trainer=trainer, length=len(docs))
    bpe = BPETokenizer(tok)
    if out_dir is not None:
        bpe.save(out_dir)
    return bpe


def load_tokenizer(dir_or_name: str | Path) -> ByteTokenizer | BPETokenizer:
    """The tokenizer "byte", or the one saved in a folder: tokenizer.json (BPE) or byte_tokenizer.json (bytes)."""
    if str(dir_or_name) == ByteTokenizer.name:
        return ByteTokenizer()
    path = Path(dir_or_name)
    if (path / BPE_FILE).is_file():
        return BPETokenizer.load(path)
    require((path / BYTE_FILE).is_file(), "tokenizer", str(path),
            f'"byte" or a folder with {BPE_FILE} or {BYTE_FILE}', "train one with train_bpe or save one")
    try:
        meta = json.loads((path / BYTE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        meta = {"error": str(e)}
    require(meta == ByteTokenizer.config(), "tokenizer", str(path / BYTE_FILE), f"the JSON {ByteTokenizer.config()}",
            "rewrite it with ByteTokenizer().save(dir)")
    return ByteTokenizer()
