"""Memory architectures: the function M_W and the shape of its state W.

A memory is evaluated for every head of every batch row with its own weights:

    W: dict name -> [B, H, out, in]      (one weight matrix per layer, applied in key order)
    x: [B, H, n, d_k]                    (n inputs per head)
    M_W(x): [B, H, n, d_v]

`grads` is the closed-form inner backward: given d loss / d M_W(x) for each input it returns the
per-input gradient of every weight, [B, H, n, out, in]. It is what the online optimizer steps on,
and it is part of the forward graph (outer gradients flow through it: second order).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from torch import Tensor

from ..errors import require
from .registry import choice

FEATURES = ("identity", "poly")     # what the memory reads: the keys, or ATLAS's polynomial features of them
ACTIVATIONS = ("gelu", "silu", "tanh", "identity", "swiglu")   # swiglu: the gated layer W2 (silu(W1 x) * W3 x)


def activation(name: str, z: Tensor) -> Tensor:
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    if name == "silu":
        return torch.nn.functional.silu(z)
    if name == "tanh":
        return torch.tanh(z)
    return z


def activation_grad(name: str, z: Tensor) -> Tensor:
    """d act(z) / dz, elementwise."""
    if name == "gelu":  # exact (erf) GELU: Phi(z) + z phi(z), as torch's own kernel (differentiable: its double backward)
        return torch.ops.aten.gelu_backward(torch.ones_like(z), z)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if name == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    return torch.ones_like(z)


def layer_norm(o: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Affine-free LayerNorm over the last dim; returns (normalized, 1 / std)."""
    mu = o.mean(-1, keepdim=True)
    centered = o - mu
    inv_std = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    return centered * inv_std, inv_std


def layer_norm_backward(dn: Tensor, n: Tensor, inv_std: Tensor) -> Tensor:
    """Gradient through `layer_norm` given its output n and 1 / std."""
    return inv_std * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))


