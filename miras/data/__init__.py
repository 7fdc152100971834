"""Data: corpora of whole documents, tokenizers, memory-mapped token files, LM batches and the synthetic tasks
(MQAR, S-NIAH) as generators of pure per-step batches.

Names are imported lazily (PEP 562) so that `python -m miras.data.corpus` runs without a
double import of the corpus module.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "corpus": ["Document", "load_documents", "prepare_large_corpus", "split_documents"],
    "tokenizer": ["BPETokenizer", "ByteTokenizer", "load_tokenizer", "train_bpe"],
    "tokens": ["TokenFile", "build_token_file", "open_token_file", "unigram_entropy"],
    "batches": ["LMBatches", "val_batches"],
    "mqar": ["MQAR", "MQAR_SETTINGS"],
    "niah": ["NIAH_LENGTHS", "NeedleMix", "NeedleTask", "depths"],
    "tasks": ["TASKS", "get_task"],
}
_MODULE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
