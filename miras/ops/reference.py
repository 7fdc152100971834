"""The token-by-token recurrence of the MIRAS design space: THE spec every fast path must equal.

Per head (docs/design-space.md), with A_s the accumulator at the start of t's chunk:

    g_t = grad_W l(M_W(k_t), v_t) at W = anchor   (anchor = boundary(A_s))
    S_t = beta_t S_{t-1} - eta_t g_t              (S_t = -eta_t g_t without momentum)
    A_t = alpha_t A_{t-1} + S_t                   (toward="init": alpha_t (A_{t-1} - W0) + W0 + S_t, W0 = state.prior)
    Muon (ATLAS): S_t = beta_t S_{t-1} - g_t, A_t = alpha_t A_{t-1} + eta_t NS_k(S_t) (NS per weight matrix and head)
    W_t = boundary(A_t) at a chunk's last token, frame(A_s)(A_t) inside it (linear in A_t; the
          identity for decays; boundary(A_t) at every token with retention.boundary_at="every-token")
    TTT's token weights (GD(token_weights=True)): W_t = A_s + tau_i (A_t - A_s) at the chunk's i-th token,
          and A = W_t at its last; LaCT's chunk-start reads (GD(reads="chunk-start")): tau_i = 0 (every token reads
          W_s) and A = project(W_s + U(A_t - W_s)) at the chunk's last token (U: Muon's Newton-Schulz with
          muon=True; project: RowNorm's, with that retention) (state.close_chunk)
    y_t = M_{W_t}(q_t)
    The Omega bias (window c): g_t = grad_W sum_{i=t-c+1..t} gamma_i ||M_W(k_i) - v_i||^2 at W = anchor, the c - 1
          tokens before the call from state.window

Exact delta rule: W_t = alpha_t W_{t-1} (I - eta_t k_t k_t^T) + eta_t v_t k_t^T, y_t = W_t q_t; with a per-channel
log_alpha [B, T, H, d_k] (KDA) alpha_t W_{t-1} is W_{t-1} Diag(alpha_t) (the decay scales W's key columns).
Attention: y_t = softmax(q_t K_{<=t}^T / sqrt(d_k)) V_{<=t}.
Short and slow on purpose: a Python loop over tokens, float64-capable, differentiable throughout. One token of the
online-GD loop is `online_gd_token` (decoding's one-token step, ops/step.py, runs the same function).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..space import MirasSpec
from ..space import algorithm as algorithms
from ..space.retention import uses_frame
from .state import (MemoryState, carries_start, check_inputs, check_token_offsets, close_chunk, empty_window,
                    initial_state, open_chunk_start, state_prior, window_size)


def recurrent_reference(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None,
                        state: MemoryState | None = None, token_offsets: Tensor | None = None
                        ) -> tuple[Tensor, MemoryState]:
    """q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; gates: name -> [B, T, H] (see spec.gates).

    state: the MemoryState to start from (None: zeros, matrix memories and attention only).
    token_offsets: TTT's learned offsets o [chunk_size] of the token weights (GD(token_weights=True); None: zeros).
    Returns y [B, T, H, d_v] (in q's dtype; computed in at least float32) and the final state.
    """
    gates = gates or {}
    check_inputs(spec, q, k, v, gates)
    check_token_offsets(spec, token_offsets)
    B, T, H, d_k = k.shape
    if state is None:
        state = initial_state(spec, B, heads=H, d_k=d_k, d_v=v.shape[-1], dtype=q.dtype, device=q.device)
    in_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    gates = {n: g.to(dtype) for n, g in gates.items()}
    if isinstance(spec.algorithm, algorithms.NonParametric):
        y, state = _attention(q, k, v, state)
    elif isinstance(spec.algorithm, algorithms.Delta):
        y, state = _delta_rule(spec, q, k, v, gates, state)
    else:
        y, state = _online_gd(spec, q, k, v, gates, state, token_offsets)
    return y.to(in_dtype), state


def _online_gd(spec, q, k, v, gates, state, token_offsets=None):
    run = OnlineGD.open(spec, state, k, v)
    ys = [online_gd_token(spec, run, *(x[:, t].unsqueeze(2) for x in (q, k, v)),     # [B, H, 1, d]
                          {n: g[:, t] for n, g in gates.items()}, token_offsets) for t in range(k.shape[1])]
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(v.shape)
    return y, run.close(spec)


@dataclass
class OnlineGD:
    """The online-GD recurrence between two tokens, in the compute dtype: the accumulator A, the momentum S, the
    open chunk's anchor, offset and start accumulator (MemoryState's), its in-chunk read maps `frame` (framed
    retentions: retention.frame(start, anchor)), the Omega bias' window and the prior a decay toward W0 pulls A to."""

    A: dict[str, Tensor]
    S: dict[str, Tensor] | None
    anchor: dict[str, Tensor] | None
    offset: int
    start: dict[str, Tensor] | None
    frame: dict | None
    window: dict[str, Tensor] | None
    prior: dict[str, Tensor] | None = None

    @staticmethod
    def open(spec: MirasSpec, state: MemoryState, k: Tensor, v: Tensor) -> "OnlineGD":
        """The recurrence at `state` (which a previous call may have left inside a chunk) for a call with inputs k
        [B, T, H, d_k], v [B, T, H, d_v] in the compute dtype (the state's tensors are cast to it)."""
        dtype = k.dtype
        A = {n: a.to(dtype) for n, a in state.A.items()}
        S = None if state.S is None else {n: s.to(dtype) for n, s in state.S.items()}
        start = open_chunk_start(spec, state, dtype)
        frame = spec.retention.frame(start, state.anchor) if uses_frame(spec.retention) and state.offset else None
        window = None
        if window_size(spec) > 0:                                        # the Omega bias: c - 1 earlier tokens
            B, _, H, d_k = k.shape
            window = state.window or empty_window(spec, B, H, d_k, v.shape[-1], dtype, k.device)
            window = {n: w.to(dtype) for n, w in window.items()}
        return OnlineGD(A, S, state.anchor, state.offset, start, frame, window, state_prior(spec, state, dtype))

    def close(self, spec: MirasSpec) -> MemoryState:
        """The MemoryState after the last token (the anchor, and the start where the spec reads one, only inside a
        chunk)."""
        inside = self.offset != 0
        return MemoryState(self.A, self.S, self.anchor if inside else None, self.offset,
                           self.start if inside and carries_start(spec) else None, self.window, self.prior)


