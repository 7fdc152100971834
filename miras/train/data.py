"""The training data of a run: text (tokenized, memory-mapped) or a synthetic task, as pure per-step batches."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch.distributed as dist

from ..data import (LMBatches, ByteTokenizer, build_token_file, load_documents, load_tokenizer, open_token_file,
                    split_documents, train_bpe, unigram_entropy, val_batches)
from ..data.tokens import source_hash
from ..errors import ConfigError
from .config import RunConfig


@dataclass
class RunData:
    train: object                              # .batch(step) -> (inputs [B, T], labels [B, T])
    val_batches: Callable[[], Iterable]        # -> iterable of (inputs, labels)
    vocab_size: int
    tokenizer_name: str
    unigram_loss: float                        # nats/token of the unigram model of the train split
    document_start: int | None = None          # the token that starts a document (eos), when states reset there

    def resets(self, inputs):
        """resets [B, T] (True at every document's first token) for a batch of inputs, or None."""
        return None if self.document_start is None else inputs == self.document_start


def _tokenizer(cfg: RunConfig, run_dir: Path, train_docs, write: bool):
    if cfg.data.tokenizer == "byte":
        return ByteTokenizer()
    folder = run_dir / "tokenizer"
    if write and not (folder / "tokenizer.json").is_file():
        tmp = run_dir / ".tmp-tokenizer"               # written whole, then renamed: a kill leaves no half tokenizer
        shutil.rmtree(tmp, ignore_errors=True)
        train_bpe(train_docs, cfg.data.bpe_vocab, tmp)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    _barrier()
    return load_tokenizer(folder)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _cached(path: Path, docs, tok) -> bool:
    """Whether `path` is a complete token file of exactly these documents and this tokenizer (a changed data.corpus,
    or a run killed between the data and its meta, makes it stale: it is rebuilt)."""
    try:
        meta = open_token_file(path).meta
    except ConfigError:
        return False
    return (meta["source_hash"], meta["tokenizer"], meta["vocab_size"]) == (source_hash(docs), tok.name,
                                                                           tok.vocab_size)


def build_data(cfg: RunConfig, run_dir: Path, rank: int, world: int, write: bool) -> RunData:
    """Tokenizes the corpus once per run folder (rank 0 writes, the others wait) and memory-maps it."""
    d, o, seed = cfg.data, cfg.optim, cfg.run.seed
    if d.task != "text":
        from ..eval.tasks import task_batches
        return task_batches(cfg, rank, world)
    train_docs, val_docs = split_documents(load_documents(d.corpus), d.val_fraction, seed=0)
    tok = _tokenizer(cfg, run_dir, train_docs, write)
    paths = {split: run_dir / "data" / f"{split}.bin" for split in ("train", "val")}
    if write:
        for split, docs in (("train", train_docs), ("val", val_docs)):
            if not _cached(paths[split], docs, tok):
                paths[split].parent.mkdir(parents=True, exist_ok=True)
                build_token_file(docs, tok, paths[split])
    _barrier()
    train_tokens, val_tokens = (open_token_file(paths[s]).tokens for s in ("train", "val"))
    return RunData(
        train=LMBatches(train_tokens, d.seq_len, o.batch_size, seed, rank=rank, world_size=world),
        val_batches=lambda: val_batches(val_tokens, d.seq_len, o.batch_size, cfg.run.eval_batches),
        vocab_size=tok.vocab_size, tokenizer_name=tok.name,
        unigram_loss=unigram_entropy(train_tokens, tok.vocab_size),
        document_start=tok.eos_id if d.documents == "reset" else None)
