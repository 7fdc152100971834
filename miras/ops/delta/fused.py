"""The chunked (gated) delta rule as one autograd Function with a hand-written backward.

Per (batch row, head) flattened to one batch axis and chunks of C tokens, with gamma the in-chunk cumulative
log decay, L[i, j] = exp(gamma_i - gamma_j) for j <= i (else 0) and S the state entering the chunk:

    A = strictly lower (beta k k^T * L),  T = (I + A)^{-1},  w = T (beta exp(gamma) k),  u = T (beta v)
    d = u - w S                                                   the corrections
    o = (scale q k^T * L) d + scale (exp(gamma) q) S
    S_next = exp(gamma_C) S + (exp(gamma_C - gamma) k)^T d

Only d and S_next loop over chunks; the rest is batched over blocks of chunks (miras/ops/blocks.py). Backward
(docs/ops/delta.md, "Backward") loops back over chunks for the state gradient only. Saved for backward: the
state entering every chunk [N + 1, B * H, K, V], every chunk's T [N, B * H, C, C] (the inversion is the one
step that is not a plain matmul) and d [N, B * H, C, V]; q, k, v are re-read per block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..amp import without_autocast
from ..blocks import chunk_blocks, cumulative_log_decays, decay_matrix, read_chunks, scaled_bmm, write_chunks


def fused_gated_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, beta: Tensor | None, scale: float,
                           initial_state: Tensor, chunk_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g, beta: [B, T, H] (None: zeros, ones); initial_state: [B, H, K, V]
    in `dtype`. Returns o [B, T, H, V] and the final state [B, H, K, V], both in `dtype`."""
    return _FusedGatedDeltaRule.apply(q, k, v, g, beta, initial_state, scale, chunk_size, dtype)


