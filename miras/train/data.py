"""The training data of a run: text (tokenized, memory-mapped) or a synthetic task, as pure per-step batches."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist

from ..data import (LMBatches, ByteTokenizer, build_token_file, load_documents, load_tokenizer, open_token_file,
                    split_documents, train_bpe, unigram_entropy, val_batches)
from ..data.mqar import MQAR
from ..data.niah import RULER_SINGLE, NeedleMix, NeedleTask
from ..data.tasks import TASKS
from ..data.tokens import source_hash
from ..errors import ConfigError, require
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


def _label_entropy(batches) -> float:
    """Entropy (nats) of the empirical distribution of the labeled tokens (labels != -100) of batches."""
    labels = torch.cat([y[y != -100] for _, y in batches])
    p = torch.bincount(labels).double() / labels.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def task_batches(cfg, rank: int, world: int, tokenizer=None) -> RunData:
    """Training data for cfg.data.task in TASKS (world is unused: the rank alone separates the streams).

    mqar: seq_len = cfg.data.seq_len, pairs = cfg.data.mqar_pairs (16 when absent), vocab_size =
        cfg.data.mqar_vocab (256 when absent); unigram_loss = log(V - V//2), the loss of guessing among the
        value ids at the labeled positions.
    niah: RULER's single-needle variants cfg.data.niah_variants (default niah_single_1: numbers in the noise
        haystack; the text ones use the train split of data.corpus), one drawn per row, random depth, context =
        cfg.data.seq_len, `tokenizer` (default miras.data.ByteTokenizer); unigram_loss = entropy of the labeled
        answer tokens of the val batches.
    Both: val_batches = run.eval_batches held-out batches of optim.batch_size, the same for every rank.
    """
    d, bs, seed, n_val = cfg.data, cfg.optim.batch_size, cfg.run.seed, cfg.run.eval_batches
    require(d.task in TASKS, "data.task", d.task, f"'text' or one of {sorted(TASKS)}")
    if d.task == "mqar":
        task = MQAR(seq_len=d.seq_len, num_kv_pairs=getattr(d, "mqar_pairs", 16),
                    vocab_size=getattr(d, "mqar_vocab", 256), batch_size=bs, seed=seed, rank=rank)
        inputs, labels = task.eval_set(n_val * bs)
        val = list(zip(inputs.split(bs), labels.split(bs)))
        return RunData(task, lambda: val, task.vocab_size, "mqar", task.chance_loss)
    if tokenizer is None:
        tokenizer = ByteTokenizer()
    variants = getattr(d, "niah_variants", ["niah_single_1"])
    if variants == ["niah_single_1"]:
        task = NeedleTask(context_tokens=d.seq_len, depth=None, tokenizer=tokenizer, batch_size=bs, seed=seed,
                          rank=rank)
    else:
        text = any(RULER_SINGLE[v][0] == "text" for v in variants)
        docs = tuple(doc.text for doc in split_documents(load_documents(d.corpus), d.val_fraction, seed=0)[0]) \
            if text else ()
        task = NeedleMix(tuple(RULER_SINGLE[v] for v in variants), d.seq_len, docs, tokenizer, bs, seed, rank)
    val = [task.eval_batch(i) for i in range(n_val)]
    return RunData(task, lambda: val, tokenizer.vocab_size, getattr(tokenizer, "name", "byte"), _label_entropy(val))
