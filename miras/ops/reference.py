"""The token-by-token recurrence of the MIRAS design space: THE spec every fast path must equal.

Per head (docs/design-space.md), with A_s the accumulator at the start of t's chunk:

    g_t = grad_W l(M_W(k_t), v_t) at W = anchor   (anchor = boundary(A_s))
    S_t = beta_t S_{t-1} - eta_t g_t              (S_t = -eta_t g_t without momentum)
    A_t = alpha_t A_{t-1} + S_t
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
Short and slow on purpose: a Python loop over tokens, float64-capable, differentiable throughout.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..space import MirasSpec
from ..space import algorithm as algorithms
from ..space.retention import uses_frame
from .state import (MemoryState, check_inputs, check_token_offsets, close_chunk, empty_window, initial_state,
                    open_chunk_start, window_size)


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
    memory, bias, retention = spec.memory, spec.bias, spec.retention
    A = {n: a.to(q.dtype) for n, a in state.A.items()}
    S = None if state.S is None else {n: s.to(q.dtype) for n, s in state.S.items()}
    anchor, offset, framed = state.anchor, state.offset, uses_frame(retention)
    weighted = getattr(spec.algorithm, "weighted", False)                # TTT's token weights, LaCT's chunk-start reads
    muon = isinstance(spec.algorithm, algorithms.Muon)
    start = open_chunk_start(spec, state, q.dtype)
    frame = retention.frame(start, anchor) if framed and offset else None
    windowed = window_size(spec) > 0                                     # the Omega bias: c - 1 earlier tokens
    if windowed:
        B, _, H, d_k = k.shape
        window = state.window or empty_window(spec, B, H, d_k, v.shape[-1], q.dtype, q.device)
        window = {n: w.to(q.dtype) for n, w in window.items()}
    ys = []
    for t in range(k.shape[1]):
        if offset == 0:
            anchor = retention.boundary(A)
            if framed or weighted:
                start = A
            if framed:
                frame = retention.frame(A, anchor)
        k_t, v_t, q_t = (x[:, t].unsqueeze(2) for x in (k, v, q))          # [B, H, 1, d]
        own = {n: gates[n][:, t].unsqueeze(2) for n in bias.gates}       # the bias' gates, [B, H, 1(, d_v)]
        if windowed:                                                     # the loss of the last c tokens, t's last
            now = {"k": k_t, "v": v_t, "gamma": own["gamma"]}
            keys, values, gamma = (torch.cat([window[n], now[n]], dim=2) for n in ("k", "v", "gamma"))  # [B, H, c(, d)]
            window = {"k": keys[:, :, 1:], "v": values[:, :, 1:], "gamma": gamma[:, :, 1:]}
            k_t, v_t, own = keys, values, {"gamma": gamma}
        dpred = bias.grad(memory(anchor, k_t), v_t, own)
        if spec.per_channel("lr"):                                       # channel-wise eta: J^T (eta * dl/dpred)
            dpred, eta = gates["lr"][:, t].unsqueeze(2) * dpred, 1.0
        else:
            eta = gates["lr"][:, t, :, None, None]
        g = {n: gt.sum(2) for n, gt in memory.grads(anchor, k_t, dpred).items()}     # (summed over the window)
        if S is None:
            step = {n: -eta * g[n] for n in A}
        elif muon:                                                       # ATLAS: eta_t NS_k(beta_t S_{t-1} - g_t)
            S = {n: gates["beta"][:, t, :, None, None] * S[n] - g[n] for n in A}
            step = {n: eta * u for n, u in spec.algorithm.orthogonalize(S).items()}
        else:
            beta = gates["beta"][:, t, :, None, None]
            S = step = {n: beta * S[n] - eta * g[n] for n in A}
        if "log_alpha" in gates:
            la = gates["log_alpha"][:, t]
            alpha = torch.exp(la)[:, :, None, :] if la.dim() == 3 else torch.exp(la)[:, :, None, None]
            A = {n: alpha * A[n] + step[n] for n in A}
        else:
            A = {n: A[n] + step[n] for n in A}
        if weighted:
            tau = spec.algorithm.read_weights(token_offsets, offset, 1, q.dtype, q.device)
        offset = (offset + 1) % spec.chunk_size
        if weighted:
            W = {n: start[n] + tau * (A[n] - start[n]) for n in A}
            if not offset:
                A = close_chunk(spec, start, A, spec.algorithm.end_weight(token_offsets, spec.chunk_size, q.dtype,
                                                                          q.device))
        else:
            W = {n: frame[n](A[n]) for n in A} if framed and offset else retention.boundary(A)
        ys.append(memory(W, q_t).squeeze(2))
    y = torch.stack(ys, dim=1) if ys else v.new_zeros(v.shape)
    return y, MemoryState(A, S, anchor if offset else None, offset, start if (framed or weighted) and offset else None,
                          window if windowed else None)


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
