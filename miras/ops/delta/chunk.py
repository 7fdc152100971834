"""The exact chunk-parallel (gated) delta rule: the WY / UT representation, flash-linear-attention conventions.

Per batch row and head, with state S: [K, V] (S = W^T of the reference) and per token t:

    S <- exp(g_t) S;   S <- S + beta_t k_t (v_t - S^T k_t)^T;   o_t = scale * S^T q_t

Inside a chunk every correction d_t = beta_t (v_t - S^T k_t) solves one unit-lower-triangular system,
d = u - w S0 with u = T (beta v), w = T (beta exp(gamma) k), T = (I + A)^{-1} (gamma: the in-chunk cumsum
of g); only the state passing between chunks is sequential. Derivation: docs/ops/delta.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...spec.errors import require
from ..chunks import to_chunks


def chunk_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, beta: Tensor | None = None,
                           scale: float | None = None, initial_state: Tensor | None = None,
                           output_final_state: bool = False, chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g: log decay [B, T, H] (<= 0; None: no decay, DeltaNet);
    beta: [B, T, H] (None: ones); scale: default K ** -0.5; initial_state: [B, H, K, V] (None: zeros).

    Returns o [B, T, H, V] in q's dtype and, with output_final_state, the final state [B, H, K, V]
    in the compute dtype (float32, or float64 for float64 inputs); else None.
    """
    B, T, H, K = k.shape
    _check(q, k, v, g, beta, initial_state, chunk_size)
    in_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    scale = K ** -0.5 if scale is None else scale
    g = k.new_zeros(B, T, H, dtype=dtype) if g is None else g
    beta = k.new_ones(B, T, H, dtype=dtype) if beta is None else beta
    S = k.new_zeros(B, H, K, v.shape[-1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    q, k, v, g, beta = (to_chunks(x.to(dtype), chunk_size) for x in (q, k, v, g, beta))
    gamma = g.cumsum(-1)                                    # [B, H, N, C]: log decay since the chunk start
    w, u = _wy_representation(k, v, beta, gamma)
    o, S = _state_passing(q * scale, k, w, u, gamma, S)
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2).to(in_dtype)
    return o, (S if output_final_state else None)


def _check(q, k, v, g, beta, initial_state, chunk_size):
    require(q.dim() == 4 and q.shape == k.shape, "q/k shape", (tuple(q.shape), tuple(k.shape)), "equal [B, T, H, K]")
    require(v.dim() == 4 and v.shape[:3] == k.shape[:3], "v shape", tuple(v.shape), f"[B, T, H, V], B, T, H = "
            f"{tuple(k.shape[:3])}")
    for name, x in (("g", g), ("beta", beta)):
        require(x is None or x.shape == k.shape[:3], f"{name}.shape", None if x is None else tuple(x.shape),
                f"{tuple(k.shape[:3])}")
    want = (k.shape[0], k.shape[2], k.shape[3], v.shape[3])
    require(initial_state is None or tuple(initial_state.shape) == want, "initial_state.shape",
            None if initial_state is None else tuple(initial_state.shape), f"{want} = [B, H, K, V]")
    require(chunk_size >= 1, "chunk_size", chunk_size, ">= 1")


def _decay_mask(gamma: Tensor, diagonal: int) -> Tensor:
    """exp(gamma_i - gamma_j) for j <= i - diagonal, else 0: [B, H, N, C, C]; masked before exp."""
    C = gamma.shape[-1]
    keep = torch.ones(C, C, dtype=torch.bool, device=gamma.device).tril(-diagonal)
    return (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~keep, float("-inf")).exp()


def _wy_representation(k: Tensor, v: Tensor, beta: Tensor, gamma: Tensor) -> tuple[Tensor, Tensor]:
    """w = T (beta exp(gamma) k): [B, H, N, C, K], u = T (beta v): [B, H, N, C, V] for every chunk at once,
    T = (I + A)^{-1}, A_ij = beta_i k_i . k_j exp(gamma_i - gamma_j) for j < i (one batched triangular solve)."""
    A = beta[..., None] * (k @ k.transpose(-1, -2)) * _decay_mask(gamma, diagonal=1)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    Tm = torch.linalg.solve_triangular(A + eye, eye.expand_as(A), upper=False, unitriangular=True)
    w = Tm @ ((beta * gamma.exp())[..., None] * k)
    u = Tm @ (beta[..., None] * v)
    return w, u


def _state_passing(q: Tensor, k: Tensor, w: Tensor, u: Tensor, gamma: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """The loop over chunks: d = u - w S (the corrections), o = (q k^T * decay) d + exp(gamma) q S,
    S <- exp(gamma_last) S + (exp(gamma_last - gamma) k)^T d. Returns o [B, H, N, C, V] and the last S."""
    attn = (q @ k.transpose(-1, -2)) * _decay_mask(gamma, diagonal=0)            # [B, H, N, C, C]
    q_decayed = gamma.exp()[..., None] * q
    k_to_end = (gamma[..., -1:] - gamma).exp()[..., None] * k
    chunk_decay = gamma[..., -1].exp()[..., None, None]                          # [B, H, N, 1, 1]
    outs = []
    # unbind once: indexing chunk n inside the loop would cost a full-size zero gradient per chunk in backward
    for u_n, w_n, qd_n, attn_n, decay_n, k_n in zip(*(t.unbind(2) for t in (u, w, q_decayed, attn, chunk_decay,
                                                                            k_to_end))):
        d = u_n - w_n @ S
        outs.append(qd_n @ S + attn_n @ d)
        S = decay_n * S + k_n.transpose(-1, -2) @ d
    o = torch.stack(outs, dim=2) if outs else u.new_zeros(u.shape)
    return o, S
