"""Mixed precision: the memory ops compute in at least float32 whatever torch.autocast says.

Under `torch.autocast` (bf16 / fp16 training on a GPU, `run.amp`) every matmul would be cast to the low precision,
including the ones inside the ops that carry the recurrent state from chunk to chunk: the hand-written ops then
fail on mixed dtypes (an `out=` matmul gets bf16 operands and a float32 output), and the others accumulate the state
in bf16 (measured with CPU autocast: Memora's output 130% off its float32 value after 100 tokens). The ops take
inputs of any floating dtype, compute in promote(dtype, float32) and return outputs in the input's dtype (the
layers' projections around them still run under autocast). Backward: the custom autograd Functions switch autocast
off in their backward too; for the plain-autograd ops, call backward outside the autocast region (PyTorch's own
advice, and what the trainer does).
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor


def without_autocast(fn):
    """fn run with autocast off on the device of its first tensor argument."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        kind = None if first is None else first.device.type
        if kind is None or not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
            return fn(*args, **kwargs)
        with torch.autocast(kind, enabled=False):
            return fn(*args, **kwargs)
    return run
