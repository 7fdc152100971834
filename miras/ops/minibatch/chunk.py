"""The generic mini-batch engine: any GD / momentum spec, chunk-parallel, equal to the recurrence.

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
with the chunk's last token read at boundary(A_t), the next anchor. Only boundary_at="every-token"
forms the chunk's per-token weights. The only Python loop is over chunks, and it carries only the
state: the coefficients of all full chunks are computed in one batched call before it, and the
reads run after it for groups of chunks at once (the chunks folded into the head axis).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ...space import MirasSpec
from ...space.retention import InChunkMap, uses_frame
from ..segsum import segprod, segsum
from ..state import MemoryState, check_inputs, open_chunk_start

READ_GROUP_BYTES = 16 * 2 ** 20  # chunk-start states stacked for one batched read (kept for backward)


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


def _token_linear(spec: MirasSpec, co: Coefficients, A0, S0, factors):
    """W_t h_t with W_t = boundary(A_t) formed for every token of the chunk (non-identity boundaries)."""
    A_t = {}
    for name, (d, a) in factors.items():
        A_t[name] = co.decay[..., None, None] * A0[name].unsqueeze(2) - torch.einsum("bhtr,bhro,bhri->bhtoi", co.C, d, a)
        if S0 is not None:
            A_t[name] = A_t[name] + co.m[..., None, None] * S0[name].unsqueeze(2)
    W_t = spec.retention.boundary(A_t)
    return lambda name, h: torch.einsum("bhtoi,bhti->bhto", W_t[name], h)


def _stack(ts: list[Tensor]) -> Tensor:
    """G tensors [B, H, ...] -> [B, H * G, ...]: the chunks of a read group as extra heads."""
    return torch.stack(ts, dim=2).flatten(1, 2)


def _framed_linear(linear, frame):
    """W_t h with W_t = anchor + scale * (A_t - start) C (a retention's in-chunk map, `InChunkMap`): the dual form
    on C h, minus start (C h), scaled, plus anchor h."""
    def framed(name: str, h: Tensor) -> Tensor:
        f = frame[name]
        hc = f.input(h)
        z = linear(name, hc)
        if f.start is not None:
            z = z - hc @ f.start.transpose(-1, -2)
        z = f.scale * z
        return z if f.anchor is None else torch.baddbmm(z.flatten(0, 1), h.flatten(0, 1),
                                                         f.anchor.flatten(0, 1).transpose(-1, -2)).view_as(z)
    return framed


def _read_group(spec: MirasSpec, reads: list[tuple]) -> Tensor:
    """The outputs of G chunks of equal length, each (q, Coefficients, A, S, factors, frame, last) at its start,
    by one dual-form read with the chunks folded into the head axis: -> [B, H, G * n, d_v]. frame: the
    retention's in-chunk maps (None for an identity boundary); last: the read of a chunk's last token with the
    boundary-mapped weights, replacing the in-chunk read there (None for chunks that stay open). When every
    frame's start is its chunk's A_0 (chunks that begin at a boundary), (A_t - A_s) h folds into the dual form's
    first term: (decay_t - 1) A_0 h."""
    q, co, A, S, factors, frames, lasts = zip(*reads)
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


def _chunks(spec, chunks, A, S, anchor, start):
    """Runs consecutive chunks, each (q, k, v, gates, Coefficients, tokens already in the chunk) with
    [B, H, n, ...] tensors. Only the state passing is sequential: the reads of up to READ_GROUP_BYTES of
    chunk-start states are done together after it (`_read_group`), except with a boundary mapped at every
    token (per-token weights, `_token_linear`). anchor: the open chunk's anchor (or the next chunk's, when
    already known); start: the open chunk's start accumulator (retentions read through `frame`)."""
    memory, bias, retention = spec.memory, spec.bias, spec.retention
    framed = uses_frame(retention)
    state_bytes = sum(a.numel() * a.element_size() for a in A.values()) * (1 if S is None else 2)
    group = max(1, READ_GROUP_BYTES // max(state_bytes, 1))
    ys, reads, frame = [], [], None
    for q, k, v, gates, co, before in chunks:
        n = q.shape[2]
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
        factors = memory.backward_factors(anchor, k, lambda pred: bias.grad(pred, v, own))
        A_end, S_end = _state_at(n - 1, co, A, S, factors)
        closes = before + n == spec.chunk_size
        next_anchor, next_frame = retention.boundary_frame(A_end) if framed and closes else (None, None)
        if retention.identity_boundary or framed:
            if reads and (len(reads) == group or reads[0][0].shape[2] != n):
                ys.append(_read_group(spec, reads))
                reads = []
            last = None if next_anchor is None else memory(next_anchor, q[:, :, n - 1:])
            reads.append((q, co, A, S, factors, frame, last))
        else:
            ys.append(memory.run(q, _token_linear(spec, co, A, S, factors))[0])
        A, S = A_end, S_end
        if closes:
            anchor, frame, start = next_anchor, next_frame, None
    if reads:
        ys.append(_read_group(spec, reads))
    return torch.cat(ys, dim=2), A, S, anchor, start


def _all_coefficients(gate_parts: dict[str, tuple[Tensor, ...]], sizes: list[int], b: int) -> list[Coefficients]:
    """Every chunk's Coefficients; the full chunks (n = b) in one batched call over a chunk axis."""
    def of(parts):
        return coefficients(parts["lr"], parts.get("log_alpha"), parts.get("beta"))
    full = [i for i, n in enumerate(sizes) if n == b]
    out = {}
    if full:
        batched = of({name: torch.stack([g[i] for i in full], dim=2) for name, g in gate_parts.items()})
        fields = {f: (None if t is None else t.unbind(2)) for f, t in vars(batched).items()}
        out = {i: Coefficients(**{f: None if t is None else t[j] for f, t in fields.items()}) for j, i in enumerate(full)}
    return [out[i] if i in out else of({name: g[i] for name, g in gate_parts.items()}) for i in range(len(sizes))]


def chunk_minibatch(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor],
                    state: MemoryState, checkpoint_chunks: int = 0) -> tuple[Tensor, MemoryState]:
    """The chunked form of `recurrent_reference` for GD / momentum specs (same arguments and result).

    q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; gates: name -> [B, T, H]; state: MemoryState.
    checkpoint_chunks: if > 0, recompute groups of that many chunks in backward instead of keeping
    their intermediates (activation memory O(T / group) states instead of O(T)).
    """
    check_inputs(spec, q, k, v, gates)
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
    cos = _all_coefficients(gate_parts, sizes, b)
    chunks = [(parts[0][i], parts[1][i], parts[2][i], {n: g[i] for n, g in gate_parts.items()}, cos[i],
               state.offset if i == 0 else 0) for i in range(len(sizes))]
    anchor, ys = state.anchor, []
    start = open_chunk_start(spec, state, dtype)
    group = checkpoint_chunks if checkpoint_chunks > 0 else max(len(chunks), 1)
    for g0 in range(0, len(chunks), group):
        if checkpoint_chunks > 0 and torch.is_grad_enabled():
            y, A, S, anchor, start = checkpoint(_chunks, spec, chunks[g0:g0 + group], A, S, anchor, start,
                                                use_reentrant=False)
        else:
            y, A, S, anchor, start = _chunks(spec, chunks[g0:g0 + group], A, S, anchor, start)
        ys.append(y)
    y = torch.cat(ys, dim=2).transpose(1, 2) if ys else v.new_zeros(v.shape).transpose(1, 2)
    offset = (state.offset + T) % b
    return y.to(in_dtype), MemoryState(A, S, anchor if offset else None, offset, start if offset else None)
