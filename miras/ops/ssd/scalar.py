"""chunk_gla for a per-head scalar decay (linear attention, RetNet, Mamba-2) with a hand-written backward.

Same function as the autograd path of `chunk.py`; fewer, larger calls. Per (batch row, head) flattened to one
batch axis and chunks of C tokens, with gc the in-chunk cumulative log decay (every gc <= 0):

    L[t, s]  = exp(gc_t - gc_s) for s <= t, else 0          (never exp of a positive number)
    o        = (scale q k^T * L) v  +  (scale q * exp(gc)) E            E: the state entering the chunk
    S_next   = exp(gc_C) E + (k * exp(gc_C - gc))^T v

Backward (docs/ops/ssd.md, "Backward"): the same matmuls transposed, one reverse loop over chunks for the
state gradient, and the log-decay gradient from the identity dL/dG_t = q_t . dq_t - k_t . dk_t (plus
<S_T, dS_T> at the end) on the global cumulative sum G, reverse-cumsummed into dL/dg.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..amp import without_autocast
from ..blocks import chunk_blocks, cumulative_log_decays, decay_matrix, read_chunks, scaled_bmm, write_chunks


def chunk_simple_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, scale: float, initial_state: Tensor,
                     chunk_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] or None; initial_state: [B, H, K, V] in `dtype`.
    Returns o [B, T, H, V] and the final state [B, H, K, V], both in `dtype`."""
    if g is None:
        g = k.new_zeros(k.shape[:3], dtype=dtype)
    return _ChunkSimpleGLA.apply(q, k, v, g, initial_state, scale, chunk_size, dtype)


class _ChunkSimpleGLA(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, g, S0, scale, C, dtype):
        B, T, H, K = q.shape
        N, BH = -(-T // C), B * H
        # in-chunk cumulative log decays, each floored at log(tiny) (hard resets stay exact: docs/ops/ssd.md)
        gc, floored = cumulative_log_decays(read_chunks(g, slice(0, N), C, dtype).view(N, BH, C))
        o = q.new_empty(B, N * C, H, v.shape[-1], dtype=dtype)
        states = q.new_empty(N + 1, BH, K, v.shape[-1], dtype=dtype)          # [n]: the state entering chunk n
        states[0] = S0.reshape(BH, K, -1)
        chunk_decay = gc[..., -1].exp()[..., None, None]                       # [N, BH, 1, 1]
        for b in chunk_blocks(N, BH):
            q_, k_, v_ = (read_chunks(x, b, C, dtype) for x in (q, k, v))     # [M, C, D], M = len(b) * BH
            g_ = gc[b].flatten(0, 1)                                           # [M, C]
            o_ = torch.bmm(scaled_bmm(q_, k_.transpose(1, 2), scale).mul_(decay_matrix(g_)), v_)
            own = torch.bmm((k_ * (g_[:, -1:] - g_).exp_().unsqueeze(-1)).transpose(1, 2), v_)
            for i, n in enumerate(range(b.start, b.stop)):
                torch.addcmul(own[i * BH:(i + 1) * BH], states[n], chunk_decay[n], out=states[n + 1])
            o_.baddbmm_(q_ * g_.exp().unsqueeze(-1), states[b].flatten(0, 1), alpha=scale)
            write_chunks(o, b, o_)
        ctx.save_for_backward(q, k, v, gc, floored, states)
        ctx.meta = (scale, C, dtype, [x.dtype for x in (q, k, v, g, S0)])
        return o[:, :T], states[-1].view(B, H, K, -1).clone()

    @staticmethod
    @without_autocast
    def backward(ctx, do, dS):
        q, k, v, gc, floored, states = ctx.saved_tensors
        scale, C, dtype, dtypes = ctx.meta
        B, T, H, K = q.shape
        N, BH = gc.shape[:2]
        d_states = torch.empty_like(states)                                    # [n]: d(state entering chunk n)
        d_states[-1] = 0 if dS is None else dS.reshape(BH, K, -1)
        dq, dk, dv = (x.new_empty(B, N * C, *x.shape[2:], dtype=dtype) for x in (q, k, v))
        dG = torch.empty_like(gc)                                              # d(global cumulative log decay)
        chunk_decay = gc[..., -1].exp()[..., None, None]
        for b in reversed(chunk_blocks(N, BH)):
            q_, k_, v_, do_ = (read_chunks(x, b, C, dtype) for x in (q, k, v, do))
            g_ = gc[b].flatten(0, 1)
            decay_in = g_.exp().unsqueeze(-1)                                  # [M, C, 1]
            to_end = (g_[:, -1:] - g_).exp_().unsqueeze(-1)
            # the state gradient: read directly by this block's outputs, and passed back from later chunks
            d_read = scaled_bmm((q_ * decay_in).transpose(1, 2), do_, scale)
            for i, n in reversed(list(enumerate(range(b.start, b.stop)))):
                torch.addcmul(d_read[i * BH:(i + 1) * BH], d_states[n + 1], chunk_decay[n], out=d_states[n])
            d_own = d_states[b.start + 1:b.stop + 1].flatten(0, 1)           # d(each chunk's own writes)
            L = decay_matrix(g_)
            dA = scaled_bmm(do_, v_.transpose(1, 2), scale).mul_(L)           # d(q k^T)
            A = scaled_bmm(q_, k_.transpose(1, 2), scale).mul_(L)
            dq_ = torch.bmm(do_, states[b].flatten(0, 1).transpose(1, 2)).mul_(decay_in.mul(scale)).baddbmm_(dA, k_)
            dk_ = torch.bmm(v_, d_own.transpose(1, 2)).mul_(to_end).baddbmm_(dA.transpose(1, 2), q_)
            dv_ = torch.bmm(k_ * to_end, d_own).baddbmm_(A.transpose(1, 2), do_)
            dG[b] = ((q_ * dq_).sum(-1) - (k_ * dk_).sum(-1)).view(-1, BH, C)
            for out, x in zip((dq, dk, dv), (dq_, dk_, dv_)):
                write_chunks(out, b, x)
        dg = None
        if ctx.needs_input_grad[3]:
            dG = dG.permute(1, 0, 2).flatten(1)                                # [BH, N * C] in time order
            if N:                                                              # (T = 0: no token, no decay)
                dG[:, -1] += (states[-1] * d_states[-1]).sum((-1, -2))         # <S_T, dS_T>
            dg = dG.flip(-1).cumsum(-1).flip(-1).masked_fill_(floored.permute(1, 0, 2).flatten(1), 0)
            dg = dg.view(B, H, N * C)[..., :T].transpose(1, 2).to(dtypes[3])
        dq, dk, dv = (x[:, :T].to(dt) for x, dt in zip((dq, dk, dv), dtypes))
        return dq, dk, dv, dg, d_states[0].view(B, H, K, -1).to(dtypes[4]), None, None, None
