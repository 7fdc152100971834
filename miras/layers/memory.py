"""The MIRAS / Titans memory layer: any spec of the design space as a token mixer.

x -> q, k, v projections -> depthwise causal conv (k = 4) + SiLU -> L2-normalized q, k ->
data-dependent gates from low-rank projections of x -> memory op (chunked, equal to the
recurrence) -> per-head RMSNorm -> SiLU(linear gate of x) -> output projection.

Titans persistent memory (MAG / MAL, arXiv 2501.00663 section 4): with persistent_tokens = N_p the layer reads
N_p learnable, data-independent tokens P before the sequence, x~ = [P ++ x], and returns the outputs of x only.
P does not depend on the data, so the state after P is computed once per call, from the initial state with batch
1, and expanded over the batch; only a call without a state (the start of a stream) reads P, so a stream fed in
pieces equals one call.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import MemoryState, initial_state
from ..ops.dispatch import memory_op
from ..space import MirasSpec
from ..errors import require
from ..space.memory import feature_dim, poly_features, poly_scale_init
from ..space.registry import GATES
from .conv import ShortConv


@dataclass
class MemoryLayerState:
    memory: MemoryState
    conv: dict[str, Tensor]          # "q" / "k" / "v" -> [B, K - 1, C]


def substeps(x: Tensor, steps: int, at: int | None = None) -> Tensor:
    """DeltaProduct's sub-step sequence (sub-step j of token t at t * steps + j): x [B, T, steps, ...] ->
    [B, T * steps, ...]; with `at`, x [B, T, ...] is one sub-step's (0: the first, -1: the last), 0 at the others."""
    if at is not None:
        if steps == 1:
            return x
        zeros = torch.zeros_like(x)
        x = torch.stack([x if j == at % steps else zeros for j in range(steps)], dim=2)
    return x.flatten(1, 2)


class LowRankGate(nn.Module):
    """x [B, T, D] -> [B, T, H] (or [B, T, H, per]) pre-activation, through a rank-r bottleneck."""

    def __init__(self, d_model: int, heads: int, rank: int, per: int = 1, bias: float = 0.0):
        super().__init__()
        self.shape = (heads,) if per == 1 else (heads, per)
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Linear(rank, heads * per)
        nn.init.zeros_(self.up.weight)
        nn.init.constant_(self.up.bias, bias)
        self.up.bias._no_weight_decay = True

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x)).view(*x.shape[:2], *self.shape)