def unit_lower_inverse(A: Tensor, out: Tensor, base: int = 16) -> Tensor:
    """out [M, C, C] = (I + A)^{-1} for the strictly lower part of A [M, C, C], in batched matmuls only.

    Diagonal blocks of `base`: (I + N)^{-1} = (I - N)(I + N^2)(I + N^4)... (N^base = 0); then pairs of blocks
    merge, [[T1, 0], [A21, T2]] -> [[T1, 0], [-T2 A21 T1, T2]], doubling the block until it covers C (padded to
    a power of two with zeros, which leave the top-left C x C block unchanged)."""
    M, C, _ = A.shape
    Cp = 1 << (C - 1).bit_length()
    if Cp > C:
        A = F.pad(A, (0, Cp - C, 0, Cp - C))
    T = out.zero_() if Cp == C else A.new_zeros(A.shape)

    def diagonal_blocks(x: Tensor, s: int) -> Tensor:                  # [M, Cp // s, s, s], a view of x
        return x.view(M, Cp // s, s, Cp // s, s).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)

    s = min(base, Cp)
    N = diagonal_blocks(A, s).tril(-1).view(-1, s, s)                  # (below them A is read as is)
    inv, power = torch.eye(s, dtype=A.dtype, device=A.device) - N, N
    for _ in range((s - 1).bit_length() - 1):
        power = torch.bmm(power, power)
        inv = inv.baddbmm(inv, power)
    diagonal_blocks(T, s).copy_(inv.view(M, -1, s, s))
    while s < Cp:
        Tb, Ab = diagonal_blocks(T, 2 * s), diagonal_blocks(A, 2 * s)
        Tb[..., s:, :s] = -(Tb[..., s:, s:] @ (Ab[..., s:, :s] @ Tb[..., :s, :s]))
        s *= 2
    return out if T is out else out.copy_(T[:, :C, :C])


def _per_chunk(x: Tensor | None, N: int, BH: int, C: int, fill: float, like: Tensor) -> Tensor:
    """A per-token gate [B, T, H] as [N, BH, C] in like's dtype (None: filled with `fill`)."""
    if x is None:
        return like.new_full((N, BH, C), fill)
    return read_chunks(x, slice(0, N), C, like.dtype).view(N, BH, C)


def _per_token(x: Tensor, B: int, H: int, T: int) -> Tensor:
    """The inverse of _per_chunk: [N, BH, C] -> [B, T, H]."""
    return x.permute(1, 0, 2).reshape(B, H, x.shape[0] * x.shape[2])[..., :T].transpose(1, 2)


def _per_step(BH: int, *xs: Tensor) -> list[tuple[Tensor, ...]]:
    """[M, ...] block tensors as one tuple of [BH, ...] views per chunk."""
    return list(zip(*(x.unflatten(0, (-1, BH)).unbind(0) for x in xs)))


class _Block:
    """One block's inputs and what both passes derive from them: [M, C, *] with M = len(b) * BH."""

    def __init__(self, x: tuple[Tensor, ...], gc: Tensor, bt: Tensor, b: slice, C: int, dtype: torch.dtype):
        self.q, self.k, self.v = (read_chunks(t, b, C, dtype) for t in x)
        g, self.beta = gc[b].flatten(0, 1), bt[b].flatten(0, 1).unsqueeze(-1)  # [M, C], [M, C, 1]
        self.L = decay_matrix(g)
        self.decay_in = g.exp().unsqueeze(-1)                                # exp(gamma) [M, C, 1]
        self.to_end = (g[:, -1:] - g).exp_().unsqueeze(-1)                   # exp(gamma_C - gamma)
        self.decay = g[:, -1:].exp().unsqueeze(-1)                           # exp(gamma_C) [M, 1, 1]
        self.beta_in = self.beta * self.decay_in
        self.kk = torch.bmm(self.k, self.k.transpose(1, 2))
        self.kb = self.k * self.beta_in                                      # beta exp(gamma) k
        self.kt = self.k * self.to_end                                       # exp(gamma_C - gamma) k


class _FusedGatedDeltaRule(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, beta, S0, scale, C, dtype):
        B, T, H, K = q.shape
        N, BH, V = -(-T // C), B * H, v.shape[-1]
        # in-chunk cumulative log decays, each floored at log(tiny) (hard resets stay exact: docs/ops/ssd.md)
        gc, floored = cumulative_log_decays(_per_chunk(g, N, BH, C, 0.0, S0))
        bt = _per_chunk(beta, N, BH, C, 1.0, S0)
        o = q.new_empty(B, N * C, H, V, dtype=dtype)
        states = q.new_empty(N + 1, BH, K, V, dtype=dtype)                    # [n]: the state entering chunk n
        states[0] = S0.reshape(BH, K, V)
        inverses = q.new_empty(N, BH, C, C, dtype=dtype)                      # T of every chunk
        corrections = q.new_empty(N, BH, C, V, dtype=dtype)                   # d of every chunk
        for b in chunk_blocks(N, BH):
            x = _Block((q, k, v), gc, bt, b, C, dtype)
            T_, d = inverses[b].flatten(0, 1), corrections[b].flatten(0, 1)
            unit_lower_inverse(x.kk.mul_(x.L).mul_(x.beta), out=T_)            # A = beta k k^T * L, in place
            w, u = torch.bmm(T_, x.kb), torch.bmm(T_, x.v * x.beta)
            for n, (w_, u_, d_, kt_, decay_) in enumerate(_per_step(BH, w, u, d, x.kt.transpose(1, 2), x.decay),
                                                          start=b.start):
                torch.baddbmm(u_, w_, states[n], alpha=-1, out=d_)
                torch.baddbmm(states[n] * decay_, kt_, d_, out=states[n + 1])
            o_ = torch.bmm(scaled_bmm(x.q, x.k.transpose(1, 2), scale).mul_(x.L), d)
            write_chunks(o, b, o_.baddbmm_(x.q * x.decay_in, states[b].flatten(0, 1), alpha=scale))
        ctx.save_for_backward(q, k, v, gc, floored, bt, states, inverses, corrections)
        ctx.meta = (scale, C, dtype, [None if x is None else x.dtype for x in (q, k, v, g, beta, S0)])
        return o[:, :T], states[-1].view(B, H, K, V).clone()

    @staticmethod
    @without_autocast
    def backward(ctx, do, dS):
        q, k, v, gc, floored, bt, states, inverses, corrections = ctx.saved_tensors
        scale, C, dtype, dtypes = ctx.meta
        B, T, H, K = q.shape
        N, BH, V = gc.shape[0], gc.shape[1], v.shape[-1]
        d_states = torch.empty_like(states)                                    # [n]: d(state entering chunk n)
        d_states[-1] = 0 if dS is None else dS.reshape(BH, K, V)
        dq, dk, dv = (x.new_empty(B, N * C, *x.shape[2:], dtype=dtype) for x in (q, k, v))
        dG, dbeta = torch.empty_like(gc), torch.empty_like(bt)                 # dG: d(global cumulative log decay)
        for b in reversed(chunk_blocks(N, BH)):
            x = _Block((q, k, v), gc, bt, b, C, dtype)
            T_, d = inverses[b].flatten(0, 1), corrections[b].flatten(0, 1)
            do_ = read_chunks(do, b, C, dtype)
            do_in = do_ * (x.decay_in * scale)                                  # scale exp(gamma) do
            P = scaled_bmm(x.q, x.k.transpose(1, 2), scale).mul_(x.L)
            # per chunk: lam = d(beta v) = T^T (P^T do + kt dS_next),
            # dS = exp(gamma_C) dS_next + scale (exp(gamma) q)^T do - (beta exp(gamma) k)^T lam
            lam = torch.bmm(T_.transpose(1, 2), torch.bmm(P.transpose(1, 2), do_))
            T_kt = torch.bmm(T_.transpose(1, 2), x.kt)
            read = torch.bmm(x.q.transpose(1, 2), do_in)
            steps = _per_step(BH, lam, T_kt, read, x.kb.transpose(1, 2), x.decay)
            for n, (lam_, T_kt_, read_, kb_, decay_) in reversed(list(enumerate(steps, start=b.start))):
                lam_.baddbmm_(T_kt_, d_states[n + 1])
                torch.baddbmm(torch.addcmul(read_, d_states[n + 1], decay_), kb_, lam_, alpha=-1, out=d_states[n])
            S_in = states[b.start:b.stop].flatten(0, 1)
            dS_out = d_states[b.start + 1:b.stop + 1].flatten(0, 1)
            lam_S = torch.bmm(lam, S_in.transpose(1, 2))                       # d(beta exp(gamma) k) = -lam S^T
            lam_d = torch.bmm(lam, d.transpose(1, 2)).mul_(x.L)                # d(A) = -lam d^T, strictly lower
            lam_d.diagonal(dim1=1, dim2=2).zero_()
            dP = scaled_bmm(do_, d.transpose(1, 2), scale).mul_(x.L)
            dq_ = torch.bmm(do_in, S_in.transpose(1, 2)).baddbmm_(dP, x.k)
            dk_ = torch.bmm(d, dS_out.transpose(1, 2)).mul_(x.to_end).baddbmm_(dP.transpose(1, 2), x.q)
            v_lam = (x.v * lam).sum(-1)
            dbeta[b] = (v_lam - (x.k * lam_S).sum(-1) * x.decay_in.squeeze(-1)
                        - (lam_d * x.kk).sum(-1)).view(-1, BH, C)
            dkk = lam_d.mul_(x.beta)                                           # -d(k k^T)
            dk_.addcmul_(lam_S, x.beta_in, value=-1).baddbmm_(dkk + dkk.transpose(1, 2), x.k, alpha=-1)
            dG[b] = ((x.q * dq_).sum(-1) - v_lam * x.beta.squeeze(-1)).view(-1, BH, C)
            for out, t in zip((dq, dk, dv), (dq_, dk_, lam.mul_(x.beta))):
                write_chunks(out, b, t)
        dg = db = None
        if ctx.needs_input_grad[3]:
            dG = dG.permute(1, 0, 2).flatten(1)                                # [BH, N * C] in time order
            if N:                                                              # (T = 0: no token, no decay)
                dG[:, -1] += (states[-1] * d_states[-1]).sum((-1, -2))         # <S_T, dS_T>
            dg = dG.flip(-1).cumsum(-1).flip(-1).masked_fill_(floored.permute(1, 0, 2).flatten(1), 0)
            dg = dg.view(B, H, N * C)[..., :T].transpose(1, 2).to(dtypes[3])
        if ctx.needs_input_grad[4]:
            db = _per_token(dbeta, B, H, T).to(dtypes[4])
        dq, dk, dv = (x[:, :T].to(dt) for x, dt in zip((dq, dk, dv), dtypes))
        return dq, dk, dv, dg, db, d_states[0].view(B, H, K, V).to(dtypes[5]), None, None, None
