"""Retention gates: how the old state is kept or forgotten.

The canonical recurrence (docs/design-space.md) keeps an accumulator A:

    A_t = alpha_t * A_{t-1} + S_t          (alpha_t = exp(log_alpha_t) when the gate decays)
    W_t = boundary(A_t)                     (the memory that is read and differentiated)

`decays` says whether the gate takes a data-dependent log_alpha gate (scalar per head, or per key
channel for a matrix memory). `boundary` maps the accumulator to the memory weights; it is the
identity for every pure decay, and a non-linear map for Moneta (Lq normalization), Memora
(softmax: mirror descent on the simplex) and the elastic net (soft threshold). Maps act per
weight matrix and per head: A name -> [..., out, in].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import require


@dataclass(frozen=True)
class NoRetention:
    """alpha = 1: nothing is forgotten (linear attention, DeltaNet, TTT)."""

    name: str = "none"
    decays: bool = False
    per_channel: bool = False
    identity_boundary: bool = True

    def describe(self) -> str:
        return "none"

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return A


@dataclass(frozen=True)
class Decay:
    """L2 retention = weight decay: A_t = alpha_t A_{t-1} + S_t, alpha_t in (0, 1].

    per_channel: alpha has one value per key channel (GLA), matrix memory only.
    data_dependent: False means the layer feeds a constant (RetNet), True a gate of x_t.
    """

    per_channel: bool = False
    data_dependent: bool = True
    name: str = "decay"
    decays: bool = True
    identity_boundary: bool = True

    def describe(self) -> str:
        kind = "per-channel" if self.per_channel else "scalar"
        return f"{kind} decay" + ("" if self.data_dependent else " (constant)")

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return A


@dataclass(frozen=True)
class LqNormalization:
    """Moneta: W = A / ||A||_q^(q-2) per weight matrix, with L2 decay on A (the hybrid form).

    ||A||_q^q is computed as sum (A^2 + eps)^(q/2), so the map is smooth at A = 0.
    """

    q: float = 4.0
    eps: float = 1e-6
    name: str = "lq"
    decays: bool = True
    per_channel: bool = False
    identity_boundary: bool = False

    def __post_init__(self):
        require(self.q >= 2.0, "retention.q", self.q, "q >= 2", "Moneta uses q = 4; q = 2 is plain decay")

    def describe(self) -> str:
        return f"L{self.q:g} normalization + decay"

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name, a in A.items():
            power = (a * a + self.eps).pow(self.q / 2.0).sum((-2, -1), keepdim=True)
            out[name] = a * power.pow(-(self.q - 2.0) / self.q)
        return out


@dataclass(frozen=True)
class KLSoftmax:
    """Memora: W_t = softmax(alpha_t log W_{t-1} - eta_t g_t), rows of every weight on the simplex.

    Written as decay on logits: A_t = alpha_t A_{t-1} + S_t, W = softmax_rows(A). Softmax is
    invariant to a per-row constant, so carrying A instead of log W changes nothing (see docs).
    """

    name: str = "kl"
    decays: bool = True
    per_channel: bool = False
    identity_boundary: bool = False

    def describe(self) -> str:
        return "KL -> softmax (mirror descent) + decay"

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: torch.softmax(a, dim=-1) for name, a in A.items()}


@dataclass(frozen=True)
class ElasticNet:
    """Elastic net: L2 decay on A and an L1 soft threshold W = sign(A) max(|A| - lam, 0).

    This is the dual-averaging (lazy) form: the threshold is applied to the accumulator.
    """

    lam: float = 1e-3
    name: str = "elastic-net"
    decays: bool = True
    per_channel: bool = False
    identity_boundary: bool = False

    def __post_init__(self):
        require(self.lam >= 0, "retention.lam", self.lam, ">= 0", "0 gives plain decay")

    def describe(self) -> str:
        return f"elastic net (decay + L1 {self.lam:g})"

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: torch.sign(a) * torch.relu(a.abs() - self.lam) for name, a in A.items()}
