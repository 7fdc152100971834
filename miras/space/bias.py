"""Attentional biases: the loss l(M(k), v) the memory minimizes at test time.

Each bias gives a per-token loss and its closed-form gradient with respect to the prediction
(r = pred - v is the residual), both over the last dim:

    pred, v: [..., d_v]   gates: the bias' own gates (its class attribute `gates`), each [...], e.g. Huber's
                          data-dependent threshold delta (a Gate record, registry.py); {} or None for the others
    loss -> [...]         grad -> [..., d_v]

`grad` is exactly d loss / d pred of the *smoothed* loss below (tests check it with autograd), so
the loss that is reported and the gradient the memory steps on never disagree. `grad_vjp` applies the loss'
curvature (the derivative of `grad`) to a cotangent, for hand-written backwards: a bias' own closed form where it
has one, autograd through `grad` otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import require
from .registry import Gate, choice, gate


def smooth_abs(r: Tensor, eps: float) -> Tensor:
    """sqrt(r^2 + eps): |r| with a smooth minimum."""
    return torch.sqrt(r * r + eps)


def grad_vjp(bias, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None, d_grad: Tensor
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """The cotangent d_grad [..., d_v] of bias.grad(pred, v, gates) taken back to pred and to the bias' gates:
    -> (d pred, gate name -> d gate). The bias' own `grad_vjp` (a closed form) when it has one, else
    `autograd_grad_vjp`."""
    own = getattr(bias, "grad_vjp", None)
    return own(pred, v, gates, d_grad) if own is not None else autograd_grad_vjp(bias, pred, v, gates, d_grad)


def autograd_grad_vjp(bias, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None, d_grad: Tensor
                      ) -> tuple[Tensor, dict[str, Tensor]]:
    """`grad_vjp` by autograd through bias.grad (run under enable_grad, so it also works inside an
    autograd.Function's backward)."""
    with torch.enable_grad():
        p = pred.detach().requires_grad_(True)
        g = {n: t.detach().requires_grad_(True) for n, t in (gates or {}).items()}
        e = bias.grad(p, v.detach(), g)
        leaves = (p, *g.values())
        out = (torch.autograd.grad(e, leaves, d_grad, allow_unused=True) if e.requires_grad
               else (None,) * len(leaves))                              # (a grad that is constant in both)
    out = [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, out)]
    return out[0], dict(zip(g, out[1:]))


