"""TTT-Linear's memory with a hand-written backward: one matrix behind a LayerNorm, M(x) = [x +] g LN(W x) + b,
the L2 bias, plain mini-batch GD (optionally with TTT's token weights), no retention. Derivation and the saved
tensors: docs/ops/minibatch.md section 9.

Per head and chunk of n tokens (K, Q, V [n, d], eta [n], start state W [d_v, d_k], token weights tau [n], end
weight e; without token weights tau = 1, e = 1):

    Z = K W^T,  X, r = LN(Z)                         X normalized, r = 1 / std, per row
    E = 2 ([K +] g X + b - V)                        d loss / d prediction (the L2 bias)
    G = LNback(g E; X, r) = r (gE - mean(gE) - X mean(gE X))
    D = eta G                                        token r's step is -D_r k_r^T
    Zq = Q W^T - tau ((M . Q K^T) D)                 W_t q_t for W_t = W - tau_t sum_{r <= t} D_r k_r^T (M: r <= t)
    Y = [Q +] g LN(Zq) + b
    W' = W - e D^T K                                 the next chunk's start

Only W' depends on the previous chunk, so the forward loop over chunks runs the first five lines and the update
(about twenty small ops per chunk), then every chunk's read at once. Backward reads the saved chunk-start states,
does the reads' backward for all chunks at once, runs the reverse loop for the only sequential part (the gradient
of W through the update, second order through the LayerNorm), and finishes the per-token gradients for all chunks
at once. Saved: the chunk-start states and the forward's per-token rows (X, r, E, G, D), nothing per chunk of
state size beyond W.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...space import MirasSpec
from ...space.algorithm import GD
from ...space.bias import L2
from ...space.memory import MLPMemory
from ..amp import without_autocast
from ..state import MemoryState


TRAINING_ONLY = False           # (its forward is faster than the generic engine's without autograd too)


def applies(spec: MirasSpec) -> bool:
    """True for the specs this op computes: a depth-1 memory with LayerNorm (TTT-Linear), the L2 bias, no retention
    gate, plain GD with scalar eta (TTT's token weights or none; not LaCT's chunk-start reads)."""
    m, a = spec.memory, spec.algorithm
    return (isinstance(m, MLPMemory) and m.depth == 1 and m.norm and m.features == "identity"
            and isinstance(spec.bias, L2) and type(a) is GD and not a.channel_lr and a.reads == "token"
            and not a.muon and spec.gates == ("lr",) and spec.retention.identity_boundary
            and not getattr(spec.retention, "per_channel", False) and not getattr(spec.retention, "project", None))


def _ln(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Affine-free LayerNorm of the last dim -> (normalized, 1 / std [..., 1])."""
    c = z - z.mean(-1, keepdim=True)
    r = torch.rsqrt(c.square().mean(-1, keepdim=True) + eps)
    return c * r, r


def _ln_back(dx: Tensor, x: Tensor, r: Tensor) -> Tensor:
    """The LayerNorm's vector-Jacobian product: r (dx - mean(dx) - x mean(dx x))."""
    return r * (dx - dx.mean(-1, keepdim=True) - x * (dx * x).mean(-1, keepdim=True))


def _mT(x: Tensor) -> Tensor:
    return x.transpose(-1, -2)


