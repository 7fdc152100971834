"""Retention gates: how the old state is kept or forgotten.

The canonical recurrence (docs/design-space.md) keeps an accumulator A:

    A_t = alpha_t * A_{t-1} + S_t          (alpha_t = exp(log_alpha_t) when the gate decays)
    W_t = boundary(A_t)                     at a chunk's last token (the MIRAS parallel rule)
    W_t = frame_s(A_t)                      inside a chunk: linear in A_t, frozen at the chunk start s

`decays` says whether the gate takes a data-dependent log_alpha gate (scalar per head, or per key
channel for a matrix memory). `boundary` maps the accumulator to the memory weights; it is the
identity for every pure decay, and a non-linear map for Moneta (Lq normalization), Memora
(softmax: mirror descent on the simplex) and the elastic net (soft threshold). For those,
`frame(A_s)` is the linear map used inside a chunk (an `InChunkMap`, equal to boundary at A_s), and
`boundary_at="every-token"` instead reads boundary(A_t) at every token (the costlier alternative,
kept for comparison). With chunk size 1 every token is a chunk's last token and both rules are
the per-token equations. Maps act per weight matrix and per head: A name -> [..., out, in].
`RowNorm` (LaCT) is a projection instead: `project(W, W_s)` maps the state a chunk leaves (GD's weighted reads),
and the next chunk starts from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import require
from .registry import Gate, choice, gate

BOUNDARY_RULES = ("chunk-end", "every-token")

LOG_ALPHA = gate(Gate("log_alpha", "log of the retention alpha_t (per head, or per key channel)", -float("inf"), 0.0,
                      activation=F.logsigmoid, init=5.0, sample=lambda noise: F.logsigmoid(noise + 3.0),
                      low_open=True))
SOFTMAX_SCALES = ("n_in", "sqrt_n_in")   # KLSoftmax.scale by name: c = row length, c = sqrt(row length)
LQ_FORMS = ("paper", "sphere")          # LqNormalization.form: W = A / (||A||_q / r)^(q-2), W = r A / ||A||_q
LQ_RADII = ("init",)                    # LqNormalization.radius by name: the memory's initialization scale
TOWARD = ("zero", "init")               # what a decay forgets toward: 0, or the initial state W0 (the prior)


def _check_rule(rule: str) -> None:
    require(rule in BOUNDARY_RULES, "retention.boundary_at", rule, f"one of {BOUNDARY_RULES}",
            "'chunk-end' is the MIRAS parallel rule (the presets); 'every-token' maps every token's accumulator")


def _check_toward(toward: str) -> None:
    require(toward in TOWARD, "retention.toward", toward, f"one of {TOWARD}",
            "'zero' decays A toward 0 (the papers' L2 retention); 'init' toward the layer's initial state W0")


def _toward_text(toward: str) -> str:
    """The describe() suffix of a decay's target."""
    return " toward W0" if toward == "init" else ""


def decays_toward_prior(retention) -> bool:
    """True when the decay pulls A toward the initial state W0 (MemoryState.prior) instead of 0:
    A_t = alpha_t (A_{t-1} - W0) + W0 + S_t, the L2 retention ||W - W0||^2 centred at the prior."""
    return getattr(retention, "toward", "zero") == "init"


def uses_frame(retention) -> bool:
    """True when reads inside a chunk go through `retention.frame` (a non-identity boundary applied at chunk ends)."""
    return not retention.identity_boundary and getattr(retention, "boundary_at", "every-token") == "chunk-end"


@dataclass(frozen=True)
class InChunkMap:
    """W = anchor + scale * (A - start) C, the linear map from the accumulator to the memory weights inside a chunk.

    anchor, start: [..., out, in] (the chunk start's weights and accumulator) or both None (W = scale * A C);
    scale: [..., 1, 1] or a float; C = I - 1 1^T / in when `center` (rows lose their mean), else I. Reads only
    need W h = anchor h + scale * (A (C h) - start (C h)): the engine applies C to the layer input, keeps the
    dual form for A, and forms no new weight-sized tensor.
    """

    anchor: Tensor | None
    start: Tensor | None
    scale: Tensor | float
    center: bool = False

    def input(self, h: Tensor) -> Tensor:
        return h - h.mean(-1, keepdim=True) if self.center else h

    def __call__(self, a: Tensor) -> Tensor:
        d = a if self.start is None else a - self.start
        w = self.scale * (d - d.mean(-1, keepdim=True) if self.center else d)
        return w if self.anchor is None else self.anchor + w


