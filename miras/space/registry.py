"""What the design space offers: every axis' choices by name, and every gate a choice reads.

A choice (a memory, bias, retention or algorithm class) registers itself with `@choice(axis)`; its class attribute
`gates` names the data-dependent gates it reads, each a `Gate` record registered with `gate(...)` next to it. The
state checks, random test inputs, the recurrent reference, the chunked engine, the memory layer and the config
tables read these records, so a new bias with a new gate is one source file (the class, its Gate) plus its test.

Interfaces (checked by `tests/space/test_registry.py` over everything registered):
  memory     M(W, h), grads(W, h, dpred), backward_factors, init_state, shapes, is_matrix, describe()
  bias       loss(pred, v, gates) -> [...], grad(pred, v, gates) -> [..., d_v] (exactly d loss / d pred), describe()
  retention  decays, per_channel, identity_boundary, boundary(A), frame(...) where not identity, describe()
  algorithm  momentum, describe()
where gates is the dict of the choice's own gates at those tokens, each [...] (one value per token and head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import Tensor

AXES = ("memory", "bias", "retention", "algorithm")
CHOICES: dict[str, dict[str, type]] = {axis: {} for axis in AXES}
GATES: dict[str, "Gate"] = {}


def choice(axis: str, name: str):
    """Class decorator: registers the class as the choice `name` of `axis`."""
    def register(cls):
        CHOICES[axis][name] = cls
        cls.choice_name = name
        return cls
    return register


@dataclass(frozen=True)
class Gate:
    """A data-dependent gate: one value per token and head ([B, T, H]; per key channel, [B, T, H, d_k], when the
    retention that reads it is per-channel).

    low / high: the allowed range, each end open or closed (low_open / high_open); a NaN or an infinity is never
    allowed. activation: the memory layer's bounded map from its low-rank projection (pre-activation) to the gate,
    init: that pre-activation at initialization. sample: standard normal noise -> a typical value, for random
    test inputs."""

    name: str
    meaning: str
    low: float
    high: float
    activation: Callable[[Tensor], Tensor]
    init: float
    sample: Callable[[Tensor], Tensor]
    low_open: bool = False
    high_open: bool = False

    @property
    def allowed(self) -> str:
        lo = "(" if self.low_open or self.low == -math.inf else "["
        hi = ")" if self.high_open or self.high == math.inf else "]"
        return f"{self.name} in {lo}{self.low:g}, {self.high:g}{hi}"

    def within(self, lo: float, hi: float) -> bool:
        """Whether values with minimum lo and maximum hi (both finite) are in the range."""
        above = lo > self.low if self.low_open else lo >= self.low
        below = hi < self.high if self.high_open else hi <= self.high
        return above and below and math.isfinite(lo) and math.isfinite(hi)


def gate(record: Gate) -> Gate:
    """Registers a Gate record (once per name)."""
    if record.name in GATES and GATES[record.name] != record:
        raise ValueError(f"two different gates named {record.name!r}")
    GATES[record.name] = record
    return record
