"""The named models of SPEC section 3, each a point of the design space plus the block it lives in.

Each preset function's docstring is its paper equation (b = chunk size, per head):
`get_preset(name)` returns a Preset, `list_presets()` the names in table order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .bias import DotProduct, Huber, L2, Lp, Omega
from ..errors import require
from .memory import MLPMemory, NonParametric, matrix
from .algorithm import GD, Delta, Momentum, Muon
from .algorithm import NonParametric as Attention
from .retention import Decay, KLSoftmax, LqNormalization, NoRetention, RowNorm
from .spec import MirasSpec

BLOCKS = ("attention", "memory", "mamba2", "ttt", "titans-mac", "titans-mag", "titans-mal", "memory+swa")


@dataclass(frozen=True)
class Preset:
    name: str
    spec: MirasSpec
    block: str          # the layer that wraps the memory (SPEC section 4)
    equation: str
    paper: str
    persistent_tokens: int = 0   # the default of MirasConfig.persistent_tokens for this preset
    ttt_base_lr: float | None = None  # TTT's eta_base: the memory layer's step eta_base sigmoid(.) (unit keys)
    lr_max: float | None = None  # the memory layer's bound on the inner step, eta = lr_max sigmoid(.) (None: its own)


# Titans' persistent memory: N_p learnable tokens before every sequence (MAC / MAG / MAL). The paper gives no N_p
# for its experiments; 4 is our default (docs/design-space.md).
TITANS_PERSISTENT_TOKENS = 4
# Moneta's bound on the inner step: the cubic bias' curvature (6 |r| per coordinate, against L2's 2) makes the layer's
# default 0.1 a chaotic map past a few hundred tokens (docs/design-space.md, with the measurement).
MONETA_LR_MAX = 0.01


_REGISTRY: dict[str, Callable[[], Preset]] = {}


def _preset(name: str, block: str, paper: str, **defaults):
    def register(fn: Callable[[], MirasSpec]):
        _REGISTRY[name] = lambda: Preset(name, fn(), block, " ".join(fn.__doc__.split()), paper, **defaults)
        return fn
    return register


def deep_memory() -> MLPMemory:
    """The papers' 2-layer MLP memory with residual + LayerNorm, expansion 4."""
    return MLPMemory(depth=2, expansion=4, activation="gelu", residual=True, norm=True)


@_preset("transformer", "attention", "Llama-style baseline")
def transformer():
    """y_t = sum_{s<=t} softmax_s(q_t . k_s / sqrt(d)) v_s"""
    return MirasSpec(NonParametric(), L2(), NoRetention(), Attention())


@_preset("linear-attention", "memory", "Katharopoulos et al. 2020")
def linear_attention():
    """W_t = W_{t-1} + eta_t v_t k_t^T; y_t = W_t q_t"""
    return MirasSpec(matrix(), DotProduct(), NoRetention(), GD(), chunk_size=64)


@_preset("retnet", "memory", "Sun et al. 2023")
def retnet():
    """W_t = gamma W_{t-1} + eta_t v_t k_t^T, gamma constant per head"""
    return MirasSpec(matrix(), DotProduct(), Decay(data_dependent=False), GD(), chunk_size=64)


