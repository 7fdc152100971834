"""The generic mini-batch engine: any GD / momentum / Muon spec, chunk-parallel, equal to the recurrence.

Derivation: docs/ops/minibatch.md. Per chunk of n tokens, with A_0, S_0 the state at its start and
g_r = outer(d_r, a_r) the closed-form inner gradients at the chunk's anchor memory (one batched
inner forward + backward for the whole chunk), the recurrence unrolls to

    A_t = decay_t A_0 + m_t S_0 - sum_{r <= t} C[t, r] outer(d_r, a_r)
    S_t = sdecay_t S_0 - sum_{r <= t} Cs[t, r] outer(d_r, a_r)

with decay_t, m_t, C, sdecay_t, Cs built from log-space segment sums of the gates
(`coefficients`). Reads y_t = M_{W_t}(q_t) use the dual form (every product W_t h becomes masked
[n, n] matmuls; per-token weights are never formed): W_t = A_t for an identity boundary, and for
Moneta, Memora and the elastic net W_t = anchor + scale * (A_t - A_s) C inside a chunk (the
retention's `frame`: a scalar times the dual-form product, plus two [n, d] x [d, out] products),
with the chunk's last token read at boundary(A_t), the next anchor. TTT's token weights read through the same
frame with a per-token scale: W_t = A_s + tau_t (A_t - A_s); LaCT's chunk-start reads are that frame with tau = 0
(W_t = A_s: no dual-form product), and both close a chunk with `state.close_chunk`. The Omega bias (window c)
steps on the gradients of the last c tokens: the factors cover the chunk and the c - 1 tokens before it, and C
becomes C @ band (`_windowed`). Only boundary_at="every-token" forms the chunk's per-token weights, and Muon its
per-token momenta: S_t of every token from the same unrolled form, U_t = NewtonSchulz(S_t), and reads of
A_t = decay_t A_0 + sum_{r <= t} Da[t, r] eta_r U_r through the products U_r h_t (`_muon_states`, `_muon_linear`;
docs/ops/minibatch.md section 8). The only Python loop is over chunks, and it carries only the state: the
coefficients of all full chunks are computed in one batched call before it, and the reads run after it for groups
of chunks at once (the chunks folded into the head axis; Muon's read in the loop).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ...space import MirasSpec
from ...space.algorithm import Muon
from ...space.retention import InChunkMap, uses_frame
from ..segsum import segprod, segsum
from . import linear_ln, mlp2
from ..state import (MemoryState, check_inputs, check_token_offsets, close_chunk, empty_window, open_chunk_start,
                     state_prior, window_size)

READ_GROUP_BYTES = 16 * 2 ** 20  # chunk-start states stacked for one batched read (kept for backward)
# Muon: momenta per checkpointed piece of a chunk (backward recomputes them and NS). Large pieces: tensors above
# glibc's mmap threshold (at most 32 MiB) go back to the system when freed, smaller ones stay in a heap that
# fragments. One training step of the atlas compare model (batch 16, one thread): 256 MiB pieces 81 s, peak RSS
# 3.7 GB; 32 MiB pieces 61 s (fewer page faults), 6.4 GB; 4 MiB pieces about 3x the RSS of 32 MiB.
NS_PIECE_BYTES = 256 * 2 ** 20
FUSED = (linear_ln, mlp2)      # memory families with a hand-written backward: applies(spec), full_chunks(...)


@dataclass
class Coefficients:
    """Unrolled-recurrence coefficients of a chunk, each [B, H, n] or [B, H, n, n] (lr folded in)."""

    decay: Tensor            # prod of alpha from the chunk start to t
    C: Tensor                # [t, r]: weight of g_r in A_t (momentum and decay composed), times lr_r
    m: Tensor | None         # weight of S_0 in A_t
    sdecay: Tensor | None    # weight of S_0 in S_t
    Cs: Tensor | None        # [t, r]: weight of g_r in S_t, times lr_r


def coefficients(lr: Tensor, log_alpha: Tensor | None, beta: Tensor | None) -> Coefficients:
    """lr, log_alpha, beta: [B, H, n] -> the chunk's Coefficients (see module docstring)."""
    zeros = torch.zeros_like(lr[..., :1])
    la = torch.zeros_like(lr) if log_alpha is None else log_alpha
    seg_a = segsum(torch.cat([zeros, la], dim=-1)).exp()                   # [.., n+1, n+1], index 0 = start
    decay, Da = seg_a[..., 1:, 0], seg_a[..., 1:, 1:]
    if beta is None:
        return Coefficients(decay, Da * lr.unsqueeze(-2), None, None, None)
    seg_b = segprod(torch.cat([torch.ones_like(zeros), beta], dim=-1))      # beta = 0 allowed: products, no log
    sdecay, Db = seg_b[..., 1:, 0], seg_b[..., 1:, 1:]
    return Coefficients(decay, (Da @ Db) * lr.unsqueeze(-2), (Da @ sdecay.unsqueeze(-1)).squeeze(-1),
                        sdecay, Db * lr.unsqueeze(-2))