def online_gd_token(spec: MirasSpec, run: OnlineGD, q_t: Tensor, k_t: Tensor, v_t: Tensor, gates_t: dict[str, Tensor],
                    token_offsets: Tensor | None = None) -> Tensor:
    """One token of the online-GD recurrence (the module docstring's equations): q_t, k_t [B, H, 1, d_k],
    v_t [B, H, 1, d_v], gates_t: name -> the token's gate [B, H] ([B, H, d] per channel). Moves `run` to after the
    token and returns y_t [B, H, d_v]."""
    memory, bias, retention = spec.memory, spec.bias, spec.retention
    framed, weighted = uses_frame(retention), getattr(spec.algorithm, "weighted", False)  # (TTT, LaCT: weighted)
    A, S = run.A, run.S
    if run.offset == 0:                                                  # a chunk starts: anchor = boundary(A_s)
        run.anchor = retention.boundary(A)
        if framed or weighted:
            run.start = A
        if framed:
            run.frame = retention.frame(A, run.anchor)
    own = {n: gates_t[n].unsqueeze(2) for n in bias.gates}                # the bias' gates, [B, H, 1(, d_v)]
    if run.window is not None:                                           # the loss of the last c tokens, t's last
        now = {"k": k_t, "v": v_t, "gamma": own["gamma"]}
        keys, values, gamma = (torch.cat([run.window[n], now[n]], dim=2) for n in ("k", "v", "gamma"))  # [B, H, c(, d)]
        run.window = {"k": keys[:, :, 1:], "v": values[:, :, 1:], "gamma": gamma[:, :, 1:]}
        k_t, v_t, own = keys, values, {"gamma": gamma}
    muon = isinstance(spec.algorithm, algorithms.Muon)                   # (Muon has no channel-wise eta)
    lr = gates_t["lr"]
    eta = lr.unsqueeze(2) if spec.per_channel("lr") else lr[:, :, None, None]     # [B, H, 1, d_v or 1]

    def dpred(pred):                # dl/dpred times -eta_t (channel-wise eta: per output channel), Muon's unscaled
        d = bias.grad(pred, v_t, own)
        return d if muon else -eta * d
    # sum over the loss' tokens of outer(delta, input) = delta^T input (memory.backward_factors' rank-1 factors):
    # u = J^T (-eta_t dl/dpred) = -eta_t g_t (Muon: g_t)
    u = {n: d.transpose(-1, -2) @ a for n, (d, a) in memory.backward_factors(run.anchor, k_t, dpred).items()}
    if S is None:
        step = u
    elif muon:                                                           # ATLAS: eta_t NS_k(beta_t S_{t-1} - g_t)
        S = {n: gates_t["beta"][:, :, None, None] * S[n] - u[n] for n in A}
        step = {n: eta * x for n, x in spec.algorithm.orthogonalize(S).items()}
    else:                                                                # beta_t S_{t-1} - eta_t g_t
        beta = gates_t["beta"][:, :, None, None]
        S = step = {n: beta * S[n] + u[n] for n in A}
    if "log_alpha" in gates_t:
        la = gates_t["log_alpha"]
        alpha = torch.exp(la)[:, :, None, :] if la.dim() == 3 else torch.exp(la)[:, :, None, None]
        P = run.prior
        A = {n: alpha * A[n] + step[n] if P is None else alpha * (A[n] - P[n]) + P[n] + step[n] for n in A}
    else:
        A = {n: A[n] + step[n] for n in A}
    if weighted:
        tau = spec.algorithm.read_weights(token_offsets, run.offset, 1, q_t.dtype, q_t.device)
    run.offset = (run.offset + 1) % spec.chunk_size
    if weighted:
        W = {n: run.start[n] + tau * (A[n] - run.start[n]) for n in A}
        if not run.offset:
            A = close_chunk(spec, run.start, A, spec.algorithm.end_weight(token_offsets, spec.chunk_size, q_t.dtype,
                                                                          q_t.device))
    else:
        W = {n: run.frame[n](A[n]) for n in A} if framed and run.offset else retention.boundary(A)
    run.A, run.S = A, S
    return memory(W, q_t).squeeze(2)