@_preset("mamba2", "mamba2", "Dao & Gu 2024 (SSD)")
def mamba2():
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T; y_t = h_t C_t (+ D x_t)"""
    return MirasSpec(matrix(), DotProduct(), Decay(), GD(), chunk_size=64)


@_preset("deltanet", "memory", "Schlag et al. 2021; Yang et al. 2024")
def deltanet():
    """W_t = W_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T"""
    return MirasSpec(matrix(), L2(), NoRetention(), Delta(), chunk_size=64)


@_preset("gated-deltanet", "memory", "Yang et al. 2025")
def gated_deltanet():
    """W_t = alpha_t W_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T"""
    return MirasSpec(matrix(), L2(), Decay(), Delta(), chunk_size=64)


# TTT's base inner learning rate (arXiv 2407.04620: 1 for TTT-Linear, 0.1 for TTT-MLP)
@_preset("ttt-linear", "ttt", "Sun et al. 2024", ttt_base_lr=1.0)
def ttt_linear():
    """f(x) = x + g LN(W x) + b (g, b learned per head); W_t = W_s - tau_i sum_{j <= t} eta_j grad ||f(k_j) - v_j||^2
    over the mini-batch (b = 16, gradients at W_s), tau_i = 1/i + o_i the token weights (o learned)"""
    return MirasSpec(MLPMemory(depth=1, residual=True, norm=True, norm_affine=True), L2(), NoRetention(),
                     GD(token_weights=True), chunk_size=16)


@_preset("ttt-mlp", "ttt", "Sun et al. 2024", ttt_base_lr=0.1)
def ttt_mlp():
    """f(x) = x + g LN(W2 gelu(W1 x)) + b (g, b learned per head); mini-batch GD on ||f(k) - v||^2 with TTT's token
    weights tau_i = 1/i + o_i, b = 16"""
    return MirasSpec(MLPMemory(depth=2, expansion=4, activation="gelu", residual=True, norm=True, norm_affine=True),
                     L2(), NoRetention(), GD(token_weights=True), chunk_size=16)


@_preset("titans-lmm", "memory", "Behrouz et al. 2025 (Titans)")
def titans_lmm():
    """S_t = beta_t S_{t-1} - eta_t grad l(M_{t'}; k_t, v_t); M_t = (1 - a_t) M_{t-1} + S_t"""
    return MirasSpec(deep_memory(), L2(), Decay(), Momentum(), chunk_size=16)


@_preset("moneta", "memory", "Behrouz et al. 2025 (MIRAS)", lr_max=MONETA_LR_MAX)
def moneta():
    """A_t = alpha_t (A_{t-1} - W0) + W0 - eta_t grad ||M(k_t) - v_t||_3^3; W_t = r A_t / ||A_t||_4 at a chunk's last
    token, r A_t / ||A_s||_4 inside it (s = chunk start; ||W||_4 = r, the initialization's 4-norm; MIRAS Eq. 24's
    A_t / ||A_t||_4^2 is form="paper", radius=1); the decay forgets toward the learned initial state W0; eta_t in R^d,
    one step per output channel (MIRAS section 5.4), eta_t <= 0.01"""
    retention = LqNormalization(q=4.0, form="sphere", radius="init", toward="init")
    return MirasSpec(deep_memory(), Lp(p=3.0), retention, GD(channel_lr=True), chunk_size=16)


@_preset("yaad", "memory", "Behrouz et al. 2025 (MIRAS)")
def yaad():
    """W_t = alpha_t W_{t-1} - eta_t grad Huber_{delta_t}(M(k_t) - v_t): 2r if ||r|| <= delta_t sqrt(d), else
    2 delta_t sqrt(d) r / ||r|| (the continuous form; Huber(form="switch") is the paper's literal switch); eta_t in
    R^d, one step per output channel (MIRAS section 5.4)"""
    return MirasSpec(deep_memory(), Huber(form="norm"), Decay(), GD(channel_lr=True), chunk_size=16)


@_preset("memora", "memory", "Behrouz et al. 2025 (MIRAS)")
def memora():
    """W_t = c softmax(alpha_t log W_{t-1} - eta_t grad ||M(k_t) - v_t||^2) at a chunk's last token, c = n_in (MIRAS
    Eq. 21's scale: rows sum to their length, entries O(1)); inside it linear: W_t = W_s + J(A_t - A_s), J the
    Jacobian of c softmax at a uniform row (A: the logits); eta_t in R^d, one step per output channel (MIRAS
    section 5.4)"""
    return MirasSpec(deep_memory(), L2(), KLSoftmax(scale="n_in"), GD(channel_lr=True), chunk_size=16)


for _name, _base, _block in [("titans-mac", "titans-lmm", "titans-mac"), ("titans-mag", "titans-lmm", "titans-mag"),
                             ("titans-mal", "titans-lmm", "titans-mal"), ("moneta-h", "moneta", "memory+swa"),
                             ("yaad-h", "yaad", "memory+swa"), ("memora-h", "memora", "memory+swa")]:
    _REGISTRY[_name] = (lambda base=_base, name=_name, block=_block: Preset(
        name, _REGISTRY[base]().spec, block, _REGISTRY[base]().equation + f" ; block: {block}",
        _REGISTRY[base]().paper, TITANS_PERSISTENT_TOKENS if block.startswith("titans") else 0,
        lr_max=_REGISTRY[base]().lr_max))


# The frontier (SPEC section 7): newer points of the same space.
@_preset("kda", "memory", "Kimi Team 2025 (Kimi Delta Attention)")
def kda():
    """W_t = W_{t-1} Diag(alpha_t) (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, alpha_t in (0, 1]^{d_k} one decay per
    key channel (S = W^T: S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T)"""
    return MirasSpec(matrix(), L2(), Decay(per_channel=True), Delta(), chunk_size=64)


@_preset("gated-deltaproduct", "memory", "Siems et al. 2025 (Gated DeltaProduct)")
def gated_deltaproduct():
    """W_{t,0} = alpha_t W_{t-1}; W_{t,j} = W_{t,j-1} (I - beta_{t,j} k_{t,j} k_{t,j}^T) + beta_{t,j} v_{t,j} k_{t,j}^T
    for j = 1..n_h (n_h = 2 keys, values, betas of x_t); W_t = W_{t,n_h}; y_t = W_t q_t"""
    return MirasSpec(matrix(), L2(), Decay(), Delta(steps=2), chunk_size=64)


# ATLAS (arXiv 2505.23735): the Omega rule over the last c tokens, on degree-2 polynomial features of the keys.
# The paper gives no c or p for its runs in the text we could check; c = 4 and p = 2 are ours (docs/design-space.md).
ATLAS_WINDOW = 4


def atlas_memory() -> MLPMemory:
    """ATLAS's 2-layer MLP memory (GELU, expansion 4 over the head dim, LN) reading phi_2(k); no residual, since
    phi(k) is wider than v (the paper's M(x) = x + W1 gelu(W2 x) is written for equal sizes)."""
    return MLPMemory(depth=2, expansion=4, activation="gelu", residual=False, norm=True, features="poly", degree=2)


@_preset("omeganet", "memory", "Behrouz et al. 2025 (ATLAS)")
def omeganet():
    """M_t = alpha_t M_{t-1} - eta_t grad sum_{i=t-c+1..t} gamma_i ||M(phi(k_i)) - v_i||^2 (the Omega rule, c = 4,
    gamma_i in [0, 1] a gate of token i; gradients at the chunk start, b = 16); M = LN(W2 gelu(W1 phi_2(k))),
    phi_2(k) = [c_0, c_1 k, c_2 k^(2)] with learned c_i^2 = 1/i! at init"""
    return MirasSpec(atlas_memory(), Omega(window=ATLAS_WINDOW), Decay(), GD(), chunk_size=16)


@_preset("atlas", "memory", "Behrouz et al. 2025 (ATLAS)")
def atlas():
    """S_t = theta_t S_{t-1} + grad sum_{i=t-c+1..t} gamma_i ||M(phi(k_i)) - v_i||^2; M_t = alpha_t M_{t-1} - eta_t
    NewtonSchulz_5(S_t) (ATLAS Eqs. 32-33: Muon, NS per weight matrix at every token; gradients at the chunk start,
    b = 16); c = 4, M = LN(W2 gelu(W1 phi_2(k))), phi_2(k) = [c_0, c_1 k, c_2 k^(2)] with learned c_i^2 = 1/i! at
    init"""
    return MirasSpec(atlas_memory(), Omega(window=ATLAS_WINDOW), Decay(), Muon(), chunk_size=16)


# LaCT (arXiv 2505.23884): one update per large chunk, read before it; the fast weights' hidden size is LaCT's
# code default (inter_multi = 1: the head dim).
@_preset("lact", "memory+swa", "Zhang et al. 2025 (LaCT)")
def lact():
    """per chunk of b = 2048 tokens, apply then update: o_i = f_{W_s}(q_i) for every token i of the chunk,
    f_W(x) = W2 (silu(W1 x) * W3 x); then W = RowNorm(W_s + Muon(sum_i eta_i grad_W <f_W(k_i), v_i> at W_s)), every
    row of W1, W2, W3 rescaled to its norm in W0; sliding-window attention in the block orders a chunk's tokens"""
    return MirasSpec(MLPMemory(depth=2, expansion=1, activation="swiglu", residual=False, norm=False), DotProduct(),
                     RowNorm(), GD(reads="chunk-start", muon=True), chunk_size=2048)


def list_presets() -> list[str]:
    """The names of the presets, in the order of SPEC section 3 (then the frontier of section 7)."""
    return list(_REGISTRY)


def get_preset(name: str) -> Preset:
    """The preset `name`: its MirasSpec, block, equation and paper (ConfigError listing the names otherwise)."""
    require(name in _REGISTRY, "preset", name, f"one of {list_presets()}", "run `miras presets` to list them")
    return _REGISTRY[name]()
