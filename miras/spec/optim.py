"""Memory learning algorithms: how the state moves at every token.

    GD:        S_t = -eta_t g_t                     (g at the chunk-start memory)
    Momentum:  S_t = beta_t S_{t-1} - eta_t g_t     (Titans; beta_t in [0, 1) is a gate)
    Delta:     W_t = alpha_t W_{t-1} (I - eta_t k k^T) + eta_t v k^T   (exact per-token step of
               the half-L2 loss at the decayed state; eta_t is DeltaNet's beta_t)
    NonParametric: no state update; reading is softmax attention over all keys so far.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GD:
    name: str = field(default="gd", init=False)
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "GD"


@dataclass(frozen=True)
class Momentum:
    name: str = field(default="momentum", init=False)
    momentum: bool = field(default=True, init=False)

    def describe(self) -> str:
        return "GD + momentum"


@dataclass(frozen=True)
class Delta:
    name: str = field(default="delta", init=False)
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "exact delta rule"


@dataclass(frozen=True)
class NonParametric:
    name: str = field(default="attention", init=False)
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "softmax attention"
