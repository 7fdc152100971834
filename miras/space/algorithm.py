"""Memory learning algorithms: how the state moves at every token.

    GD:        S_t = -eta_t g_t                     (g at the chunk-start memory)
    Momentum:  S_t = beta_t S_{t-1} - eta_t g_t     (Titans; beta_t in [0, 1) is a gate)
    Delta:     W_t = alpha_t W_{t-1} (I - eta_t k k^T) + eta_t v k^T   (exact per-token step of
               the half-L2 loss at the decayed state; eta_t is DeltaNet's beta_t)
    NonParametric: no state update; reading is softmax attention over all keys so far.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .registry import Gate, choice, gate

LR = gate(Gate("lr", "the inner step size eta_t (the layer scales it by its lr_max)", 0.0, float("inf"),
               activation=torch.sigmoid, init=-2.0, sample=torch.sigmoid))
BETA = gate(Gate("beta", "the momentum beta_t (the layer scales it by its beta_max < 1)", 0.0, 1.0,
                 activation=torch.sigmoid, init=0.5, sample=lambda noise: 0.9 * torch.sigmoid(noise), high_open=True))


@choice("algorithm", "gd")
@dataclass(frozen=True)
class GD:
    name: str = field(default="gd", init=False)
    gates = ("lr",)
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "GD"


@choice("algorithm", "momentum")
@dataclass(frozen=True)
class Momentum:
    name: str = field(default="momentum", init=False)
    gates = ("lr", "beta")
    momentum: bool = field(default=True, init=False)

    def describe(self) -> str:
        return "GD + momentum"


@choice("algorithm", "delta")
@dataclass(frozen=True)
class Delta:
    name: str = field(default="delta", init=False)
    gates = ("lr",)
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "exact delta rule"


@choice("algorithm", "attention")
@dataclass(frozen=True)
class NonParametric:
    name: str = field(default="attention", init=False)
    gates = ()
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "softmax attention"