def muon_coefficients(lr: Tensor, log_alpha: Tensor | None, beta: Tensor) -> Coefficients:
    """Muon's chunk coefficients, lr, log_alpha, beta [B, H, n]: the momentum's with a unit step (sdecay, Cs = Db:
    S_t = sdecay_t S_0 - sum_r Cs[t, r] g_r) and the accumulator's over the orthogonalized momenta (decay, C = Da eta:
    A_t = decay_t A_0 + sum_r C[t, r] NS(S_r)); m = None (S_0 reaches A only through NS)."""
    decayed = coefficients(lr, log_alpha, None)
    momentum = coefficients(torch.ones_like(lr), None, beta)
    return Coefficients(decayed.decay, decayed.C, None, momentum.sdecay, momentum.Cs)


def _windowed(co: Coefficients, c1: int) -> Coefficients:
    """The Omega bias with c - 1 = c1: the step of token r sums the gradients of tokens r - c1 .. r, whose factors
    are the chunk's c1 + n columns (the c1 tokens before it first), so C [t, r] -> C @ band with band [r, j] = 1 for
    r <= j <= r + c1 ([n, c1 + n]); the same for Cs."""
    n = co.C.shape[-1]
    j, r = torch.arange(c1 + n, device=co.C.device), torch.arange(n, device=co.C.device)[:, None]
    band = ((j >= r) & (j <= r + c1)).to(co.C.dtype)
    if co.m is None and co.Cs is not None:          # Muon: the window sums gradients into S; A sums NS(S_r) per token
        return replace(co, Cs=co.Cs @ band)
    return replace(co, C=co.C @ band, Cs=None if co.Cs is None else co.Cs @ band)


def _with_window(x: Tensor, before: Tensor, sizes: list[int]) -> tuple[tuple[Tensor, ...], Tensor]:
    """x [B, H, T, ...] after the c1 entries `before` [B, H, c1, ...] -> (per chunk of `sizes`, its entries after
    the c1 before it, [B, H, c1 + n, ...]; the last c1 entries, the next window). One gather and one split, so the
    backward is one scatter and one concatenation."""
    c1, full = before.shape[2], torch.cat([before.to(x.dtype), x], dim=2)
    starts = [0, *itertools.accumulate(sizes)][:-1]
    index = [torch.arange(s, s + c1 + n, device=x.device) for s, n in zip(starts, sizes)]
    parts = full.index_select(2, torch.cat(index)).split([c1 + n for n in sizes], dim=2) if sizes else ()
    return parts, full[:, :, full.shape[2] - c1:]


def _state_at(row: int, co: Coefficients, A0, S0, factors) -> tuple[dict, dict | None]:
    """A and S after token `row` of the chunk."""
    A, S = {}, None if S0 is None else {}
    for name, (d, a) in factors.items():
        start = co.decay[..., row, None, None] * A0[name]
        if S0 is not None:
            start = torch.addcmul(start, co.m[..., row, None, None], S0[name])
            S[name] = _minus_outer_sum(co.sdecay[..., row, None, None] * S0[name], co.Cs[..., row, :], d, a)
        A[name] = _minus_outer_sum(start, co.C[..., row, :], d, a)
    return A, S


