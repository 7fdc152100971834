"""MQAR scoring: accuracy of a model on the MQAR task (the task itself: miras/data/mqar.py)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..data.mqar import MQAR
from ..errors import require


def _hits(logits: Tensor, labels: Tensor) -> tuple[int, int]:
    mask = labels != -100
    return int(((logits.argmax(-1) == labels) & mask).sum()), int(mask.sum())


def score_mqar(logits: Tensor, labels: Tensor) -> float:
    """Fraction of labeled positions whose argmax is the label; logits [B, T, V], labels [B, T]."""
    correct, total = _hits(logits, labels)
    require(total > 0, "labels", "all -100", "at least one labeled query position")
    return correct / total


@torch.no_grad()
def mqar_accuracy(model, task: MQAR, n: int = 1000, batch_size: int = 64, seed: int | None = None) -> float:
    """Query accuracy of model (input_ids [B, T] -> (logits [B, T, V], ...)) on task.eval_set(n, seed)."""
    inputs, labels = task.eval_set(n, seed)
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    correct = total = 0
    for x, y in zip(inputs.split(batch_size), labels.split(batch_size)):
        c, t = _hits(model(x.to(device))[0].cpu(), y)
        correct, total = correct + c, total + t
    model.train(training)
    return correct / total