class MemoryLayer(nn.Module):
    """A memory of `spec` per head. x: [B, T, D] -> y: [B, T, D].

    Gates (each the activation of its Gate record, spec/registry.py, of a low-rank projection of x; initial values
    in parentheses; a gate a new choice registers needs no change here):
      lr        = lr_max * sigmoid(.)                  (lr_max * sigmoid(-2): a small first step)
      log_alpha = logsigmoid(.)                        (logsigmoid(5): retention ~ 0.993)
                  RetNet (constant decay): log(1 - 2^(-5 - h)) per head, not data-dependent
      beta      = beta_max * sigmoid(.)                (momentum ~ 0.6)
      delta     = softplus(.) + 1e-3                   (Huber threshold ~ 1 per residual coordinate)

    ttt_base_lr: TTT's inner step (arXiv 2407.04620 section 2.7 and its code), eta = ttt_base_lr * sigmoid(.) / head_dim
      on TTT's half loss 1/2 ||f(k) - v||^2 with its unnormalized keys (||k||^2 ~ head_dim). The keys here are
      L2-normalized, so the step that moves the memory as TTT's does is eta = ttt_base_lr * sigmoid(.): lr_max =
      ttt_base_lr / 2 on this library's L2 = ||r||^2 (docs/design-space.md, with the measurement), the gate's bias
      at 0 (sigmoid = 1/2) as in TTT's code. None: the lr_max rule above.
    token_offsets: with GD(token_weights=True) (the TTT presets), TTT's learned offsets [chunk_size] of the token
    weights 1/i (zeros at init, no weight decay).
    persistent_tokens: N_p learnable tokens [N_p, d_model] (init N(0, 1), the scale of the normalized tokens the
    layer reads) prepended to every sequence: a call without a state starts from the state after them.
    Delta(steps=n_h) (Gated DeltaProduct): k, v (each key L2-normalized) and lr are projected n_h times per token and
    the op runs on the T n_h sub-steps (`substeps`): the decay at each token's first sub-step, q at its last, whose
    outputs are the layer's.
    Polynomial features (memory.features="poly", ATLAS): the normalized q and k are lifted by `poly_features` with the
    layer's learnable coefficients `poly_scale` c [degree + 1] (kernel coefficients a_i = c_i^2, 1 / i! at init, no
    weight decay), so the op's keys and W0 have feature_dim(memory, head_dim) entries.
    compile: run the memory op through torch.compile in fixed-length segments (`memory_op(compile=True)`: the same
    result; opt-in, docs/training.md "Compiled ops"); an attribute, so it can be switched on a built model.
    """

    def __init__(self, spec: MirasSpec, d_model: int, heads: int, head_dim: int | None = None, gate_rank: int = 32,
                 conv_kernel: int = 4, lr_max: float | None = None, beta_max: float = 0.999, mode: str = "auto",
                 checkpoint_chunks: int = 0, persistent_tokens: int = 0, ttt_base_lr: float | None = None,
                 compile: bool = False):
        super().__init__()
        require(heads >= 1, "heads", heads, ">= 1")
        require(isinstance(persistent_tokens, int) and persistent_tokens >= 0, "persistent_tokens",
                persistent_tokens, "an integer >= 0")
        require(head_dim is not None or d_model % heads == 0, "heads", heads,
                f"a divisor of d_model={d_model} (or pass head_dim)", "pick heads so that d_model % heads == 0")
        require(gate_rank >= 1, "gate_rank", gate_rank, ">= 1", "the papers use 32-64")
        self.spec, self.heads, self.mode, self.checkpoint_chunks = spec, heads, mode, checkpoint_chunks
        self.compile = compile                # memory_op(compile=...): the op through torch.compile (ops/compiled.py)
        self.head_dim = hd = head_dim or d_model // heads
        inner = heads * hd
        require(ttt_base_lr is None or (ttt_base_lr > 0 and lr_max is None), "ttt_base_lr", ttt_base_lr,
                "None or a number > 0 (with lr_max None)", "set one of lr_max and ttt_base_lr")
        self.ttt_base_lr = ttt_base_lr
        if ttt_base_lr is not None:
            lr_max = ttt_base_lr / 2
        self.lr_max = lr_max if lr_max is not None else (1.0 if spec.memory.is_matrix else 0.1)
        self.beta_max = beta_max
        self.steps = getattr(spec.algorithm, "steps", 1)           # DeltaProduct: n_h keys, values, lr per token
        width = {"q": inner, "k": inner * self.steps, "v": inner * self.steps}
        self.proj = nn.ModuleDict({n: nn.Linear(d_model, width[n], bias=False) for n in "qkv"})
        self.conv = nn.ModuleDict({n: ShortConv(width[n], conv_kernel) for n in "qkv"})
        init = {n: GATES[n].init for n in spec.gates}
        if ttt_base_lr is not None:
            init["lr"] = 0.0                                     # sigmoid(0) = 1/2, as in TTT's code
        data_dependent = getattr(spec.retention, "data_dependent", True)
        steps = {n: self.steps if n in spec.algorithm.gates else 1 for n in spec.gates}
        self.gates = nn.ModuleDict({n: LowRankGate(d_model, heads * steps[n], gate_rank,
                                                   hd if spec.per_channel(n) else 1, init[n])
                                    for n in spec.gates if n != "log_alpha" or data_dependent})
        if "log_alpha" in spec.gates and not data_dependent:
            self.register_buffer("const_log_alpha", torch.log1p(-torch.pow(2.0, -5.0 - torch.arange(heads).float())))
        self.key_dim = feature_dim(spec.memory, hd)                 # the op's key size (hd without features)
        self.poly_scale = (nn.Parameter(poly_scale_init(spec.memory.degree))
                           if getattr(spec.memory, "features", "identity") == "poly" else None)
        if self.poly_scale is not None:
            self.poly_scale._no_weight_decay = True
        self.W0 = nn.ParameterDict({n: nn.Parameter(w)
                                    for n, w in spec.memory.init_state(heads, self.key_dim, hd).items()})
        for w in self.W0.values():
            w._no_weight_decay = True
        self.out_norm = nn.RMSNorm(hd, eps=1e-6)
        self.out_gate = nn.Linear(d_model, inner, bias=False)
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.persistent = nn.Parameter(torch.randn(persistent_tokens, d_model)) if persistent_tokens else None
        # TTT's learnable_token_idx: offsets of the token weights 1/i (GD(token_weights=True)), zeros at init
        self.token_offsets = (nn.Parameter(torch.zeros(spec.chunk_size))
                              if getattr(spec.algorithm, "token_weights", False) else None)
        if self.token_offsets is not None:
            self.token_offsets._no_weight_decay = True

    def gate_values(self, x: Tensor) -> dict[str, Tensor]:
        """The bounded gates of x [B, T, D] (each Gate record's activation of a low-rank projection), each
        [B, T, H] ([B, T, H, d] per channel), fp32; lr and beta scaled by lr_max and beta_max. With n_h = steps > 1
        (DeltaProduct) on the sub-step sequence, [B, T n_h, H]: the algorithm's gates one per sub-step, the
        retention's at each token's first sub-step (0 at the others: no decay)."""
        out = {n: GATES[n].activation(g(x).float()) for n, g in self.gates.items()}
        if "log_alpha" in self.spec.gates and "log_alpha" not in out:
            out["log_alpha"] = self.const_log_alpha.expand(*x.shape[:2], self.heads)
        scale = {"lr": self.lr_max, "beta": self.beta_max}
        out = {n: out[n] * scale[n] if n in scale else out[n] for n in self.spec.gates}
        if self.steps == 1:
            return out
        return {n: substeps(g.view(*x.shape[:2], self.steps, self.heads), self.steps)
                if n in self.spec.algorithm.gates else substeps(g, self.steps, at=0) for n, g in out.items()}

    def initial_state(self, batch: int) -> MemoryState:
        W0 = {n: w.float() for n, w in self.W0.items()}
        return initial_state(self.spec, batch, W0)

    def persistent_state(self, batch: int, like: Tensor) -> MemoryLayerState:
        """The state after the persistent tokens (computed with batch 1, expanded to `batch` rows)."""
        _, state = self._run(self.persistent.to(like.dtype).unsqueeze(0), None)

        def rows(group: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if group is None else {n: t.expand(batch, *t.shape[1:]) for n, t in group.items()}
        m = state.memory
        return MemoryLayerState(replace(m, A=rows(m.A), S=rows(m.S), anchor=rows(m.anchor), start=rows(m.start),
                                        window=rows(m.window), prior=rows(m.prior)),
                                rows(state.conv))

    def forward(self, x: Tensor, state: MemoryLayerState | None = None) -> tuple[Tensor, MemoryLayerState]:
        if state is None and self.persistent is not None:
            state = self.persistent_state(x.shape[0], x)
        return self._run(x, state)

    def _run(self, x: Tensor, state: MemoryLayerState | None) -> tuple[Tensor, MemoryLayerState]:
        B, T, _ = x.shape
        conv_state = state.conv if state is not None else {}
        feats, new_conv = {}, {}
        for n in "qkv":
            feats[n], new_conv[n] = self.conv[n](self.proj[n](x), conv_state.get(n))
        n = self.steps                                       # DeltaProduct: the op runs on T n sub-steps
        q = F.normalize(feats["q"].view(B, T, self.heads, self.head_dim), dim=-1)
        k, v = (feats[c].view(B, T, n, self.heads, self.head_dim) for c in "kv")
        q, k, v = substeps(q, n, at=-1), substeps(F.normalize(k, dim=-1), n), substeps(v, n)
        if self.poly_scale is not None:                      # ATLAS's polynomial features of the unit q, k
            q, k = poly_features(q, self.poly_scale), poly_features(k, self.poly_scale)
        mem = state.memory if state is not None else self.initial_state(B)
        y, mem = memory_op(self.spec, q, k, v, self.gate_values(x), mem, self.mode, self.checkpoint_chunks,
                           token_offsets=self.token_offsets, compile=self.compile)
        y = y[:, n - 1::n] if n > 1 else y                  # read after each token's last sub-step
        y = self.out_norm(y.to(x.dtype)).reshape(B, T, self.heads * y.shape[-1]) * F.silu(self.out_gate(x))
        return self.out_proj(y), MemoryLayerState(mem, new_conv)

    def extra_repr(self) -> str:
        extra = f", persistent_tokens={self.persistent.shape[0]}" if self.persistent is not None else ""
        return f"spec={self.spec}, heads={self.heads}, head_dim={self.head_dim}, lr_max={self.lr_max:g}{extra}"
