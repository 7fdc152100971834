"""The exact chunk-parallel (gated) delta rule: the WY / UT representation, flash-linear-attention conventions.

Per batch row and head, with state S: [K, V] (S = W^T of the reference) and per token t:

    S <- exp(g_t) S;   S <- S + beta_t k_t (v_t - S^T k_t)^T;   o_t = scale * S^T q_t

Inside a chunk every correction d_t = beta_t (v_t - S^T k_t) solves one unit-lower-triangular system,
d = u - w S0 with u = T (beta v), w = T (beta exp(gamma) k), T = (I + A)^{-1} (gamma: the in-chunk cumsum
of g); only the state passing between chunks is sequential. Forward and a hand-written backward in
`fused.py`; derivation in docs/ops/delta.md.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import require
from ..amp import without_autocast
from ..state import check_tensors
from .fused import fused_gated_delta_rule


@without_autocast
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
    dtype = torch.promote_types(q.dtype, torch.float32)
    scale = K ** -0.5 if scale is None else scale
    S = k.new_zeros(B, H, K, v.shape[-1], dtype=dtype) if initial_state is None else initial_state.to(dtype)
    o, S = fused_gated_delta_rule(q, k, v, g, beta, scale, S, chunk_size, dtype)
    return o.to(q.dtype), (S if output_final_state else None)


def _check(q, k, v, g, beta, initial_state, chunk_size):
    check_tensors({"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state})
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