class _LqScale(torch.autograd.Function):
    """c = k P^(-gamma/q), P = sum (a^2 + eps)^(q/2) over the last two dims (P^(1/q): the smoothed ||a||_q), saving
    only a and c for backward (no weight-sized intermediates; P = (c / k)^(-q/gamma)):
    dc/da = -gamma c / P * a (a^2 + eps)^(q/2 - 1)."""

    @staticmethod
    def forward(ctx, a: Tensor, q: float, eps: float, gamma: float, k: float) -> Tensor:
        sq = a * a + eps
        power = (sq.square() if q == 4.0 else sq.pow(q / 2.0)).sum((-2, -1), keepdim=True)
        c = power.pow(-gamma / q)
        if k != 1.0:
            c = k * c
        ctx.save_for_backward(a, c)
        ctx.q, ctx.eps, ctx.gamma, ctx.k = q, eps, gamma, k
        return c

    @staticmethod
    def backward(ctx, grad_c: Tensor):
        a, c = ctx.saved_tensors
        return _lq_scale_vjp(a, c, grad_c, ctx.q, ctx.eps, ctx.gamma, ctx.k), None, None, None, None


def _lq_scale_vjp(a: Tensor, c: Tensor, grad_c: Tensor, q: float, eps: float, gamma: float, k: float) -> Tensor:
    """grad_c [..., 1, 1] of c = k P^(-gamma/q) taken back to a: -gamma grad_c c / P * a (a^2 + eps)^(q/2 - 1)."""
    power = (c if k == 1.0 else c / k).pow(-q / gamma)
    sq = a * a + eps
    inner = sq if q == 4.0 else sq.pow(q / 2.0 - 1.0)
    return (-gamma * grad_c * c / power) * a * inner


@choice("retention", "none")
@dataclass(frozen=True)
class NoRetention:
    """alpha = 1: nothing is forgotten (linear attention, DeltaNet, TTT)."""

    name: str = field(default="none", init=False)
    gates = ()
    decays: bool = field(default=False, init=False)
    per_channel: bool = field(default=False, init=False)
    identity_boundary: bool = field(default=True, init=False)

    def describe(self) -> str:
        return "none"

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return A


@choice("retention", "decay")
@dataclass(frozen=True)
class Decay:
    """L2 retention = weight decay: A_t = alpha_t A_{t-1} + S_t, alpha_t in (0, 1].

    per_channel: alpha has one value per key channel (GLA), matrix memory only.
    data_dependent: False means the layer feeds a constant (RetNet), True a gate of x_t.
    toward: "zero" (the papers' decay) or "init": A_t = alpha_t (A_{t-1} - W0) + W0 + S_t, forgetting toward the
      layer's learned initial state W0 (MemoryState.prior) instead of 0 (`decays_toward_prior`).
    """

    per_channel: bool = False
    data_dependent: bool = True
    toward: str = "zero"
    name: str = field(default="decay", init=False)
    gates = ("log_alpha",)
    decays: bool = field(default=True, init=False)
    identity_boundary: bool = field(default=True, init=False)

    def __post_init__(self):
        _check_toward(self.toward)
        require(not (self.per_channel and self.toward == "init"), "retention.toward", self.toward,
                "'zero' with per_channel=True (the per-channel decays run on the exact matrix ops)",
                "set per_channel=False or toward='zero'")

    def describe(self) -> str:
        kind = "per-channel" if self.per_channel else "scalar"
        return (f"{kind} decay" + ("" if self.data_dependent else " (constant)")
                + _toward_text(self.toward))

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return A