class LinearLNChunks(torch.autograd.Function):
    """Full chunks: K, Q, V [B, H, N, n, d], eta [B, H, N, n], W [B, H, d_v, d_k], g, b [B, H, d_v], tau [n],
    e [] -> (Y [B, H, N, n, d_v], the state after the last chunk [B, H, d_v, d_k]). Inside, B and H are one axis
    (P = B H) so that every chunk product is one batched matmul."""

    @staticmethod
    def forward(ctx, K, Q, V, eta, W, g, b, tau, e, eps: float, residual: bool):
        shape = W.shape
        K, Q, V, eta, W = (x.flatten(0, 1) for x in (K, Q, V, eta, W))                 # [P, N, n, d], [P, d, d]
        g, b = g.flatten(0, 1)[:, None, None], b.flatten(0, 1)[:, None, None]       # [P, 1, 1, d_v]
        g2 = 2.0 * g * g
        base = 2.0 * ((K + b - V) if residual else (b - V))           # E = 2 (pred - v) = base + 2 g X
        starts, Xs, rs, Gs = [], [], [], []
        for Kc, bc, ec in zip(K.unbind(1), (g * base).unbind(1), (e * eta).unbind(1)):    # the state passing
            starts.append(W)
            Z = Kc @ W.transpose(1, 2)
            Zc = Z - Z.mean(-1, keepdim=True)
            r = torch.rsqrt(Zc.square().mean(-1, keepdim=True) + eps)
            X = Zc * r
            gE = torch.addcmul(bc, g2[:, 0], X)                                    # g E
            G = r * (gE - gE.mean(-1, keepdim=True) - X * (gE * X).mean(-1, keepdim=True))
            W = torch.baddbmm(W, (ec.unsqueeze(-1) * G).transpose(1, 2), Kc, alpha=-1)
            Xs.append(X), rs.append(r), Gs.append(G)
        Ws, X, r, G = (torch.stack(t, dim=1) for t in (starts, Xs, rs, Gs))             # Ws [P, N, d_v, d_k]
        D = eta.unsqueeze(-1) * G
        S = torch.tril(Q @ _mT(K))                                                  # [P, N, n, n]
        SD = S @ D
        Xq, rq = _ln(Q @ _mT(Ws) - tau.unsqueeze(-1) * SD, eps)
        Y = g * Xq + b + Q if residual else g * Xq + b
        ctx.save_for_backward(K, Q, eta, g, tau, e, Ws, X, r, G, base, S, SD, Xq, rq)
        ctx.residual, ctx.shape = residual, shape
        return Y.unflatten(0, shape[:2]), W.unflatten(0, shape[:2])

    @staticmethod
    @without_autocast
    def backward(ctx, dY, dW_end):
        K, Q, eta, g, tau, e, Ws, X, r, G, base, S, SD, Xq, rq = ctx.saved_tensors
        P, N = K.shape[:2]
        g2, Ke = 2.0 * g * g, e * K
        dY = dY.flatten(0, 1)
        D = eta.unsqueeze(-1) * G
        E = torch.addcmul(base, 2.0 * g, X)
        gE = g * E
        # the reads, every chunk at once
        dg = (dY * Xq).sum((1, 2))
        db = dY.sum((1, 2))
        dZq = _ln_back(dY * g, Xq, rq)
        dQ = dZq @ Ws + (dY if ctx.residual else 0.0)
        F = tau.unsqueeze(-1) * dZq
        dtau = -(dZq * SD).sum((0, 1, 3))
        dS = torch.tril(F @ _mT(D))                                                 # minus d loss / d S
        dQ = dQ - dS @ K
        dK = -(_mT(dS) @ Q)
        # the only sequential part, last chunk first: `carry` = d loss / d W at the chunk's end (the state after it),
        # through the later chunks' reads and updates
        carry = torch.zeros_like(Ws[:, 0]) if dW_end is None else dW_end.flatten(0, 1)
        dWs = _mT(dZq) @ Q                                                          # [P, N, d_v, d_k]: the reads'
        dD_read = -(_mT(S) @ F)
        s = r * eta.unsqueeze(-1)
        bX = (gE * X).mean(-1, keepdim=True)
        P1, P2 = g2 - bX, torch.addcmul(gE, g2, X)                         # dX = P1 u - mean(u X) P2 - mean(u) 2 g^2
        carries, dDs, dZs = [], [], []
        for c in range(N - 1, -1, -1):
            Kc, Xc, rc = K[:, c], X[:, c], r[:, c]
            dDc = torch.baddbmm(dD_read[:, c], Ke[:, c], _mT(carry), alpha=-1)
            u = s[:, c] * dDc                                                       # r dG
            dX = P1[:, c] * u - (u * Xc).mean(-1, keepdim=True) * P2[:, c] - u.mean(-1, keepdim=True) * g2[:, 0]
            uG = (u * G[:, c]).mean(-1, keepdim=True)                               # dr r^2 / d, dr = d loss / d r
            dZ = rc * (dX - dX.mean(-1, keepdim=True)) - Xc * (rc * (dX * Xc).mean(-1, keepdim=True) + uG)
            carries.append(carry), dDs.append(dDc), dZs.append(dZ)
            carry = torch.baddbmm(carry + dWs[:, c], _mT(dZ), Kc)
        dW0 = carry
        later, dDa, dZ = (torch.stack(t[::-1], dim=1) for t in (carries, dDs, dZs))
        # the per-token gradients of the update, every chunk at once
        u = s * dDa
        dEg = u - u.mean(-1, keepdim=True) - X * (u * X).mean(-1, keepdim=True)
        dP = 2.0 * g * dEg                                                          # d loss / d prediction
        deta = (dDa * G).sum(-1)
        de = -(later * (_mT(D) @ K)).sum()
        dK = dK + dZ @ Ws - e * (D @ later) + (dP if ctx.residual else 0.0)
        dg = dg + (dEg * E).sum((1, 2)) + (dP * X).sum((1, 2))
        db = db + dP.sum((1, 2))
        out = [t.unflatten(0, ctx.shape[:2]) for t in (dK, dQ, -dP, deta, dW0, dg.view(P, -1), db.view(P, -1))]
        return (*out, dtau, de, None, None)


def full_chunks(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: MemoryState,
                token_offsets: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """`chunk_minibatch` on whole chunks from a chunk boundary (T a multiple of the chunk size, state.offset 0)."""
    B, T, H, _ = q.shape
    b = spec.chunk_size
    N = T // b
    dtype = torch.promote_types(q.dtype, torch.float32)

    def chunks(x: Tensor) -> Tensor:                                   # [B, T, H, ...] -> [B, H, N, b, ...]
        return x.to(dtype).transpose(1, 2).unflatten(2, (N, b))
    A = {n: a.to(dtype) for n, a in state.A.items()}
    W = A["W1"]
    if spec.memory.norm_affine:
        g, beta = A["ln_weight"][..., 0], A["ln_bias"][..., 0]
    else:
        g, beta = W.new_ones(W.shape[:-1]), W.new_zeros(W.shape[:-1])
    if spec.algorithm.token_weights:
        tau = spec.algorithm.read_weights(token_offsets, 0, b, dtype, q.device)
        e = spec.algorithm.end_weight(token_offsets, b, dtype, q.device).reshape(())
    else:
        tau, e = W.new_ones(b), W.new_ones(())
    Y, W = LinearLNChunks.apply(chunks(k), chunks(q), chunks(v), chunks(gates["lr"]), W, g, beta, tau, e,
                                spec.memory.norm_eps, spec.memory.residual)
    return Y.flatten(2, 3).transpose(1, 2).to(q.dtype), MemoryState({**A, "W1": W})