def _minus_outer_sum(X: Tensor, c: Tensor, d: Tensor, a: Tensor) -> Tensor:
    """X - sum_r c_r outer(d_r, a_r): X [B, H, o, i], c [B, H, n], d [B, H, n, o], a [B, H, n, i]; one fused
    matmul-add, so a weight-sized tensor is written once (and its backward reads it once)."""
    dc = (d * c.unsqueeze(-1)).flatten(0, 1).transpose(1, 2)                      # [B H, o, n]
    return torch.baddbmm(X.flatten(0, 1), dc, a.flatten(0, 1), alpha=-1).view_as(X)


def _dual_linear(co: Coefficients, A0, S0, factors):
    """W_t h_t for every token t of the chunk, from the unrolled state, without forming W_t."""
    def linear(name: str, h: Tensor) -> Tensor:
        d, a = factors[name]
        z = co.decay.unsqueeze(-1) * (h @ A0[name].transpose(-1, -2))
        if S0 is not None:
            z = torch.addcmul(z, co.m.unsqueeze(-1), h @ S0[name].transpose(-1, -2))
        return z - (co.C * (h @ a.transpose(-1, -2))) @ d
    return linear


def _token_linear(spec: MirasSpec, co: Coefficients, A0, S0, factors, prior=None):
    """W_t h_t with W_t = boundary(A_t) formed for every token of the chunk (non-identity boundaries); with a prior,
    A0 is the chunk start's A - prior and the prior is added back to every A_t."""
    A_t = {}
    for name, (d, a) in factors.items():
        A_t[name] = co.decay[..., None, None] * A0[name].unsqueeze(2) - torch.einsum("bhtr,bhro,bhri->bhtoi", co.C, d, a)
        if S0 is not None:
            A_t[name] = A_t[name] + co.m[..., None, None] * S0[name].unsqueeze(2)
        if prior is not None:
            A_t[name] = A_t[name] + prior[name].unsqueeze(2)
    W_t = spec.retention.boundary(A_t)
    return lambda name, h: torch.einsum("bhtoi,bhti->bhto", W_t[name], h)


