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
floor: exact zeros, zero gradients. Only S passes between chunks sequentially.

D takes [C, C, K] per chunk (memory_op runs C = 16, dispatch.CHANNEL_CHUNK). It lives only inside `_DecayedGram`,
the pair of decay-weighted Gram matrices G^a_ij = sum_c a_ic D_ijc k_jc (a = k, q; j <= i), which is computed over
blocks of chunks and has a hand-written backward that recomputes D per block: nothing of size [C, C, K] is saved,
so memory and time stay linear in T. With W_ijc = sum_a dG^a_ij a_ic and Z_ijc = W_ijc D_ijc k_jc:

    da_ic = sum_j dG^a_ij D_ijc k_jc  (a = k, q: k in the row role),    dk_jc += sum_i W_ijc D_ijc  (the column role)
    dg_rc = sum_{i >= r} sum_{j < r} Z_ijc        (D_ijc = exp(g_{j+1, c} + ... + g_{i, c}) holds g_r iff j < r <= i)

The rest (the triangular solve, the state loop, [C, C] and [C, K] tensors per chunk) is plain autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import require
from ..amp import without_autocast
from ..blocks import chunk_blocks
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
    gamma = g_.cumsum(2)                                                         # [BH, N, C, K]
    decay_in, decay = gamma.exp(), gamma[:, :, -1].exp().unsqueeze(-1)           # exp(gamma_i), exp(gamma_C) [.., K, 1]
    to_end = F.pad(g_[:, :, 1:], (0, 0, 0, 1)).flip(2).cumsum(2).flip(2).exp()  # exp(sum_{r > j} g_r)
    AP = _DecayedGram.apply(g_, k_, q_)                                          # [BH, N, C, C, 2]
    A, P = AP[..., 0].tril(-1) * b_, AP[..., 1] * scale
    eye = torch.eye(C, dtype=dtype, device=q.device)
    uw = torch.linalg.solve_triangular(eye + A, torch.cat([b_ * v_, b_ * decay_in * k_], -1), upper=False,
                                       unitriangular=True)
    u, w = uw.split([V, K], -1)                                                  # d = u - w S0
    kt = (to_end * k_).transpose(-1, -2)                                         # [BH, N, K, C]
    states, corrections = [S.reshape(B * H, K, V)], []
    # per-chunk slices by unbind: its backward stacks the slices' gradients once, where indexing x[:, n] in the loop
    # would give every chunk a zero-filled gradient of the whole x (quadratic in T)
    for u_n, w_n, decay_n, kt_n in zip(u.unbind(1), w.unbind(1), decay.unbind(1), kt.unbind(1)):
        d = u_n - w_n @ states[-1]
        corrections.append(d)
        states.append(decay_n * states[-1] + kt_n @ d)
    o = P @ torch.stack(corrections, 1) + (decay_in * q_ * scale) @ torch.stack(states[:-1], 1)
    o = o.view(B, H, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(q.dtype), (states[-1].view(B, H, K, V) if output_final_state else None)


class _DecayedGram(torch.autograd.Function):
    """g, k, q [BH, N, C, K] -> [BH, N, C, C, 2]: sum_c D_ijc k_jc (k_ic, q_ic), D = exp(_segsum(g)) (0 for j > i),
    over blocks of chunks (blocks.chunk_blocks); backward recomputes D per block (the module docstring's
    gradients)."""

    @staticmethod
    def forward(ctx, g: Tensor, k: Tensor, q: Tensor) -> Tensor:
        ctx.save_for_backward(g, k, q)
        BH, N, C, _ = g.shape
        out = g.new_empty(BH, N, C, C, 2)
        for b in chunk_blocks(N, BH):
            Mk = _segsum(g[:, b]).exp() * k[:, b].unsqueeze(-3)                 # D_ijc k_jc [BH, n, C, C, K]
            out[:, b] = Mk @ torch.stack([k[:, b], q[:, b]], -1)                 # per row i: [C, K] @ [K, 2]
        return out

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, k, q = ctx.saved_tensors
        BH, N, C, _ = g.shape
        dg, dk, dq = (torch.empty_like(x) for x in (g, k, q))
        above = torch.ones(C, C, dtype=torch.bool, device=g.device).triu(1).unsqueeze(-1)    # i < r
        for b in chunk_blocks(N, BH):
            kb, db = k[:, b], dout[:, b]
            D = _segsum(g[:, b]).exp()                                         # [BH, n, C(i), C(j), K]
            da = (D * kb.unsqueeze(-3)).mT @ db                                # [.., C(i), K, 2]
            dMD = (db @ torch.stack([kb, q[:, b]], -1).mT) * D                 # (dG_ij . a_i)_c D_ijc
            Z = dMD * kb.unsqueeze(-3)
            # Z summed over j < r (an exclusive prefix sum over j), then over i >= r
            Y = F.pad(Z[..., :-1, :].cumsum(-2), (0, 0, 1, 0))
            dg[:, b] = Y.masked_fill(above, 0).sum(-3)
            dk[:, b] = da[..., 0] + dMD.sum(-3)
            dq[:, b] = da[..., 1]
        return dg, dk, dq