@choice("retention", "lq")
@dataclass(frozen=True)
class LqNormalization:
    """Moneta: W = c(A) A per weight matrix, c(A) = (r / ||A||_q)^gamma, with L2 decay on A (the hybrid form).

    form="paper": gamma = q - 2, W = A / (||A||_q / r)^(q-2); with radius=1 this is MIRAS Eq. 24 as printed,
    W = A / ||A||_q^(q-2) (homogeneous of degree 3 - q in A: with q = 4 a growing accumulator shrinks W, and the
    decay alpha < 1 grows it). form="sphere": gamma = 1, W = r A / ||A||_q, so ||W||_q = r whatever A's size.
    radius r: a number, or "init" (r = the expected q-norm of an [out, in] matrix of N(0, 1/in) entries, the
    deep memory's initialization scale: (out * in * E|z|^q)^(1/q) / sqrt(in)). The moneta preset uses
    form="sphere", radius="init" (chosen by measurement, docs/design-space.md).
    ||A||_q^q is computed as sum (A^2 + eps)^(q/2), so the map is smooth at A = 0. Inside a chunk the normalizer is
    frozen at the chunk start (W_t = c_s A_t, c_s = c(A_s)); the normalized state at the chunk's last token is the
    next chunk's anchor (MIRAS section 5.4).
    toward: what the decay of A forgets toward, "zero" (A_t = alpha_t A_{t-1} + S_t) or "init"
    (A_t = alpha_t (A_{t-1} - W0) + W0 + S_t, the layer's initial state W0; `decays_toward_prior`). On the sphere
    with "zero", A's norm settles where the decay balances the steps, so its size follows eta and the direction moves
    at a rate set by alpha alone; with "init" A stays on W0's scale and eta sets the step (docs/design-space.md).
    """

    q: float = 4.0
    eps: float = 1e-6
    boundary_at: str = "chunk-end"
    form: str = "sphere"
    radius: float | str = "init"
    toward: str = "zero"
    name: str = field(default="lq", init=False)
    gates = ("log_alpha",)
    decays: bool = field(default=True, init=False)
    per_channel: bool = field(default=False, init=False)
    identity_boundary: bool = field(default=False, init=False)

    def __post_init__(self):
        require(isinstance(self.q, (int, float)) and not isinstance(self.q, bool) and 2.0 <= self.q < float("inf"),
                "retention.q", self.q, "q >= 2", "Moneta uses q = 4; q = 2 with form='paper' is plain decay")
        _check_rule(self.boundary_at)
        _check_toward(self.toward)
        require(self.form in LQ_FORMS, "retention.form", self.form, f"one of {LQ_FORMS}",
                "'sphere' keeps ||W||_q = radius (the moneta preset); 'paper' is W = A / (||A||_q / radius)^(q-2)")
        require(self.radius in LQ_RADII or (isinstance(self.radius, (int, float)) and not isinstance(self.radius, bool)
                                            and 0 < self.radius < float("inf")),
                "retention.radius", self.radius, f"a number > 0 or one of {LQ_RADII}",
                "'init' sets r to the memory's initialization scale; 1.0 with form='paper' is MIRAS Eq. 24 as printed")
        require(not self._identity() or self.boundary_at == "chunk-end", "retention.boundary_at", self.boundary_at,
                "'chunk-end' when q = 2 with form='paper' (the map is the identity, so no rule applies)",
                "use Decay() for q = 2")

    def _identity(self) -> bool:
        return self.form == "paper" and self.q == 2.0

    def describe(self) -> str:
        if self.form == "sphere":
            kind = f"L{self.q:g} sphere (||W||_q = {self.radius})"
        else:
            kind = f"L{self.q:g} normalization" + ("" if self.radius == 1.0 else f" (r = {self.radius})")
        return (kind + " + decay" + _toward_text(self.toward)
                + ("" if self.boundary_at == "chunk-end" else " (every token)"))

    def r(self, n_out: int, n_in: int) -> float:
        """The radius r for an [n_out, n_in] weight matrix."""
        if self.radius == "init":
            moment = 2.0 ** (self.q / 2.0) * math.gamma((self.q + 1.0) / 2.0) / math.sqrt(math.pi)   # E|z|^q
            return (n_out * n_in * moment) ** (1.0 / self.q) / math.sqrt(n_in)
        return float(self.radius)

    def _gamma(self) -> float:
        return self.q - 2.0 if self.form == "paper" else 1.0

    def scale(self, a: Tensor) -> Tensor:
        """c(a) = (r / ||a||_q)^gamma, [..., 1, 1] (W = c(a) a)."""
        if self._identity():
            return torch.ones_like(a[..., :1, :1])
        gamma = self._gamma()
        return _LqScale.apply(a, float(self.q), self.eps, gamma, self.r(a.shape[-2], a.shape[-1]) ** gamma)

    def scale_vjp(self, a: Tensor, c: Tensor, grad_c: Tensor) -> Tensor:
        """grad_c [..., 1, 1] of c = scale(a) taken back to a (for hand-written backwards)."""
        if self._identity():
            return torch.zeros_like(a)
        gamma = self._gamma()
        return _lq_scale_vjp(a, c, grad_c, float(self.q), self.eps, gamma, self.r(a.shape[-2], a.shape[-1]) ** gamma)

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: a * self.scale(a) for name, a in A.items()}

    def frame(self, A: dict[str, Tensor], W: dict[str, Tensor] | None = None) -> dict[str, InChunkMap]:
        """The in-chunk maps at a chunk start A (W = boundary(A), when already computed, is not needed here)."""
        return {name: InChunkMap(None, None, self.scale(a)) for name, a in A.items()}

    def boundary_frame(self, A: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, InChunkMap]]:
        """(boundary(A), frame(A)) sharing the normalizer."""
        scale = {name: self.scale(a) for name, a in A.items()}
        return {n: a * scale[n] for n, a in A.items()}, {n: InChunkMap(None, None, c) for n, c in scale.items()}