def _muon_states(spec: MirasSpec, co: Coefficients, A0, S0, factors) -> tuple[dict, dict, dict]:
    """Muon in a chunk: the momentum of every token from its unrolled form (linear in the anchor gradients:
    S_t = sdecay_t S_0 - sum_{r <= t} Cs[t, r] d_r a_r^T), U_t = NS_k(S_t) [B, H, n, out, in] (batched over the
    chunk's tokens), the chunk's last momentum and accumulator A = decay A_0 + sum_r C[n - 1, r] U_r.
    -> (U, S_end, A_end).

    Under autograd the tokens go in pieces of at most NS_PIECE_BYTES of momenta, each checkpointed: backward
    recomputes a piece's S_t and Newton-Schulz from the factors instead of keeping S_t and NS's intermediates (every
    step's X, Gram matrix and polynomial: about 8 times S_t), so a chunk keeps only U. The recomputation repeats the
    same operations, so values and gradients are those of the plain computation."""
    def orthogonalized(name, sdecay, s0, cs, d, a):
        S_t = sdecay[..., None, None] * s0.unsqueeze(2) - torch.einsum("bhtr,bhro,bhri->bhtoi", cs, d, a)
        return spec.algorithm.orthogonalize({name: S_t})[name]

    n = co.Cs.shape[-2]
    U, S_end, A_end = {}, {}, {}
    for name, (d, a) in factors.items():
        S_end[name] = _minus_outer_sum(co.sdecay[..., n - 1, None, None] * S0[name], co.Cs[..., n - 1, :], d, a)
        args = (co.sdecay, S0[name], co.Cs, d, a)
        if torch.is_grad_enabled() and any(x.requires_grad for x in args):
            per = max(1, NS_PIECE_BYTES // max(S0[name].numel() * S0[name].element_size(), 1))
            U[name] = torch.cat([checkpoint(orthogonalized, name, co.sdecay[..., t:t + per], S0[name],
                                            co.Cs[..., t:t + per, :], d, a, use_reentrant=False)
                                 for t in range(0, n, per)], dim=2)
        else:
            U[name] = orthogonalized(name, *args)
        A_end[name] = co.decay[..., n - 1, None, None] * A0[name] + torch.einsum("bhr,bhroi->bhoi", co.C[..., n - 1, :],
                                                                                 U[name])
    return U, S_end, A_end


def _muon_linear(co: Coefficients, A0, U):
    """A_t h_t for every token t of the chunk, A_t = decay_t A_0 + sum_{r <= t} C[t, r] U_r, without forming A_t: the
    products U_r h_t of every pair of the chunk's tokens ([B, H, n, n, out]; C masks r > t)."""
    def linear(name: str, h: Tensor) -> Tensor:
        z = co.decay.unsqueeze(-1) * (h @ A0[name].transpose(-1, -2))
        return z + torch.einsum("bhtr,bhtro->bhto", co.C, torch.einsum("bhroi,bhti->bhtro", U[name], h))
    return linear


def _muon_token_linear(spec: MirasSpec, co: Coefficients, A0, U):
    """W_t h_t with W_t = boundary(A_t) formed for every token (Muon with boundary_at="every-token")."""
    W_t = spec.retention.boundary({name: co.decay[..., None, None] * A0[name].unsqueeze(2)
                                   + torch.einsum("bhtr,bhroi->bhtoi", co.C, u) for name, u in U.items()})
    return lambda name, h: torch.einsum("bhtoi,bhti->bhto", W_t[name], h)


def _stack(ts: list[Tensor]) -> Tensor:
    """G tensors [B, H, ...] -> [B, H * G, ...]: the chunks of a read group as extra heads."""
    return torch.stack(ts, dim=2).flatten(1, 2)


def _with_prior(linear, prior):
    """A_t h = (A_t - P) h + P h: the dual form runs on the accumulator's offset from the prior P (a decay toward W0
    is a plain decay of A - P). h: [B, H G, n, in], the G chunks of a read group folded into the heads (`_stack`:
    head-major), all reading the same P [B, H, out, in]: one product over the group's G n tokens."""
    def shifted(name: str, h: Tensor) -> Tensor:
        z = linear(name, h)
        p = prior[name]
        B, H = p.shape[:2]
        return z + (h.reshape(B, H, -1, h.shape[-1]) @ p.transpose(-1, -2)).view_as(z)
    return shifted


def _framed_linear(linear, frame):
    """W_t h with W_t = anchor + scale * (A_t - start) C (a retention's in-chunk map, `InChunkMap`): the dual form
    on C h, minus start (C h), scaled, plus anchor h."""
    def framed(name: str, h: Tensor) -> Tensor:
        f = frame[name]
        if f.anchor is not None and isinstance(f.scale, float) and f.scale == 0.0:     # W_t = anchor (LaCT)
            return h @ f.anchor.transpose(-1, -2)
        hc = f.input(h)
        z = linear(name, hc)
        if f.start is not None:
            z = z - hc @ f.start.transpose(-1, -2)
        z = f.scale * z
        return z if f.anchor is None else torch.baddbmm(z.flatten(0, 1), h.flatten(0, 1),
                                                         f.anchor.flatten(0, 1).transpose(-1, -2)).view_as(z)
    return framed


def _read_group(spec: MirasSpec, reads: list[tuple]) -> Tensor:
    """The outputs of G chunks of equal length, each (q, Coefficients, A, S, factors, frame, last, prior) at its
    start, by one dual-form read with the chunks folded into the head axis: -> [B, H, G * n, d_v]. A: the chunk
    start's accumulator, or its offset A - prior from the prior (a decay toward W0; else prior is None). frame: the
    retention's in-chunk maps (None for an identity boundary); last: the read of a chunk's last token with the
    boundary-mapped weights, replacing the in-chunk read there (None for chunks that stay open). When every
    frame's start is its chunk's A_0 (chunks that begin at a boundary), (A_t - A_s) h folds into the dual form's
    first term: (decay_t - 1) A_0 h."""
    q, co, A, S, factors, frames, lasts, priors = zip(*reads)
    fold = frames[0] is not None and all(f[n].start is a[n] for f, a in zip(frames, A) for n in a)
    co = Coefficients(**{f: None if getattr(co[0], f) is None else _stack([getattr(c, f) for c in co])
                         for f in vars(co[0])})
    if fold:
        co = replace(co, decay=co.decay - 1.0)
    A = {name: _stack([a[name] for a in A]) for name in A[0]}
    S = None if S[0] is None else {name: _stack([s[name] for s in S]) for name in S[0]}
    factors = {name: (_stack([f[name][0] for f in factors]), _stack([f[name][1] for f in factors]))
               for name in factors[0]}
    linear = _dual_linear(co, A, S, factors)
    if priors[0] is not None:                                                 # (one prior per call)
        linear = _with_prior(linear, priors[0])
    if frames[0] is not None:
        def stacked(values):
            return _stack(list(values)) if isinstance(values[0], Tensor) else values[0]
        frame = {name: InChunkMap(*(None if getattr(frames[0][name], field) is None or (fold and field == "start")
                                    else stacked([getattr(f[name], field) for f in frames])
                                    for field in ("anchor", "start", "scale")), frames[0][name].center)
                 for name in frames[0]}
        linear = _framed_linear(linear, frame)
    y = spec.memory.run(_stack(list(q)), linear)[0]                             # [B, H * G, n, d_v]
    y = y.unflatten(1, (-1, len(reads)))                                        # [B, H, G, n, d_v]
    if all(last is None for last in lasts):
        return y.flatten(2, 3)
    return torch.cat([y_g if last is None else torch.cat([y_g[:, :, :-1], last], dim=2)
                      for y_g, last in zip(y.unbind(2), lasts)], dim=2)


def _chunks(spec, chunks, A, S, anchor, start, prior=None):
    """Runs consecutive chunks, each (q, k, v, gates, Coefficients, tokens already in the chunk, weights) with
    [B, H, n, ...] tensors; weights: (read weights, end weight) of GD's weighted reads (TTT, LaCT), else None.
    Only the state passing is sequential: the reads of up to READ_GROUP_BYTES of chunk-start states are done together
    after it (`_read_group`), except with a boundary mapped at every
    token (per-token weights, `_token_linear`). anchor: the open chunk's anchor (or the next chunk's, when
    already known); start: the open chunk's start accumulator (retentions read through `frame`); prior: the W0 a
    decay toward the initial state pulls A to (the decay then runs on A - prior, `_with_prior`), else None."""
    memory, bias, retention = spec.memory, spec.bias, spec.retention
    framed, muon = uses_frame(retention), isinstance(spec.algorithm, Muon)
    state_bytes = sum(a.numel() * a.element_size() for a in A.values()) * (1 if S is None else 2)
    group = max(1, READ_GROUP_BYTES // max(state_bytes, 1))
    ys, reads, frame = [], [], None
    for q, k, v, gates, co, before, weights in chunks:
        n = q.shape[2]
        if weights is not None:             # weighted reads (TTT, LaCT): W_t = A_s + tau_t (A_t - A_s), A_s = W_s
            start = A if before == 0 else start
            tau, end = weights
            tau = tau.view(1, 1, n, 1).expand(*q.shape[:2], n, 1) if isinstance(tau, Tensor) else tau
            frame = {name: InChunkMap(start[name], start[name], tau) for name in A}
        if framed:
            if before == 0:
                start = A
                if anchor is None:
                    anchor, frame = retention.boundary_frame(A)
            if frame is None:
                frame = retention.frame(start, anchor)
        elif before == 0 and anchor is None:
            anchor = retention.boundary(A)
        own = {n: gates[n] for n in bias.gates}
        if spec.per_channel("lr"):          # channel-wise eta: in the error signal (the coefficients' lr is 1)
            factors = memory.backward_factors(anchor, k, lambda pred: gates["lr"] * bias.grad(pred, v, own))
        else:
            factors = memory.backward_factors(anchor, k, lambda pred: bias.grad(pred, v, own))
        A_rel = A if prior is None else {name: A[name] - prior[name] for name in A}
        if muon:
            U, S_end, A_end = _muon_states(spec, co, A, S, factors)
        else:
            A_end, S_end = _state_at(n - 1, co, A_rel, S, factors)
            A_end = A_end if prior is None else {name: A_end[name] + prior[name] for name in A_end}
        closes = before + n == spec.chunk_size
        if weights is not None and closes:
            A_end = close_chunk(spec, start, A_end, end)
        next_anchor, next_frame = retention.boundary_frame(A_end) if framed and closes else (None, None)
        if muon:        # reads through NS(S_r) of every token r; a closing chunk's last token at the next anchor
            if retention.identity_boundary or framed:
                linear = _muon_linear(co, A, U)
                linear = _framed_linear(linear, frame) if framed else linear
            else:
                linear = _muon_token_linear(spec, co, A, U)
            y = memory.run(q, linear)[0]
            ys.append(y if next_anchor is None else torch.cat([y[:, :, :-1], memory(next_anchor, q[:, :, n - 1:])], 2))
        elif retention.identity_boundary or framed:     # (token weights: identity boundary, read through `frame`)
            if reads and (len(reads) == group or reads[0][0].shape[2] != n):
                ys.append(_read_group(spec, reads))
                reads = []
            last = None if next_anchor is None else memory(next_anchor, q[:, :, n - 1:])
            reads.append((q, co, A_rel, S, factors, frame, last, prior))
        else:
            ys.append(memory.run(q, _token_linear(spec, co, A_rel, S, factors, prior))[0])
        A, S = A_end, S_end
        if closes:
            anchor, frame, start = next_anchor, next_frame, None
    if reads:
        ys.append(_read_group(spec, reads))
    return torch.cat(ys, dim=2), A, S, anchor, start


def _all_coefficients(gate_parts: dict[str, tuple[Tensor, ...]], sizes: list[int], b: int, build=coefficients
                      ) -> list[Coefficients]:
    """Every chunk's Coefficients (from `build`: coefficients, or muon_coefficients); the full chunks (n = b) in one
    batched call over a chunk axis."""
    def of(parts):
        return build(parts["lr"], parts.get("log_alpha"), parts.get("beta"))
    full = [i for i, n in enumerate(sizes) if n == b]
    out = {}
    if full:
        batched = of({name: torch.stack([g[i] for i in full], dim=2) for name, g in gate_parts.items()})
        fields = {f: (None if t is None else t.unbind(2)) for f, t in vars(batched).items()}
        out = {i: Coefficients(**{f: None if t is None else t[j] for f, t in fields.items()}) for j, i in enumerate(full)}
    return [out[i] if i in out else of({name: g[i] for name, g in gate_parts.items()}) for i in range(len(sizes))]


def chunk_minibatch(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor],
                    state: MemoryState, checkpoint_chunks: int = 0, token_offsets: Tensor | None = None
                    ) -> tuple[Tensor, MemoryState]:
    """The chunked form of `recurrent_reference` for GD / momentum / Muon specs (same arguments and result).

    q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; gates: name -> [B, T, H]; state: MemoryState.
    checkpoint_chunks: if > 0, recompute groups of that many chunks in backward instead of keeping
    their intermediates (activation memory O(T / group) states instead of O(T)).
    token_offsets: TTT's learned token-weight offsets [chunk_size] (GD(token_weights=True); None: zeros).
    The specs of a memory family with a hand-written op (`FUSED`: TTT-Linear; the deep memory of Titans, Moneta, Yaad
    and Memora) run their full chunks in it, the tokens that finish an open chunk and those after the last full chunk
    here. An op marked TRAINING_ONLY (its forward keeps what its backward needs, and is slower than this engine's
    without autograd) runs only when a gradient is needed.
    """
    check_inputs(spec, q, k, v, gates)
    check_token_offsets(spec, token_offsets)
    leaves = (q, k, v, *gates.values(), *state.tensors().values(), *([] if token_offsets is None else [token_offsets]))
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in leaves)
    fused = next((f for f in FUSED if f.applies(spec) and (grads or not f.TRAINING_ONLY)), None)
    T, b = q.shape[1], spec.chunk_size
    head = min(T, (b - state.offset) % b)                  # the tokens that finish an open chunk
    end = head + (T - head) // b * b                       # the end of the last full chunk
    if fused is None or end == head:
        return _chunk_generic(spec, q, k, v, gates, state, checkpoint_chunks, token_offsets)
    ys = []
    for lo, hi, run in ((0, head, None), (head, end, fused.full_chunks), (end, T, None)):
        if hi > lo:
            part = (x[:, lo:hi] for x in (q, k, v))
            y, state = (run(spec, *part, {n: g[:, lo:hi] for n, g in gates.items()}, state, token_offsets) if run
                        else _chunk_generic(spec, *part, {n: g[:, lo:hi] for n, g in gates.items()}, state,
                                            checkpoint_chunks, token_offsets))
            ys.append(y)
    return torch.cat(ys, dim=1), state