@choice("memory", "mlp")
@dataclass(frozen=True)
class MLPMemory:
    """`M(x) = [x +] [LN](W_L act(... act(W_1 x)))`, the parametric memories of the papers.

    depth=1, residual=False, norm=False is the matrix memory `M(x) = W x` (linear attention,
    DeltaNet, Mamba-2); depth=1 with residual + LN is TTT-Linear; depth=2 with residual + LN and
    expansion 4 is the deep memory of TTT-MLP, Titans, Moneta, Yaad and Memora.

    activation="swiglu" (depth 2): the gated MLP `W2 (silu(W1 x) * (W3 x))`, LaCT's fast weights (arXiv
    2505.23884) with residual=False, norm=False: W1 (gate) and W3 (up) are [expansion d_k, d_k], W2 is
    [d_v, expansion d_k].

    norm_affine: TTT's LayerNorm with a learned per-head gain and shift, `gamma * LN(.) + beta`
    (arXiv 2407.04620, `ttt_norm_weight` / `ttt_norm_bias` in its code). gamma and beta are outer
    parameters, kept as two more entries of the state, "ln_weight" and "ln_bias" ([d_v, 1] per
    head: a layer read with the constant input 1), whose inner gradient is zero: the inner
    optimizer never moves them, a layer's learnable W0 learns them (init 1 and 0). Needs a
    retention without decay or boundary (MirasSpec checks), which would move them.

    features="poly" (ATLAS, arXiv 2505.23735): the memory reads keys and queries through the degree-`degree`
    polynomial feature map (`poly_features`, learnable coefficients): the memory layer lifts its normalized q, k,
    so the op's key size is `feature_dim(memory, head_dim)` = C(d + p, p) (561 for d = 32, p = 2). The hidden
    width is then expansion x d_v, and there is no residual (phi(k) is not the size of v).
    """

    gates = ()

    depth: int = 2
    expansion: int = 4
    activation: str = "gelu"
    residual: bool = True
    norm: bool = True
    norm_eps: float = 1e-5
    norm_affine: bool = False
    features: str = "identity"
    degree: int = 2

    def __post_init__(self):
        require(isinstance(self.depth, int) and self.depth >= 1, "memory.depth", self.depth,
                "an integer >= 1", "use depth=1 for a matrix memory, 2 for the papers' deep memory")
        require(isinstance(self.expansion, int) and self.expansion >= 1, "memory.expansion",
                self.expansion, "an integer >= 1", "the papers use 4")
        require(self.activation in ACTIVATIONS, "memory.activation", self.activation,
                f"one of {ACTIVATIONS}", "pick a smooth activation; the inner backward needs act'")
        require(self.activation != "swiglu" or self.depth == 2, "memory.depth", self.depth,
                "2 with activation='swiglu' (one gated hidden layer)", "set depth=2 or another activation")
        require(self.norm_eps > 0, "memory.norm_eps", self.norm_eps, "> 0", "use 1e-5")
        require(not self.norm_affine or self.norm, "memory.norm_affine", self.norm_affine, "False without norm",
                "set norm=True for TTT's LayerNorm affine")
        require(self.features in FEATURES, "memory.features", self.features, f"one of {FEATURES}",
                "'poly' reads keys and queries through ATLAS's polynomial feature map")
        require(isinstance(self.degree, int) and not isinstance(self.degree, bool) and self.degree >= 1,
                "memory.degree", self.degree, "an integer >= 1 (the polynomial features' degree)", "ATLAS uses 2")
        require(self.features == "identity" or not self.residual, "memory.residual", self.residual,
                "False with features='poly' (the memory reads phi(k), whose size is not the value's)",
                "set residual=False")

    @property
    def kind(self) -> str:
        return "matrix" if self.is_matrix else f"mlp{self.depth}"

    @property
    def is_matrix(self) -> bool:
        return self.depth == 1 and not self.residual and not self.norm

    def describe(self) -> str:
        if self.features == "poly":
            return f"{replace(self, features='identity').describe()}, k = phi_{self.degree}(key) (polynomial features)"
        if self.is_matrix:
            return "matrix W k"
        body = "W k" if self.depth == 1 else f"{self.depth}-layer MLP({self.activation}, x{self.expansion})"
        if self.activation == "swiglu":
            body = f"W2 (silu(W1 k) * W3 k) (x{self.expansion})"
        body = (f"g LN({body}) + b" if self.norm_affine else f"LN({body})") if self.norm else body
        return f"k + {body}" if self.residual else body

    def shapes(self, d_k: int, d_v: int) -> dict[str, tuple[int, int]]:
        """Weight name -> (out, in), in the order the layers are applied."""
        require(not self.residual or d_k == d_v, "memory.residual", self.residual,
                f"False when d_k ({d_k}) != d_v ({d_v})", "use equal key and value head dims")
        hidden = self.expansion * (d_v if self.features == "poly" else d_k)      # (phi(k) is much wider than k)
        dims = [d_k] + [hidden] * (self.depth - 1) + [d_v]
        shapes = {f"W{i + 1}": (dims[i + 1], dims[i]) for i in range(self.depth)}
        if self.activation == "swiglu":
            shapes["W3"] = shapes["W1"]
        if self.norm_affine:
            shapes.update(ln_weight=(d_v, 1), ln_bias=(d_v, 1))
        return shapes

    @property
    def layers(self) -> list[str]:
        """The names of the weights the inner optimizer moves, in the order they are applied (SwiGLU: W1, W2, W3,
        with W1 and W3 both applied to the input)."""
        return [f"W{i + 1}" for i in range(self.depth)] + (["W3"] if self.activation == "swiglu" else [])

    def state_size(self, d_k: int, d_v: int) -> int:
        return sum(o * i for o, i in self.shapes(d_k, d_v).values())

    def init_state(self, heads: int, d_k: int, d_v: int, generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """A learnable-W0 initialization [H, out, in]: zeros for a matrix, scaled normal for MLPs."""
        state = {}
        for name, (o, i) in self.shapes(d_k, d_v).items():
            if name in ("ln_weight", "ln_bias"):
                state[name] = torch.full((heads, o, i), float(name == "ln_weight"), dtype=dtype)
            elif self.is_matrix:
                state[name] = torch.zeros(heads, o, i, dtype=dtype)
            else:
                state[name] = torch.randn(heads, o, i, generator=generator, dtype=dtype) / math.sqrt(i)
        return state

    def run(self, x: Tensor, linear) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor, Tensor | None]:
        """The layer structure with the weight products left to `linear(name, h) -> W_name h`.

        Returns (output, layer inputs, pre-activations, normalized output, 1 / std). The chunked
        engine reuses it with per-token or dual-form products, so the architecture lives here only.
        With norm_affine, gamma and beta are read as linear("ln_weight" / "ln_bias", 1).
        """
        acts, pres, h = [x], [], x
        names = self.layers
        if self.activation == "swiglu":                  # pres: (gate, up); acts: (x, silu(gate) * up)
            pres = [linear("W1", x), linear("W3", x)]
            acts.append(activation("silu", pres[0]) * pres[1])
            names, h = [], linear("W2", acts[1])
        for idx, name in enumerate(names):
            z = linear(name, h)
            if idx < len(names) - 1:
                pres.append(z)
                h = activation(self.activation, z)
                acts.append(h)
            else:
                h = z
        inv_std = None
        if self.norm:
            h, inv_std = layer_norm(h, self.norm_eps)
        normed = h
        if self.norm_affine:
            one = x.new_ones(*x.shape[:-1], 1)
            h = linear("ln_weight", one) * h + linear("ln_bias", one)
        out = x + h if self.residual else h
        return out, acts, pres, normed, inv_std

    def __call__(self, W: dict[str, Tensor], x: Tensor) -> Tensor:
        """M_W(x): W [B, H, out, in], x [B, H, n, d_k] -> [B, H, n, d_v]."""
        return self.run(x, lambda name, h: h @ W[name].transpose(-1, -2))[0]

    def grads(self, W: dict[str, Tensor], x: Tensor, dpred) -> dict[str, Tensor]:
        """Per-input gradients of sum_n <dpred_n, M_W(x_n)>: name -> [B, H, n, out, in]."""
        return {name: torch.einsum("bhno,bhni->bhnoi", d, a)
                for name, (d, a) in self.backward_factors(W, x, dpred).items()}

    def backward_factors(self, W: dict[str, Tensor], x: Tensor, dpred):
        """The rank-1 factors of every per-input gradient: name -> (delta [B,H,n,out], input [B,H,n,in]).

        dpred: d loss / d M_W(x), [B, H, n, d_v], or a function of the prediction that returns it.
        grads()[name][..., n, :, :] == outer(delta_n, input_n). The chunked engine uses the factors
        directly, so per-token weight gradients are never materialized.
        """
        pred, acts, pres, normed, inv_std = self.run(x, lambda name, h: h @ W[name].transpose(-1, -2))
        d = dpred(pred) if callable(dpred) else dpred
        fixed = {}
        if self.norm_affine:                       # gamma, beta: outer parameters, zero inner gradient
            fixed = {n: (torch.zeros_like(d), x.new_ones(*x.shape[:-1], 1)) for n in ("ln_weight", "ln_bias")}
            d = d * W["ln_weight"][..., 0].unsqueeze(-2)
        if self.norm:
            d = layer_norm_backward(d, normed, inv_std)
        if self.activation == "swiglu":
            gate, up = pres
            dh = d @ W["W2"]
            return {"W1": (dh * up * activation_grad("silu", gate), x), "W2": (d, acts[1]),
                    "W3": (dh * activation("silu", gate), x), **fixed}
        names = self.layers
        factors = {}
        for idx in range(len(names) - 1, -1, -1):
            factors[names[idx]] = (d, acts[idx])
            if idx > 0:
                d = (d @ W[names[idx]]) * activation_grad(self.activation, pres[idx - 1])
        return {**dict(reversed(list(factors.items()))), **fixed}


