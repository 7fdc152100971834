"""The synthetic tasks by name, and their training data for the trainer (cfg.data.task != "text")."""
from __future__ import annotations


import torch

from ..errors import require
from ..train.data import RunData
from .mqar import MQAR
from .niah import NeedleTask

TASKS = {"mqar": MQAR, "niah": NeedleTask}


def get_task(name: str, **kwargs):
    """TASKS[name](**kwargs); ConfigError listing the valid names for an unknown one."""
    require(name in TASKS, "task", name, f"one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)


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
    niah: noise haystack, random depth, numbers, context = cfg.data.seq_len, `tokenizer` (default
        miras.data.ByteTokenizer); unigram_loss = entropy of the labeled answer tokens of the val batches.
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
        from ..data import ByteTokenizer
        tokenizer = ByteTokenizer()
    task = NeedleTask(context_tokens=d.seq_len, depth=None, tokenizer=tokenizer, batch_size=bs, seed=seed, rank=rank)
    val = [task.eval_batch(i) for i in range(n_val)]
    return RunData(task, lambda: val, tokenizer.vocab_size, getattr(tokenizer, "name", "byte"), _label_entropy(val))