def _delta_rule(spec, q, k, v, gates, state):
    W = state.A["W1"].to(q.dtype)                                         # [B, H, d_v, d_k]
    ys = []
    for t in range(k.shape[1]):
        if "log_alpha" in gates:
            la = gates["log_alpha"][:, t]
            W = W * (torch.exp(la)[:, :, None, :] if la.dim() == 3 else torch.exp(la)[:, :, None, None])
        k_t, v_t = k[:, t], v[:, t]                                        # [B, H, d]
        err = torch.einsum("bhvk,bhk->bhv", W, k_t) - v_t
        W = W - gates["lr"][:, t, :, None, None] * torch.einsum("bhv,bhk->bhvk", err, k_t)
        ys.append(torch.einsum("bhvk,bhk->bhv", W, q[:, t]))
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(v.shape)
    return y, MemoryState({"W1": W})


def _attention(q, k, v, state):
    keys = torch.cat([state.A["k"].to(q.dtype), k.transpose(1, 2)], dim=2)     # [B, H, n + T, d_k]
    values = torch.cat([state.A["v"].to(q.dtype), v.transpose(1, 2)], dim=2)
    n, T = state.A["k"].shape[2], q.shape[1]
    scores = torch.einsum("bthd,bhsd->bhts", q, keys) / math.sqrt(q.shape[-1])
    causal = torch.ones(T, n + T, dtype=torch.bool, device=q.device).tril(diagonal=n)
    scores = scores.masked_fill(~causal, float("-inf"))
    y = torch.einsum("bhts,bhsd->bthd", torch.softmax(scores, dim=-1), values)
    return y, MemoryState({"k": keys, "v": values})
