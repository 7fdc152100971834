"""Tokenized corpora on disk: a flat uint16/uint32 file of ids [N] plus a `<path>.json` meta, memory-mapped.

Documents are encoded one at a time and each is followed by the tokenizer's eos_id, so the file is
`doc_0 eos doc_1 eos ...`. The meta records dtype, count, tokenizer name / vocab size / eos id,
the number of documents and `source_hash(docs)`, so a stale file can be detected.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import require
from .corpus import Document

META_KEYS = ("dtype", "count", "tokenizer", "vocab_size", "eos_id", "documents", "source_hash")
CHUNK = 1 << 24  # tokens per bincount pass in unigram_entropy


@dataclass(frozen=True)
class TokenFile:
    """path: the binary file; tokens: its read-only np.memmap [count]; meta: the `<path>.json` dict."""
    path: Path
    tokens: np.memmap
    meta: dict

    def __len__(self) -> int:
        return len(self.tokens)


def meta_path(path: str | Path) -> Path:
    return Path(str(path) + ".json")


def source_hash(docs: list[Document]) -> str:
    """sha256 of the documents' titles and texts, in order."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.title, d.text], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def build_token_file(docs: list[Document], tokenizer, path: str | Path) -> TokenFile:
    """Encodes docs one by one (eos after each) into `path` and writes `<path>.json`; returns it opened.

    tokenizer: anything with name, vocab_size, eos_id and encode(str) -> list[int] (see tokenizer.py).
    """
    require(len(docs) > 0, "len(docs)", 0, ">= 1 document")
    path, meta_file = Path(path), meta_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_file.unlink(missing_ok=True)  # no meta until the data is complete
    dtype, count, tmp = token_dtype(tokenizer.vocab_size), 0, path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for d in docs:
            ids = np.asarray(tokenizer.encode(d.text) + [tokenizer.eos_id], dtype=np.int64)
            require(bool(((ids >= 0) & (ids < tokenizer.vocab_size)).all()), "token ids of document", d.title,
                    f"0 <= id < vocab_size={tokenizer.vocab_size}", "check the tokenizer")
            f.write(ids.astype(dtype).tobytes())
            count += len(ids)
    tmp.replace(path)
    meta = dict(zip(META_KEYS, (dtype.name, count, tokenizer.name, tokenizer.vocab_size, tokenizer.eos_id,
                                len(docs), source_hash(docs))))
    meta_tmp = meta_file.with_name(meta_file.name + ".tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    os.replace(meta_tmp, meta_file)  # last and atomic: a meta always describes a complete data file
    return open_token_file(path)


def open_token_file(path: str | Path) -> TokenFile:
    """Memory-maps `path` read-only after checking it against `<path>.json` (clear error if not)."""
    path, meta_file = Path(path), meta_path(path)
    fix = "rebuild it with build_token_file"
    require(meta_file.is_file(), "token file meta", str(meta_file), "an existing file", f"it is missing; {fix}")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        require(False, "token file meta", str(meta_file), "a JSON object", f"{fix} ({e})")
    require(isinstance(meta, dict) and all(k in meta for k in META_KEYS), "token file meta", str(meta_file),
            f"a JSON object with keys {list(META_KEYS)}", fix)
    require(meta["dtype"] in ("uint16", "uint32"), "token file meta", f"{meta_file}: dtype={meta['dtype']!r}",
            "uint16 or uint32", fix)
    require(isinstance(meta["count"], int) and meta["count"] > 0, "token file meta",
            f"{meta_file}: count={meta['count']!r}", "a positive integer", fix)
    require(path.is_file(), "token file", str(path), "an existing file", f"it is missing; {fix}")
    expected = meta["count"] * np.dtype(meta["dtype"]).itemsize
    size = path.stat().st_size
    require(size == expected, "token file", str(path), f"{expected} bytes ({meta['count']} {meta['dtype']} tokens "
            f"per {meta_file.name})", f"it has {size} bytes (truncated or stale); {fix}")
    tokens = np.memmap(path, dtype=meta["dtype"], mode="r", shape=(meta["count"],))
    return TokenFile(path, tokens, meta)


def unigram_entropy(tokens, vocab_size: int) -> float:
    """Entropy in nats/token of the ids' empirical distribution: the loss of the best context-free model.

    tokens: a 1-D integer array-like [N] (np.memmap, np.ndarray, CPU torch tensor) of ids < vocab_size.
    """
    tokens = np.asarray(tokens).reshape(-1)
    require(len(tokens) > 0, "len(tokens)", 0, ">= 1 token")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), CHUNK):
        chunk = np.asarray(tokens[start:start + CHUNK], dtype=np.int64)
        require(chunk.min() >= 0 and chunk.max() < vocab_size, "token ids", f"[{chunk.min()}, {chunk.max()}]",
                f"0 <= id < vocab_size={vocab_size}")
        counts += np.bincount(chunk, minlength=vocab_size)
    p = counts[counts > 0] / len(tokens)
    return float(p @ np.log(1.0 / p))