@choice("retention", "kl")
@dataclass(frozen=True)
class KLSoftmax:
    """Memora: W_t = c softmax(alpha_t log W_{t-1} - eta_t g_t), rows of every weight on the simplex scaled by c.

    MIRAS Eq. 21: the KL retention keeps W in {W >= 0, ||W||_1 = c}, so the update is c Softmax(...), applied
    per row (per slice) of each weight matrix. c (`scale`): a number, or "n_in" (c = the row length, entries O(1):
    the memory starts as a unit-scale MLP rather than a near-constant one) or "sqrt_n_in" (c = sqrt(row length)).
    Written as decay on logits: A_t = alpha_t A_{t-1} + S_t, W = c softmax_rows(A). Softmax is invariant to a
    per-row constant (log c included), so carrying A instead of log W changes nothing (see docs).
    Inside a chunk the map is linear (MIRAS section 5.4), W_t = c softmax(A_s) + J(A_t - A_s), with
    in_chunk="jacobian": J(D) = c (D - rowmean D) / in, the Jacobian of c softmax at a uniform row (rows keep
    summing to c), or in_chunk="identity": J(D) = D (the paper's literal linear form, badly scaled:
    logits added to probabilities). The softmax is applied at every chunk's last token.
    toward: what the decay of the logits forgets toward, "zero" (the uniform rows) or "init" (the initial state's
    logits W0: A_t = alpha_t (A_{t-1} - W0) + W0 + S_t; `decays_toward_prior`).
    """

    in_chunk: str = "jacobian"
    boundary_at: str = "chunk-end"
    scale: float | str = 1.0
    toward: str = "zero"
    name: str = field(default="kl", init=False)
    gates = ("log_alpha",)
    decays: bool = field(default=True, init=False)
    per_channel: bool = field(default=False, init=False)
    identity_boundary: bool = field(default=False, init=False)

    def __post_init__(self):
        require(self.in_chunk in ("jacobian", "identity"), "retention.in_chunk", self.in_chunk,
                "'jacobian' or 'identity'", "'jacobian' keeps rows on the simplex's plane and is the default")
        _check_rule(self.boundary_at)
        _check_toward(self.toward)
        require(self.boundary_at == "chunk-end" or self.in_chunk == "jacobian", "retention.in_chunk", self.in_chunk,
                "'jacobian' (the default, unused) with boundary_at='every-token'",
                "drop in_chunk: with every-token boundaries no in-chunk map is read")
        require(self.scale in SOFTMAX_SCALES or (isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool)
                                                 and 0 < self.scale < float("inf")),
                "retention.scale", self.scale, f"a number > 0 or one of {SOFTMAX_SCALES}",
                "the memora preset uses 'n_in' (MIRAS Eq. 21's c); 1.0 is the plain simplex")

    def describe(self) -> str:
        rule = f", {self.in_chunk} inside chunks" if self.boundary_at == "chunk-end" else ", every token"
        c = "" if self.scale == 1.0 else f" (c = {self.scale})"
        return f"KL -> softmax{c} (mirror descent) + decay" + _toward_text(self.toward) + rule

    def c(self, n_in: int) -> float:
        """The row sum c for rows of length n_in."""
        if self.scale == "n_in":
            return float(n_in)
        if self.scale == "sqrt_n_in":
            return float(n_in) ** 0.5
        return float(self.scale)

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name, a in A.items():
            c = self.c(a.shape[-1])
            out[name] = torch.softmax(a, dim=-1) if c == 1.0 else c * torch.softmax(a, dim=-1)
        return out

    def frame(self, A: dict[str, Tensor], W: dict[str, Tensor] | None = None) -> dict[str, InChunkMap]:
        """The in-chunk maps at a chunk start A, with W = boundary(A) if already computed."""
        W = self.boundary(A) if W is None else W
        if self.in_chunk == "identity":
            return {name: InChunkMap(W[name], a, 1.0) for name, a in A.items()}
        return {name: InChunkMap(W[name], a, self.c(a.shape[-1]) / a.shape[-1], True) for name, a in A.items()}

    def boundary_frame(self, A: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, InChunkMap]]:
        W = self.boundary(A)
        return W, self.frame(A, W)