def matrix(**options) -> MLPMemory:
    """The matrix memory M(k) = W k (options: other MLPMemory fields, e.g. features="poly")."""
    return MLPMemory(depth=1, residual=False, norm=False, **options)


def feature_dim(memory, d: int) -> int:
    """The key size the memory reads for head dim d: C(d + p, p) with degree-p polynomial features, else d."""
    return math.comb(d + memory.degree, memory.degree) if getattr(memory, "features", "identity") == "poly" else d


def poly_scale_init(degree: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The polynomial features' coefficients c_i = sqrt(a_i) at init, a_i = 1 / i! (i = 0..degree): [degree + 1]."""
    return torch.tensor([1.0 / math.sqrt(math.factorial(i)) for i in range(degree + 1)], dtype=dtype)


@lru_cache(maxsize=None)
def _monomials(d: int, i: int, device: torch.device | None = None, dtype: torch.dtype = torch.float64
               ) -> tuple[Tensor, Tensor]:
    """The degree-i monomials of d variables as sorted index tuples [m, i], and sqrt(i! / prod(multiplicity!)) in
    dtype, on `device` (cached per device and dtype: no host-to-device copy per call)."""
    index = list(itertools.combinations_with_replacement(range(d), i))
    weight = [math.sqrt(math.factorial(i) / math.prod(math.factorial(m.count(j)) for j in set(m))) for m in index]
    return (torch.tensor(index, dtype=torch.long, device=device).view(len(index), i),
            torch.tensor(weight, dtype=dtype, device=device))


def poly_features(x: Tensor, scale: Tensor) -> Tensor:
    """ATLAS's polynomial feature map (arXiv 2505.23735 section 3), x [..., d] -> [..., C(d + p, p)]:

        phi(x) = [c_0, c_1 x, c_2 x^(2), ..., c_p x^(p)],   p = len(scale) - 1, c = scale,

    x^(i) the degree-i monomials x_j1 .. x_ji (j1 <= .. <= ji, the paper's [x^beta]_{|beta| = i}) times
    sqrt(i! / prod multiplicity!), so that <x^(i), y^(i)> = <x, y>^i: the reduced form of the tensor power x^(⊗i)
    with the same inner products (about d^i / i! entries instead of d^i). Hence <phi(x), phi(y)> = sum_i a_i <x, y>^i
    with a_i = c_i^2 >= 0, the paper's learnable coefficients (a_i = 1 / i! at init: exp's Taylor series)."""
    scale = scale.to(x.dtype)
    out = [scale[0] * x.new_ones(*x.shape[:-1], 1)]
    for i in range(1, len(scale)):
        index, weight = _monomials(x.shape[-1], i, x.device, x.dtype)
        out.append(scale[i] * weight * x[..., index].prod(-1))
    return torch.cat(out, dim=-1)


@choice("memory", "nonparametric")
@dataclass(frozen=True)
class NonParametric:
    """No weights: the memory is the KV cache and reading it is softmax attention."""

    gates = ()

    kind: str = field(default="nonparametric", init=False)
    is_matrix: bool = field(default=False, init=False)

    def describe(self) -> str:
        return "KV cache (non-parametric)"

    def state_size(self, d_k: int, d_v: int) -> int:
        return 0  # grows with the context: (d_k + d_v) per token
