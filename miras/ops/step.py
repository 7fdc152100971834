"""One decoding step of every memory family: the recurrence's update and read for a single token, without the chunk
machinery (padding, blocks, decay matrices) that a chunked op spends its time on when T = 1.

Per head, W [d_v, d_k] (miras's layout: the read is W q), gates at the token:

    dot-product bias (linear attention, RetNet, Mamba-2's SSD form, GLA):
        W_t = alpha_t W_{t-1} + eta_t v_t k_t^T,                          y_t = W_t q_t
    delta rule (DeltaNet, Gated DeltaNet; KDA: alpha_t per key channel, alpha_t W is W Diag(alpha_t)):
        W' = alpha_t W_{t-1},   W_t = W' - eta_t (W' k_t - v_t) k_t^T,     y_t = W_t q_t
    online GD (the mini-batch engine's specs: Titans, Moneta, Yaad, Memora, TTT's token weights, momentum, Muon,
    the Omega window, LaCT): `reference.online_gd_token`, the recurrence's own per-token body, from the state a
    previous call left (inside a chunk or at its end).

Each is one token of `recurrent_reference` (the same equations, so the same numbers up to rounding; tests/ops/
test_step.py), computed in at least float32 and differentiable. `memory_step` takes T tokens and steps through them
one at a time: dispatch.py calls it for one token's worth of them (T = 1; DeltaProduct's n_h sub-steps).
`ssd_step` is the dot-product step with Mamba-2's arguments (ops/ssd.ssd's, one token), for its layer.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..space import MirasSpec
from .amp import without_autocast
from .reference import OnlineGD, online_gd_token
from .state import MemoryState


def memory_step(op: str, spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor],
                state: MemoryState, token_offsets: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """op: select_op's name for the spec, 'ssd' | 'delta' | 'minibatch' (or 'reference': the online-GD body runs
    any GD / momentum / Muon spec); q, k [B, T, H, d_k],
    v [B, T, H, d_v], gates name -> [B, T, H] (or [B, T, H, d]), state: the MemoryState to continue (checked by
    the caller). Returns (y [B, T, H, d_v] in q's dtype, the state after the T tokens), as `recurrent_reference`."""
    in_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    gates = {n: g.to(dtype) for n, g in gates.items()}
    ys = []
    if op in ("ssd", "delta"):
        token = _dot_token if op == "ssd" else _delta_token
        W = state.A["W1"].to(dtype)                                        # [B, H, d_v, d_k]
        for t in range(k.shape[1]):
            W, y = token(W, q[:, t], k[:, t], v[:, t], {n: g[:, t] for n, g in gates.items()})
            ys.append(y)
        final = MemoryState({"W1": W})
    else:
        run = OnlineGD.open(spec, state, k, v)
        for t in range(k.shape[1]):
            q_t, k_t, v_t = (x[:, t].unsqueeze(2) for x in (q, k, v))          # [B, H, 1, d]
            ys.append(online_gd_token(spec, run, q_t, k_t, v_t, {n: g[:, t] for n, g in gates.items()},
                                      token_offsets))
        final = run.close(spec)
    y = ys[0].unsqueeze(1) if len(ys) == 1 else torch.stack(ys, dim=1) if ys else v.new_zeros(v.shape)
    return y.to(in_dtype), final


def _decay(log_alpha: Tensor) -> Tensor:
    """alpha = exp(log_alpha) shaped to scale W [B, H, d_v, d_k]: a scalar per head [B, H] -> [B, H, 1, 1], per
    key channel [B, H, d_k] -> [B, H, 1, d_k] (W Diag(alpha))."""
    alpha = torch.exp(log_alpha)
    return alpha[:, :, None, :] if alpha.dim() == 3 else alpha[:, :, None, None]


def _dot_token(W: Tensor, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """W [B, H, d_v, d_k]; q, k [B, H, d_k], v [B, H, d_v]; gates at the token. -> (W_t, y_t [B, H, d_v])."""
    write = (gates["lr"].unsqueeze(-1) * v).unsqueeze(-1)                  # eta v [B, H, d_v, 1]
    if "log_alpha" in gates:
        W = (W * _decay(gates["log_alpha"])).addcmul_(write, k.unsqueeze(-2))   # (in place on the new decayed W)
    else:
        W = torch.addcmul(W, write, k.unsqueeze(-2))
    return W, (W @ q.unsqueeze(-1)).squeeze(-1)


def _delta_token(W: Tensor, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """As _dot_token, for the delta rule: the write is eta (v - W' k) k^T at the decayed W'."""
    if "log_alpha" in gates:
        W = W * _decay(gates["log_alpha"])
    err = (W @ k.unsqueeze(-1)).squeeze(-1) - v                            # W' k - v [B, H, d_v]
    W = torch.addcmul(W, (gates["lr"].unsqueeze(-1) * err).unsqueeze(-1), k.unsqueeze(-2), value=-1.0)
    return W, (W @ q.unsqueeze(-1)).squeeze(-1)


@without_autocast
def ssd_step(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
             initial_states: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token of Mamba-2's SSD: `ops.ssd.ssd` with l = 1 and return_final_states (its arguments, shapes and
    returns). Per head h_t = exp(dt A) h_{t-1} + dt x B^T, y = h_t C + D x: the dot-product step with W = h [p, n],
    q = C, k = B, v = x, eta = dt and log alpha = dt A."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    b, _, heads, p = x.shape
    per_group = heads // B.shape[2]
    k, q = (M[:, 0].to(dtype).repeat_interleave(per_group, dim=1) for M in (B, C))       # [b, heads, n]
    xs, dt = x[:, 0].to(dtype), dt[:, 0].to(dtype)                         # [b, heads, p], [b, heads]
    W = (xs.new_zeros(b, heads, p, k.shape[-1]) if initial_states is None else initial_states.to(dtype))
    W, y = _dot_token(W, q, k, xs, {"lr": dt, "log_alpha": dt * A.to(dtype)})
    if D is not None:
        y = y + xs * (D.to(dtype)[:, None] if D.dim() == 1 else D.to(dtype))
    return y.unsqueeze(1).to(x.dtype), W