@choice("bias", "dot")
@dataclass(frozen=True)
class DotProduct:
    """l = -<M(k), v>; the gradient -v does not depend on the memory (linear attention, SSD)."""

    name: str = field(default="dot", init=False)
    gates = ()

    def describe(self) -> str:
        return "-<M(k), v>"

    def loss(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return -(pred * v).sum(-1)

    def grad(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return -v.expand_as(pred)


@choice("bias", "l2")
@dataclass(frozen=True)
class L2:
    """l = ||M(k) - v||^2 (gradient 2r). The exact delta rule steps on half of it."""

    name: str = field(default="l2", init=False)
    gates = ()

    def describe(self) -> str:
        return "||M(k) - v||^2"

    def loss(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return (pred - v).pow(2).sum(-1)

    def grad(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return 2.0 * (pred - v)

    def grad_vjp(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None, d_grad: Tensor
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        return 2.0 * d_grad, {}


@choice("bias", "lp")
@dataclass(frozen=True)
class Lp:
    """l = sum_i (r_i^2 + eps)^(p/2), the smoothed ||r||_p^p (Moneta, p = 3).

    Gradient p r (r^2 + eps)^(p/2 - 1) = p * smooth_sign(r) * smooth_abs(r)^(p-1), with
    smooth_sign(r) = r / sqrt(r^2 + eps) (a tanh-like sign that is exactly consistent with the loss).
    """

    p: float = 3.0
    eps: float = 1e-6
    name: str = field(default="lp", init=False)
    gates = ()

    def __post_init__(self):
        require(self.p >= 1.0, "bias.p", self.p, "p >= 1", "Moneta uses p = 3")
        require(self.eps > 0, "bias.eps", self.eps, "> 0", "use 1e-6")

    def describe(self) -> str:
        return f"||M(k) - v||_{self.p:g}^{self.p:g}"

    def loss(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return smooth_abs(pred - v, self.eps).pow(self.p).sum(-1)

    def grad(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        r = pred - v
        return self.p * r * smooth_abs(r, self.eps).pow(self.p - 2.0)

    def grad_vjp(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None, d_grad: Tensor
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """d grad / d r = p s^(p-4) ((p-1) r^2 + eps), s = sqrt(r^2 + eps), elementwise."""
        r = pred - v
        sq = r * r + self.eps
        return self.p * sq.pow(self.p / 2.0 - 2.0) * (sq + (self.p - 2.0) * r * r) * d_grad, {}


HUBER_FORMS = ("switch", "norm", "coord")

DELTA = gate(Gate("delta", "Huber threshold, in units of one residual coordinate", 0.0, float("inf"),
                  activation=lambda raw: F.softplus(raw) + 1e-3, init=0.5,
                  sample=lambda noise: F.softplus(noise) + 0.5, low_open=True))


@choice("bias", "huber")
@dataclass(frozen=True)
class Huber:
    """Yaad's Huber bias with threshold delta_t (a gate, > 0), in one of three forms:

    form="switch"  the paper's literal switch on the residual norm: ||r||^2 if ||r|| <= delta_t, else
                   delta_t * ||r||_1 (smoothed); gradient 2r below, delta_t * smooth_sign(r) above. The step
                   jumps at the threshold (norm 2 delta -> delta sqrt(d)), and above it the step does not
                   depend on v or k through r (sign(r) is flat), so outer gradients through the write vanish.
    form="norm"    Huber on the residual norm, threshold delta_t * sqrt(d) (delta_t bounds the RMS of r):
                   ||r||^2 below, 2 tau ||r|| - tau^2 above (tau = delta_t sqrt(d)); gradient 2r below,
                   2 tau r / ||r|| above: continuous, the L2 direction with a clipped norm.
    form="coord"   coordinate-wise Huber, threshold delta_t per coordinate: sum_i h(r_i) with h(x) = x^2 if
                   |x| <= delta_t else 2 delta_t |x| - delta_t^2; gradient clamp(2r, -2 delta_t, 2 delta_t).

    "norm" and "coord" measure delta_t in units of one coordinate of the residual (whose scale the
    memory's LayerNorm fixes at ~1), so a gate near 1 puts the threshold where the residuals are.
    channel_delta (form "coord"): delta_t in R^{d_v}, one threshold per coordinate (MIRAS section 5.4's
    channel-wise delta); the gate is then [..., d_v].
    """

    form: str = "norm"
    eps: float = 1e-6
    channel_delta: bool = False
    name: str = field(default="huber", init=False)
    gates = ("delta",)

    def __post_init__(self):
        require(self.form in HUBER_FORMS, "bias.form", self.form, f"one of {HUBER_FORMS}",
                "'switch' is the paper's literal form, 'norm' / 'coord' are continuous")
        require(self.eps > 0, "bias.eps", self.eps, "> 0", "use 1e-6")
        require(not self.channel_delta or self.form == "coord", "bias.channel_delta", self.channel_delta,
                "true only with form 'coord' (a threshold per coordinate; 'norm' and 'switch' threshold the "
                "residual's norm)", "set form = 'coord' or channel_delta = false")

    def describe(self) -> str:
        return {"switch": "Huber switch (L2 | delta*L1)", "norm": "Huber on ||r|| (L2 | clipped L2)",
                "coord": "coordinate-wise Huber"}[self.form] + (", channel-wise delta" if self.channel_delta else "")

    def _delta(self, gates: dict[str, Tensor] | None) -> Tensor:
        require(bool(gates) and "delta" in gates, "gates.delta", None, "a [B, T, H] tensor > 0", "Huber needs delta")
        return gates["delta"] if self.channel_delta else gates["delta"].unsqueeze(-1)

    def _norm(self, r: Tensor) -> Tensor:
        return torch.sqrt(r.pow(2).sum(-1, keepdim=True) + self.eps)

    def _tau(self, r: Tensor, gates: dict[str, Tensor] | None) -> Tensor:
        return self._delta(gates) * r.shape[-1] ** 0.5

    def loss(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        r = pred - v
        if self.form == "coord":
            d = self._delta(gates)
            return torch.where(r.abs() <= d, r * r, 2.0 * d * r.abs() - d * d).sum(-1)
        sq = r.pow(2).sum(-1, keepdim=True)
        if self.form == "norm":
            tau = self._tau(r, gates)
            return torch.where(sq <= tau * tau, sq, 2.0 * tau * self._norm(r) - tau * tau).squeeze(-1)
        d = self._delta(gates)
        return torch.where(sq <= d * d, sq, d * smooth_abs(r, self.eps).sum(-1, keepdim=True)).squeeze(-1)

    def grad(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        r = pred - v
        if self.form == "coord":
            d = self._delta(gates)
            return torch.maximum(torch.minimum(2.0 * r, 2.0 * d), -2.0 * d)
        sq = r.pow(2).sum(-1, keepdim=True)
        if self.form == "norm":
            tau = self._tau(r, gates)
            return torch.where(sq <= tau * tau, 2.0 * r, 2.0 * tau * r / self._norm(r))
        d = self._delta(gates)
        return torch.where(sq <= d * d, 2.0 * r, d * r / smooth_abs(r, self.eps))

    def grad_vjp(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None, d_grad: Tensor
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """form="norm" in closed form (2 d_grad below the threshold; above it 2 tau (w - u <u, w>) / n with
        u = r / n, and d tau = 2 <u, w>); the other forms by autograd through `grad`."""
        if self.form != "norm":
            return autograd_grad_vjp(self, pred, v, gates, d_grad)
        r = pred - v
        n = self._norm(r)
        tau = self._tau(r, gates)
        below = r.pow(2).sum(-1, keepdim=True) <= tau * tau
        uw = (r * d_grad).sum(-1, keepdim=True) / n
        d_r = torch.where(below, 2.0 * d_grad, 2.0 * tau * (d_grad - r * (uw / n)) / n)
        d_tau = torch.where(below, torch.zeros_like(uw), 2.0 * uw)
        return d_r, {"delta": d_tau.squeeze(-1) * r.shape[-1] ** 0.5}


@choice("bias", "robust-l2")
@dataclass(frozen=True)
class ValueShiftRobustL2:
    """MIRAS Eq. 17: the worst case of ||M(k) - (v + s)||^2 over value shifts ||s|| <= shift.

    The maximum is (||r|| + shift)^2 (smoothed norm); gradient 2 (||r|| + shift) r / ||r||.
    """

    shift: float = 0.1
    eps: float = 1e-6
    name: str = field(default="robust-l2", init=False)
    gates = ()

    def __post_init__(self):
        require(self.shift >= 0, "bias.shift", self.shift, ">= 0", "0 gives plain L2")

    def describe(self) -> str:
        return f"max_|s|<={self.shift:g} ||M(k) - v - s||^2"

    def _norm(self, r: Tensor) -> Tensor:
        return torch.sqrt(r.pow(2).sum(-1) + self.eps)

    def loss(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return (self._norm(pred - v) + self.shift).pow(2)

    def grad(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        r = pred - v
        n = self._norm(r).unsqueeze(-1)
        return 2.0 * (n + self.shift) * r / n


GAMMA = gate(Gate("gamma", "the Omega rule's weight of a token in the windows that contain it", 0.0, 1.0,
                  activation=torch.sigmoid, init=2.0, sample=torch.sigmoid))


@choice("bias", "omega")
@dataclass(frozen=True)
class Omega:
    """ATLAS's Omega rule (arXiv 2505.23735, Eq. 9): the L2 loss over a sliding window of the last c tokens,

        l_t(W) = sum_{i=t-c+1..t} gamma_i ||M_W(k_i) - v_i||^2,   gamma_i in [0, 1] a gate of token i,

    so the step of token t is eta_t sum_{i in its window} gamma_i grad ||M(k_i) - v_i||^2, every gradient at the
    chunk's anchor. loss / grad are one token's term (gamma ||r||^2, gradient 2 gamma r); the recurrence and the
    chunked engine sum the window (MemoryState.window carries the c - 1 tokens before a call, zeros with gamma = 0
    at a stream's start). window = 1 with gamma = 1 is L2.
    """

    window: int = 4
    name: str = field(default="omega", init=False)
    gates = ("gamma",)

    def __post_init__(self):
        require(isinstance(self.window, int) and not isinstance(self.window, bool) and self.window >= 1,
                "bias.window", self.window, "an integer >= 1 (the tokens each step's loss sums over)",
                "1 is the L2 bias with a gate; ATLAS uses a few tokens")

    def describe(self) -> str:
        return f"sum_(last {self.window}) gamma_i ||M(k_i) - v_i||^2 (Omega rule)"

    def loss(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return gates["gamma"] * (pred - v).pow(2).sum(-1)

    def grad(self, pred: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None) -> Tensor:
        return 2.0 * gates["gamma"].unsqueeze(-1) * (pred - v)