@choice("retention", "elastic-net")
@dataclass(frozen=True)
class ElasticNet:
    """Elastic net: L2 decay on A and an L1 soft threshold W = sign(A) max(|A| - lam, 0).

    This is the dual-averaging (lazy) form: the threshold is applied to the accumulator. Inside a chunk
    the accumulator's change is added to the chunk start's weights (W_t = W_s + A_t - A_s); the
    threshold is applied at every chunk's last token.
    """

    lam: float = 1e-3
    boundary_at: str = "chunk-end"
    name: str = field(default="elastic-net", init=False)
    gates = ("log_alpha",)
    decays: bool = field(default=True, init=False)
    per_channel: bool = field(default=False, init=False)
    identity_boundary: bool = field(default=False, init=False)

    def __post_init__(self):
        require(self.lam >= 0, "retention.lam", self.lam, ">= 0", "0 gives plain decay")
        _check_rule(self.boundary_at)

    def describe(self) -> str:
        return f"elastic net (decay + L1 {self.lam:g})" + ("" if self.boundary_at == "chunk-end" else ", every token")

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: torch.sign(a) * torch.relu(a.abs() - self.lam) for name, a in A.items()}

    def frame(self, A: dict[str, Tensor], W: dict[str, Tensor] | None = None) -> dict[str, InChunkMap]:
        """The in-chunk maps at a chunk start A, with W = boundary(A) if already computed."""
        W = self.boundary(A) if W is None else W
        return {name: InChunkMap(W[name], a, 1.0) for name, a in A.items()}

    def boundary_frame(self, A: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, InChunkMap]]:
        W = self.boundary(A)
        return W, self.frame(A, W)


@choice("retention", "rownorm")
@dataclass(frozen=True)
class RowNorm:
    """LaCT's weight normalization (arXiv 2505.23884, "post-norm" in its code): after a chunk's update every row of
    every weight matrix is rescaled to that row's norm in the initial fast weights, W <- W / ||W_row|| ||W0_row||.

    The target norms are read from the chunk-start weights W_s (`project(W, W_s)`): every normalization sets them,
    so by induction they are W0's row norms, the same function of W0 (and so the same gradients) as LaCT's fixed
    targets, with no extra state: a stream split anywhere, a document reset to W0 and a state handed in each carry
    their own targets. It is applied to the state a chunk leaves by the weighted-read path of GD (reads='chunk-start'
    or token_weights; MirasSpec checks), which then starts the next chunk from the normalized weights; the map at a
    chunk start, `boundary`, is the identity (those weights are already normalized). No epsilon: LaCT's code divides
    by ||W_row|| + 1e-5, which leaves each row a relative 1e-5 / ||W_row|| short of its target after every chunk;
    with targets read from W_s that shortfall would compound over chunks.
    """

    name: str = field(default="rownorm", init=False)
    gates = ()
    decays: bool = field(default=False, init=False)
    per_channel: bool = field(default=False, init=False)
    identity_boundary: bool = field(default=True, init=False)

    def describe(self) -> str:
        return "row norms kept at the initial weights' (LaCT)"

    def boundary(self, A: dict[str, Tensor]) -> dict[str, Tensor]:
        return A

    def project(self, W: dict[str, Tensor], like: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every row of W [..., out, in] rescaled to the norm of the same row of `like`."""
        return {name: w * (like[name].norm(dim=-1, keepdim=True) / w.norm(dim=-1, keepdim=True))
                for name, w in W.items()}
