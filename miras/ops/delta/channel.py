"""The exact chunk-parallel delta rule with a per-channel decay (Kimi Delta Attention, arXiv 2510.26692).

Per batch row and head, with state S: [K, V] (S = W^T of the reference) and per token t a log decay g_t in R^K:

    S <- Diag(exp(g_t)) S;   S <- S + beta_t k_t (v_t - S^T k_t)^T;   o_t = scale * S^T q_t

Inside a chunk of C tokens, with gamma_i = sum_{r <= i} g_r per channel, D_ij = exp(gamma_i - gamma_j) in R^K
(j <= i) and S0 the state entering the chunk, the corrections d_i = beta_i (v_i - S_{i-}^T k_i) (S_{i-}: the decayed
state before token i's step) solve one unit-lower-triangular system (the WY / UT form of chunk.py, per channel):

    A_ij = beta_i sum_c k_ic D_ijc k_jc  (j < i),       (I + A) d = beta v - beta (exp(gamma) * k) S0
    o    = P d + scale (exp(gamma) * q) S0,              P_ij = scale sum_c q_ic D_ijc k_jc  (j <= i)
    S'   = Diag(exp(gamma_C)) S0 + (exp(gamma_C - gamma) * k)^T d

Every exponent (gamma_i - gamma_j, gamma_i, gamma_C - gamma_j) is a segment sum of the log decays summed from its
own terms (segsum.py's masked cumsum, channels last), never a difference of two sums and never exp(+gamma): it is
<= 0 and keeps its precision however strong the decays, and a hard reset (g = -1e9, finfo.min, even -inf) needs no
floor: exact zeros, zero gradients. Only S passes between chunks sequentially. Plain autograd (no hand-written
backward); D takes [C, C, K] per chunk, so memory_op runs C = 16 (dispatch.CHANNEL_CHUNK).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import require
from ..amp import without_autocast
from ..state import check_tensors
from .chunk import _check


def _segsum(x: Tensor) -> Tensor:
    """x: [..., n, K] per-channel log decays -> [..., n, n, K], out[t, s] = sum_{s < r <= t} x_r for s <= t, -inf
    above (segsum.py's masked cumsum with the channels last: each entry sums only its own terms)."""
    n = x.shape[-2]
    lower = torch.ones(n, n, dtype=torch.bool, device=x.device).tril().unsqueeze(-1)
    strict = lower & ~torch.eye(n, dtype=torch.bool, device=x.device).unsqueeze(-1)
    out = x.unsqueeze(-2).expand(*x.shape[:-1], n, x.shape[-1]).masked_fill(~strict, 0).cumsum(-3)
    return out.masked_fill(~lower, float("-inf"))


@without_autocast
def chunk_kda(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor | None = None, scale: float | None = None,
              initial_state: Tensor | None = None, output_final_state: bool = False,
              chunk_size: int = 16) -> tuple[Tensor, Tensor | None]:
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g: per-channel log decay [B, T, H, K] (<= 0); beta: [B, T, H] (None:
    ones); scale: default K ** -0.5; initial_state: [B, H, K, V] (None: zeros).

    Returns o [B, T, H, V] in q's dtype and, with output_final_state, the final state [B, H, K, V] in the compute
    dtype (float32, or float64 for float64 inputs); else None.
    """
    _check(q, k, v, None, beta, initial_state, chunk_size)
    check_tensors({"q": q, "g": g})
    require(tuple(g.shape) == tuple(k.shape), "g.shape", tuple(g.shape), f"{tuple(k.shape)} = [B, T, H, K]",
            "one log decay per key channel (a scalar decay per head: chunk_gated_delta_rule)")
    B, T, H, K = k.shape
    V, C = v.shape[-1], chunk_size
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = K ** -0.5 if scale is None else scale
    S = k.new_zeros(B, H, K, V, dtype=dtype) if initial_state is None else initial_state.to(dtype)
    if T == 0:
        return q.new_zeros(B, 0, H, V), (S if output_final_state else None)
    N = -(-T // C)

    def chunks(x: Tensor) -> Tensor:                     # [B, T, H, *d] -> [B * H, N, C, *d], zero-padded
        x = F.pad(x.to(dtype), (0, 0) * (x.dim() - 2) + (0, N * C - T))
        return x.unflatten(1, (N, C)).movedim(3, 1).flatten(0, 1)

    q_, k_, v_ = chunks(q), chunks(k), chunks(v)
    b_ = chunks(beta).unsqueeze(-1) if beta is not None else v_.new_ones(B * H, N, C, 1)
    g_ = chunks(g)                                                               # [BH, N, C, K]
    D = _segsum(g_).exp()                                                        # exp(gamma_i - gamma_j), 0 for j > i
    gamma = g_.cumsum(2)                                                         # [BH, N, C, K]
    decay_in, decay = gamma.exp(), gamma[:, :, -1].exp().unsqueeze(-1)           # exp(gamma_i), exp(gamma_C) [.., K, 1]
    to_end = F.pad(g_[:, :, 1:], (0, 0, 0, 1)).flip(2).cumsum(2).flip(2).exp()  # exp(sum_{r > j} g_r)
    # sum_c D_ijc k_jc {k_ic, q_ic}: one batched mat-vec per row i, [C, K] @ [K, 2]
    AP = (D * k_.unsqueeze(2)) @ torch.stack([k_, q_], -1)                       # [BH, N, C, C, 2]
    A, P = AP[..., 0].tril(-1) * b_, AP[..., 1] * scale
    eye = torch.eye(C, dtype=dtype, device=q.device)
    uw = torch.linalg.solve_triangular(eye + A, torch.cat([b_ * v_, b_ * decay_in * k_], -1), upper=False,
                                       unitriangular=True)
    u, w = uw.split([V, K], -1)                                                  # d = u - w S0
    kt = (to_end * k_).transpose(-1, -2)                                         # [BH, N, K, C]
    states, corrections = [S.reshape(B * H, K, V)], []
    for n in range(N):
        d = u[:, n] - w[:, n] @ states[-1]
        corrections.append(d)
        states.append(decay[:, n] * states[-1] + kt[:, n] @ d)
    o = P @ torch.stack(corrections, 1) + (decay_in * q_ * scale) @ torch.stack(states[:-1], 1)
    o = o.view(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(q.dtype), (states[-1].view(B, H, K, V) if output_final_state else None)
