"""AdamW with weight-decay exclusions and the warmup + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def no_decay(name: str, param: nn.Parameter, decay_embeddings: bool) -> bool:
    """Norms, biases, gates' biases, initial memories, Mamba's A_log / dt_bias / D, (embeddings)."""
    if getattr(param, "_no_weight_decay", False) or param.dim() < 2:
        return True
    return "embed" in name and not decay_embeddings


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name, p, cfg.decay_embeddings) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_at(step: int, cfg: OptimConfig, time_progress: float = 0.0) -> float:
    """Linear warmup to cfg.lr, then cosine down to cfg.lr * min_lr_ratio at cfg.steps, or earlier where
    time_progress (the share of the time budget spent, with optim.schedule=time) is further along."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, max(time_progress, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))