def _chunk_generic(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: MemoryState,
                   checkpoint_chunks: int = 0, token_offsets: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """chunk_minibatch's dual-form engine for every spec (the checks done)."""
    T, b = q.shape[1], spec.chunk_size
    in_dtype, dtype = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = (x.to(dtype).transpose(1, 2) for x in (q, k, v))                 # [B, H, T, d]
    gates = {n: g.to(dtype).transpose(1, 2) for n, g in gates.items()}      # [B, H, T]
    A = {n: a.to(dtype) for n, a in state.A.items()}
    S = None if state.S is None else {n: s.to(dtype) for n, s in state.S.items()}
    first = min(T, (b - state.offset) % b or b)
    sizes = ([first] + [min(b, T - s) for s in range(first, T, b)]) if T else []
    # split once (backward: one concatenation), never slice chunk by chunk (a full-size gradient per chunk)
    parts = [x.split(sizes, dim=2) for x in (q, k, v)]
    gate_parts = {n: g.split(sizes, dim=2) for n, g in gates.items()}
    scalar_lr = {"lr": tuple(torch.ones_like(g[..., 0]) for g in gate_parts["lr"])} if spec.per_channel("lr") else {}
    muon = isinstance(spec.algorithm, Muon)
    cos = _all_coefficients({**gate_parts, **scalar_lr}, sizes, b, muon_coefficients if muon else coefficients)
    c1, window = window_size(spec), None
    if c1:          # the Omega bias: each chunk's k, v and gamma after the c - 1 tokens before it
        B, H = q.shape[:2]
        before = state.window or empty_window(spec, B, H, k.shape[-1], v.shape[-1], dtype, q.device)
        (k_parts, k_next), (v_parts, v_next), (g_parts, g_next) = (
            _with_window(x, before[n], sizes) for x, n in ((k, "k"), (v, "v"), (gates["gamma"], "gamma")))
        parts, gate_parts["gamma"] = [parts[0], k_parts, v_parts], g_parts
        cos, window = [_windowed(co, c1) for co in cos], {"k": k_next, "v": v_next, "gamma": g_next}
    befores = [state.offset if i == 0 else 0 for i in range(len(sizes))]
    weighted = getattr(spec.algorithm, "weighted", False)           # (read weights [n] or 0.0, end weight)
    weights = [(spec.algorithm.read_weights(token_offsets, before, n, dtype, q.device),
                spec.algorithm.end_weight(token_offsets, b, dtype, q.device)) if weighted else None
               for before, n in zip(befores, sizes)]
    chunks = [(parts[0][i], parts[1][i], parts[2][i], {n: g[i] for n, g in gate_parts.items()}, cos[i],
               befores[i], weights[i]) for i in range(len(sizes))]
    anchor, ys = state.anchor, []
    start, prior = open_chunk_start(spec, state, dtype), state_prior(spec, state, dtype)
    group = checkpoint_chunks if checkpoint_chunks > 0 else max(len(chunks), 1)
    for g0 in range(0, len(chunks), group):
        if checkpoint_chunks > 0 and torch.is_grad_enabled():
            y, A, S, anchor, start = checkpoint(_chunks, spec, chunks[g0:g0 + group], A, S, anchor, start, prior,
                                                use_reentrant=False)
        else:
            y, A, S, anchor, start = _chunks(spec, chunks[g0:g0 + group], A, S, anchor, start, prior)
        ys.append(y)
    y = torch.cat(ys, dim=2).transpose(1, 2) if ys else v.new_zeros(v.shape).transpose(1, 2)
    offset = (state.offset + T) % b
    return y.to(in_dtype), MemoryState(A, S, anchor if offset else None, offset, start if offset else None, window,
                                       prior)
