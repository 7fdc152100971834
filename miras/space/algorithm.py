"""Memory learning algorithms: how the state moves at every token.

    GD:        S_t = -eta_t g_t                     (g at the chunk-start memory)
               channel_lr (GD and momentum): eta_t in R^{d_v}, one step size per output channel of the memory:
               g_t = J^T (eta_t * dl/dpred) with the scalar step 1 (MIRAS section 5.4's channel-wise eta)
               token_weights (TTT): inside a chunk W_t = W_s + tau_i (A_t - W_s), tau_i = max(0, 1/i + o_i)
               at the chunk's i-th token, o learned; the chunk ends at its last token's W
               reads="chunk-start" (LaCT's apply-then-update): every token of a chunk reads W_s (tau_i = 0) and the
               chunk ends at W_s + U(A - W_s), U = Muon's Newton-Schulz orthogonalization with muon=True
    Momentum:  S_t = beta_t S_{t-1} - eta_t g_t     (Titans; beta_t in [0, 1) is a gate)
    Muon:      S_t = beta_t S_{t-1} - g_t;  A_t = alpha_t A_{t-1} + eta_t NS_k(S_t)   (ATLAS Eqs. 32-33: its
               momentum is -S_t; NS_k = k Newton-Schulz steps per weight matrix and head, at every token)
    Delta:     W_t = alpha_t W_{t-1} (I - eta_t k k^T) + eta_t v k^T   (exact per-token step of
               the half-L2 loss at the decayed state; eta_t is DeltaNet's beta_t); alpha_t per key channel:
               W_{t-1} Diag(alpha_t) (KDA); steps = n_h: n_h such steps per token (Gated DeltaProduct)
    NonParametric: no state update; reading is softmax attention over all keys so far.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import require
from .registry import Gate, choice, gate

LR = gate(Gate("lr", "the inner step size eta_t (the layer scales it by its lr_max)", 0.0, float("inf"),
               activation=torch.sigmoid, init=-2.0, sample=torch.sigmoid))
BETA = gate(Gate("beta", "the momentum beta_t (the layer scales it by its beta_max < 1)", 0.0, 1.0,
                 activation=torch.sigmoid, init=0.5, sample=lambda noise: 0.9 * torch.sigmoid(noise), high_open=True))
READS = ("token", "chunk-start")    # GD.reads: each token after its own step (the contract), or the chunk's start
# The 5 quintic Newton-Schulz steps (a, b, c) of LaCT's code (its zeropower_via_newtonschulz5, after Muon's
# modded-nanogpt / Moonlight versions): X <- a X + (b A + c A^2) X with A = X X^T
NEWTON_SCHULZ = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                 (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012))
# Muon's own quintic step (Jordan et al. 2024, modded-nanogpt's zeropower_via_newtonschulz5; torch.optim.Muon's
# default), the same (a, b, c) at every one of the k steps: the Muon algorithm's NewtonSchulz_k
MUON_STEP = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, eps: float = 1e-7, coefficients=NEWTON_SCHULZ) -> torch.Tensor:
    """Muon's orthogonalization of every matrix of g [..., o, i]: X = g / (||g||_F + eps), then one step
    X <- a X + (b A + c A^2) X, A = X X^T, per (a, b, c) of `coefficients` (LaCT's NEWTON_SCHULZ by default), which
    push X's singular values towards 1 (X -> U V^T for g = U S V^T). Computed on the wide side (X^T when o > i: the
    same map, transposed, with the smaller Gram matrix). An odd map: NS(-g) = -NS(g), exactly. Each step is two fused
    multiply-adds (baddbmm) over the matrices stacked on one batch axis: one new X-sized tensor per step."""
    tall = g.shape[-2] > g.shape[-1]
    x = g.transpose(-1, -2) if tall else g
    shape = x.shape
    x = (x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)).reshape(math.prod(shape[:-2]), *shape[-2:])
    for a, b, c in coefficients:
        gram = x @ x.transpose(-1, -2)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.view(shape)
    return x.transpose(-1, -2) if tall else x


@choice("algorithm", "gd")
@dataclass(frozen=True)
class GD:
    """Mini-batch gradient descent: every token of a chunk steps with its gradient at the chunk-start memory.

    token_weights: TTT's token weights (arXiv 2407.04620 section 2.7 and its code: token_idx = 1/i plus the
    learnable_token_idx offset, clamped at 0). Inside a chunk the i-th token (i = 1..b) reads
    W_t = W_s + tau_i (A_t - W_s), tau_i = max(0, 1/i + o_i), where A_t - W_s is the sum of the chunk's steps so
    far; the chunk's last token sets the state, W_{s+b} = W_s + tau_b (A - W_s). o [b] is learned (the memory
    layer's `token_offsets`, zeros at init: TTT's 1/i). Defined for retention "none", as in TTT.

    reads="chunk-start": LaCT's apply-then-update (arXiv 2505.23884, its block_causal_lact_swiglu): every token of a
    chunk reads the chunk's start weights W_s (read weight tau_i = 0, the last token too), and the chunk's last token
    sets the state to W_s + U(A - W_s) (end weight 1), A - W_s = -sum_i eta_i g_i the chunk's summed step.
    muon: U = `newton_schulz` per weight matrix (LaCT's Muon update), else the identity; only with chunk-start reads.
    Both weighted rules (`weighted`) allow retention "none" or "rownorm" (LaCT's weight normalization, applied to the
    state a chunk leaves).
    """

    name: str = field(default="gd", init=False)
    gates = ("lr",)
    momentum: bool = field(default=False, init=False)
    token_weights: bool = False
    channel_lr: bool = False
    reads: str = "token"
    muon: bool = False

    def __post_init__(self):
        require(self.reads in READS, "algorithm.reads", self.reads, f"one of {READS}",
                "'chunk-start' is LaCT's apply-then-update; 'token' reads after each token's own step")
        require(not (self.token_weights and self.reads == "chunk-start"), "algorithm.reads", self.reads,
                "'token' with token_weights (TTT's weights are read inside the chunk)",
                "set token_weights=False for LaCT's chunk-start reads")
        require(not self.muon or self.reads == "chunk-start", "algorithm.muon", self.muon,
                "False unless reads='chunk-start' (Muon orthogonalizes a chunk's total update; reads inside the "
                "chunk would see its unorthogonalized parts)", "set reads='chunk-start' or muon=False")

    @property
    def weighted(self) -> bool:
        """Whether reads inside a chunk are W_s + tau_i (A_t - W_s) and the chunk ends at W_s + tau_end U(A - W_s):
        TTT's token weights or LaCT's chunk-start reads."""
        return self.token_weights or self.reads == "chunk-start"

    def describe(self) -> str:
        return ("GD" + (", channel-wise eta" if self.channel_lr else "")
                + (", token-weighted (TTT)" if self.token_weights else "")
                + (", chunk-start reads (apply then update)" if self.reads == "chunk-start" else "")
                + (", Muon update" if self.muon else ""))

    def read_weights(self, offsets: torch.Tensor | None, first: int, n: int, dtype=torch.float32, device=None
                     ) -> torch.Tensor | float:
        """tau of the chunk positions first .. first + n - 1: TTT's token weights [n], or 0.0 (chunk-start reads)."""
        return 0.0 if self.reads == "chunk-start" else self.token_weight(offsets, first, n, dtype, device)

    def end_weight(self, offsets: torch.Tensor | None, chunk_size: int, dtype=torch.float32, device=None
                   ) -> torch.Tensor | float:
        """The weight of a chunk's summed step in the state it leaves: TTT's tau_b [1], or 1.0 (chunk-start reads)."""
        return 1.0 if self.reads == "chunk-start" else self.token_weight(offsets, chunk_size - 1, 1, dtype, device)

    def update(self, step: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """U: a chunk's summed step as the state takes it (weighted reads): Newton-Schulz per matrix with muon."""
        return {name: newton_schulz(s) for name, s in step.items()} if self.muon else step

    @staticmethod
    def token_weight(offsets: torch.Tensor | None, first: int, n: int, dtype=torch.float32, device=None
                     ) -> torch.Tensor:
        """tau [n] of the chunk positions first .. first + n - 1 (0-based): max(0, 1/(position + 1) + offset)."""
        position = torch.arange(first, first + n, device=device if offsets is None else offsets.device)
        tau = 1.0 / (position + 1).to(dtype)
        return tau if offsets is None else torch.relu(tau + offsets[first:first + n].to(dtype))


@choice("algorithm", "momentum")
@dataclass(frozen=True)
class Momentum:
    name: str = field(default="momentum", init=False)
    gates = ("lr", "beta")
    momentum: bool = field(default=True, init=False)
    channel_lr: bool = False

    def describe(self) -> str:
        return "GD + momentum" + (", channel-wise eta" if self.channel_lr else "")


@choice("algorithm", "muon")
@dataclass(frozen=True)
class Muon:
    """ATLAS's memory optimizer (arXiv 2505.23735, Eqs. 32-33): momentum, orthogonalized by Newton-Schulz at every
    token, then a step of size eta_t with the retention's decay:

        S_t = beta_t S_{t-1} - g_t;   A_t = alpha_t A_{t-1} + eta_t NS_k(S_t);   W_t = boundary(A_t) as for GD

    g_t the gradient at the chunk's anchor (as for GD and Momentum), NS_k `newton_schulz` with Muon's step MUON_STEP
    repeated ns_steps = k times, applied to every weight matrix of the memory per batch row and head. The paper
    writes S^paper_t = theta_t S^paper_{t-1} + grad l_t and M_t = alpha_t M_{t-1} - eta_t NS_k(S^paper_t); here
    S = -S^paper (the sign of GD's and Momentum's S, the direction the state moves), the same rule because NS is
    odd. eta_t scales the orthogonalized update (outside NS, as in Eq. 32), not the gradient, so S is in gradient
    units. Gates: lr (eta) and beta (theta), as Momentum's.
    """

    ns_steps: int = 5
    name: str = field(default="muon", init=False)
    gates = ("lr", "beta")
    momentum: bool = field(default=True, init=False)

    def __post_init__(self):
        require(isinstance(self.ns_steps, int) and not isinstance(self.ns_steps, bool) and self.ns_steps >= 1,
                "algorithm.ns_steps", self.ns_steps, "an integer >= 1 (Newton-Schulz steps per token)",
                "ATLAS uses k = 5")

    def describe(self) -> str:
        return f"Muon (momentum, Newton-Schulz x{self.ns_steps} per token)"

    def orthogonalize(self, S: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """NS_k of every weight matrix [..., out, in] of S (per leading index: batch row, head, token)."""
        return {name: newton_schulz(s, coefficients=(MUON_STEP,) * self.ns_steps) for name, s in S.items()}


@choice("algorithm", "delta")
@dataclass(frozen=True)
class Delta:
    """The exact delta rule; steps = n_h > 1 is DeltaProduct (arXiv 2502.10297): n_h delta steps per token, each
    with its own key, value and eta from x_t, the decay applied once (before the first), the read after the last:

        W_{t,0} = alpha_t W_{t-1};  W_{t,j} = W_{t,j-1} (I - eta_{t,j} k_{t,j} k_{t,j}^T) + eta_{t,j} v_{t,j} k_{t,j}^T;
        W_t = W_{t,n_h};  y_t = W_t q_t

    The ops see the interleaved sequence of T n_h sub-steps (the memory layer builds it: log_alpha 0 and q = 0
    except at a token's first / last sub-step), which is the plain delta rule, so every op applies unchanged.
    """

    steps: int = 1
    name: str = field(default="delta", init=False)
    gates = ("lr",)
    momentum: bool = field(default=False, init=False)

    def __post_init__(self):
        require(isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
                "algorithm.steps", self.steps, "an integer >= 1 (delta steps per token)",
                "1 is the delta rule; Gated DeltaProduct uses 2 or 3")

    def describe(self) -> str:
        return "exact delta rule" + (f", {self.steps} steps per token (DeltaProduct)" if self.steps > 1 else "")


@choice("algorithm", "attention")
@dataclass(frozen=True)
class NonParametric:
    name: str = field(default="attention", init=False)
    gates = ()
    momentum: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "softmax attention"
