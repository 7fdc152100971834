"""Exact chunk-parallel linear attention with decay (SSD, simple GLA, GLA), flash-linear-attention conventions.

Per batch row and head, with state S: [K, V] (S = W^T of the reference) and per token t:

    S_t = exp(g_t) S_{t-1} + k_t v_t^T      (g_t scalar, or per key channel: exp(g_t) scales the K rows of S)
    o_t = scale * S_t^T q_t

Per chunk of C tokens: the intra-chunk quadratic form, the chunk states, a loop over chunks passing the
state, and the state-to-output term, every decay exp of a non-positive log-space sum (masked to -inf above the
diagonal before exp). A per-head decay (or none) runs `scalar.py` (in-chunk cumulative sums, a hand-written
backward); a per-channel decay runs here with segsum and autograd. `ssd` is Mamba-2's discretised form mapped
onto `chunk_gla`. Derivation: docs/ops/ssd.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import require
from ..amp import without_autocast
from ..chunks import to_chunks
from ..segsum import segsum
from ..state import check_tensors
from .scalar import chunk_simple_gla


@without_autocast
def chunk_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, scale: float | None = None,
              initial_state: Tensor | None = None, output_final_state: bool = False,
              chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g: log decay (<= 0), [B, T, H] (one per head: SSD / simple GLA) or
    [B, T, H, K] (per key channel: GLA), None: no decay; scale: default K ** -0.5; initial_state: [B, H, K, V]
    (None: zeros).

    Returns o [B, T, H, V] in q's dtype and, with output_final_state, the final state [B, H, K, V] in the
    compute dtype (float32, or float64 for float64 inputs); else None.
    """
    B, T, H, K = k.shape
    _check(q, k, v, g, initial_state, chunk_size)
    in_dtype = q.dtype
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.promote_types(v.dtype, torch.float32))
    scale = K ** -0.5 if scale is None else scale
    S = k.new_zeros(B, H, K, v.shape[-1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    if g is None or g.dim() == 3:
        o, S = chunk_simple_gla(q, k, v, g, scale, S, chunk_size, dtype)
        return o.to(in_dtype), (S if output_final_state else None)
    q, k, v, g = (to_chunks(x.to(dtype), chunk_size) for x in (q, k, v, g))
    q = q * scale
    decay = _decays(g)                                              # [B, H, N, K, C + 1, C + 1]
    from_start = decay[..., 1:, 0].transpose(-1, -2)                # [B, H, N, C, K]: chunk start -> t
    to_end = decay[..., -1, 1:].transpose(-1, -2)                   # [B, H, N, C, K]: s -> chunk end
    chunk_states = (k * to_end).transpose(-1, -2) @ v               # [B, H, N, K, V]: each chunk's own writes
    entering, S = _pass_states(chunk_states, decay[..., -1, :1], S)
    o = (q * from_start) @ entering + _scores(q, k, decay[..., 1:, 1:]) @ v
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2).to(in_dtype)
    return o, (S if output_final_state else None)


def ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int = 64, D: Tensor | None = None,
        initial_states: Tensor | None = None, return_final_states: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-2's SSD: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t, per head.

    x: [b, l, h, p]; dt: [b, l, h] (> 0, softplus already applied); A: [h] (< 0); B, C: [b, l, g, n] with
    g dividing h (head i reads group i // (h // g)); D: [h] or [h, p] (None: no skip); initial_states:
    [b, h, p, n] (None: zeros). Returns y [b, l, h, p] in x's dtype, or (y, final state [b, h, p, n] in the
    compute dtype) with return_final_states.

    Runs chunk_gla with q = C, k = B, v = dt x, g = dt A, scale = 1; its state is h^T ([n, p]).
    """
    _check_ssd(x, dt, A, B, C, D, initial_states)
    dtype = torch.promote_types(x.dtype, torch.float32)
    heads_per_group = x.shape[2] // B.shape[2]
    q, k = (M.to(dtype).repeat_interleave(heads_per_group, dim=2) for M in (C, B))
    dt = dt.to(dtype)
    S0 = None if initial_states is None else initial_states.transpose(-1, -2)
    y, S = chunk_gla(q, k, x.to(dtype) * dt[..., None], dt * A.to(dtype), scale=1.0, initial_state=S0,
                     output_final_state=return_final_states, chunk_size=chunk_size)
    if D is not None:
        y = y + x.to(dtype) * (D.to(dtype)[:, None] if D.dim() == 1 else D.to(dtype))
    y = y.to(x.dtype)
    return (y, S.transpose(-1, -2)) if return_final_states else y


def _decays(g: Tensor) -> Tensor:
    """g: [B, H, N, C, K] -> [B, H, N, K, C + 1, C + 1], entry [t, s] the per-channel decay exp(g_{s+1} + ... + g_t)
    from token s to token t (index 0: the chunk start), 0 for s > t."""
    return segsum(F.pad(g.transpose(-1, -2), (1, 0))).exp()


def _scores(q: Tensor, k: Tensor, decay: Tensor) -> Tensor:
    """q, k: [B, H, N, C, K]; decay [B, H, N, K, C, C] -> sum_c q_tc k_sc decay_c[t, s]: [B, H, N, C, C]."""
    return torch.einsum("bhntc,bhnsc,bhncts->bhnts", q, k, decay)


def _pass_states(chunk_states: Tensor, chunk_decay: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """chunk_states: [B, H, N, K, V]; chunk_decay: [B, H, N, K, 1]; S: [B, H, K, V] the initial state.
    The loop over chunks, S <- chunk_decay S + chunk_state: returns the states entering every chunk
    [B, H, N, K, V] and the last state."""
    states = [S]
    # unbind once: indexing chunk n inside the loop would cost a full-size zero gradient per chunk in backward
    for decay_n, state_n in zip(chunk_decay.unbind(2), chunk_states.unbind(2)):
        S = decay_n * S + state_n
        states.append(S)
    return torch.stack(states, dim=2)[:, :, :-1], S


def _check(q, k, v, g, initial_state, chunk_size):
    check_tensors({"q": q, "k": k, "v": v, "g": g, "initial_state": initial_state})
    require(q.dim() == 4 and q.shape == k.shape, "q/k shape", (tuple(q.shape), tuple(k.shape)), "equal [B, T, H, K]")
    require(v.dim() == 4 and v.shape[:3] == k.shape[:3], "v shape", tuple(v.shape),
            f"[B, T, H, V], B, T, H = {tuple(k.shape[:3])}")
    require(g is None or tuple(g.shape) in (tuple(k.shape[:3]), tuple(k.shape)), "g.shape",
            None if g is None else tuple(g.shape), f"{tuple(k.shape[:3])} (per head) or {tuple(k.shape)} (per channel)")
    want = (k.shape[0], k.shape[2], k.shape[3], v.shape[3])
    require(initial_state is None or tuple(initial_state.shape) == want, "initial_state.shape",
            None if initial_state is None else tuple(initial_state.shape), f"{want} = [B, H, K, V]")
    require(chunk_size >= 1, "chunk_size", chunk_size, ">= 1")


def _check_ssd(x, dt, A, B, C, D, initial_states):
    check_tensors({"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "initial_states": initial_states})
    require(x.dim() == 4, "x.shape", tuple(x.shape), "[b, l, h, p]")
    b, l, h, p = x.shape
    require(tuple(dt.shape) == (b, l, h), "dt.shape", tuple(dt.shape), f"{(b, l, h)}")
    require(tuple(A.shape) == (h,), "A.shape", tuple(A.shape), f"{(h,)}")
    require(B.dim() == 4 and B.shape == C.shape and tuple(B.shape[:2]) == (b, l), "B/C shape",
            (tuple(B.shape), tuple(C.shape)), f"equal [{b}, {l}, g, n]")
    require(h % B.shape[2] == 0, "ngroups", B.shape[2], f"a divisor of nheads = {h}")
    require(D is None or tuple(D.shape) in ((h,), (h, p)), "D.shape", None if D is None else tuple(D.shape),
            f"{(h,)} or {(h, p)}")
    want = (b, h, p, B.shape[3])
    require(initial_states is None or tuple(initial_states.shape) == want, "initial_states.shape",
            None if initial_states is None else tuple(initial_states.shape), f"{want} = [b, h, p, n]")
