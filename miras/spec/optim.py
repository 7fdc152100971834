"""Memory learning algorithms: how the state moves at every token.

    GD:        S_t = -eta_t g_t                     (g at the chunk-start memory)
    Momentum:  S_t = beta_t S_{t-1} - eta_t g_t     (Titans; beta_t in [0, 1) is a gate)
    Delta:     W_t = alpha_t W_{t-1} (I - eta_t k k^T) + eta_t v k^T   (exact per-token step of
               the half-L2 loss at the decayed state; eta_t is DeltaNet's beta_t)
    NonParametric: no state update; reading is softmax attention over all keys so far.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GD:
    name: str = "gd"
    momentum: bool = False

    def describe(self) -> str:
        return "GD"


@dataclass(frozen=True)
class Momentum:
    name: str = "momentum"
    momentum: bool = True

    def describe(self) -> str:
        return "GD + momentum"


@dataclass(frozen=True)
class Delta:
    name: str = "delta"
    momentum: bool = False

    def describe(self) -> str:
        return "exact delta rule"


@dataclass(frozen=True)
class NonParametric:
    name: str = "attention"
    momentum: bool = False

    def describe(self) -> str:
        return "softmax attention"
