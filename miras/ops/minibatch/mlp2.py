"""The Titans memory with a hand-written backward: the depth-2 MLP behind a LayerNorm, M(x) = [x +] LN(W2 act(W1 x)),
the L2 bias, GD with or without momentum, a scalar decay per head or none (titans-lmm and its blocks). Derivation:
docs/ops/minibatch.md section 9.

Per head and chunk of n tokens, with the chunk's coefficients (decay_t, C[t, r], m_t, sdecay_t, Cs[t, r]: `chunk.py`'s
`coefficients`, lr folded into C and Cs) and its start state A = (A1, A2), S = (S1, S2) (the anchor is A):

    Z1 = K A1^T,  H = act(Z1),  X, r = LN(H A2^T)
    E = 2 ([K +] X - V),  G2 = LNback(E; X, r),  G1 = (G2 A2) act'(Z1)      the factors: token r's gradient of W2
                                                                             is G2_r H_r^T, of W1 is G1_r K_r^T
    A'_i = decay_n A_i + m_n S_i - sum_r C[n, r] outer(G_i,r, a_i,r)        (a_1 = K, a_2 = H)
    S'_i = sdecay_n S_i - sum_r Cs[n, r] outer(G_i,r, a_i,r)
    reads, the dual form: Zq1 = decay (Q A1^T) + m (Q S1^T) - (C . Q K^T) G1,  Hq = act(Zq1),
                          Zq2 = decay (Hq A2^T) + m (Hq S2^T) - (C . Hq H^T) G2,  Y = [Q +] LN(Zq2)

The forward loop over chunks runs only the state passing (the factors at A, then A', S'), and the reads of every
chunk run at once after it. Backward does the reads' backward for all chunks at once, then the reverse loop for
the sequential part (the state's gradient through each chunk's update: second order through the MLP and the
LayerNorm at the anchor), then the per-token gradients for all chunks at once. Coefficients come in as tensors,
so their gradients (and those of the gates behind them) are autograd's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...space import MirasSpec
from ...space.algorithm import GD, Momentum
from ...space.bias import L2
from ...space.memory import MLPMemory, activation, activation_grad
from ...space.retention import decays_toward_prior
from ..amp import without_autocast
from ..state import MemoryState
from .linear_ln import _ln, _ln_back, _mT

ACTS = ("gelu", "silu", "tanh")


def applies(spec: MirasSpec) -> bool:
    """True for a depth-2 MLP memory with LayerNorm and no affine (Titans' LMM), the L2 bias, GD or momentum with a
    scalar eta, and no retention other than a scalar decay per head (toward zero)."""
    m, a, ret = spec.memory, spec.algorithm, spec.retention
    return (isinstance(m, MLPMemory) and m.depth == 2 and m.norm and not m.norm_affine and m.activation in ACTS
            and m.features == "identity" and isinstance(spec.bias, L2)
            and ((type(a) is GD and not a.weighted and not a.muon) or type(a) is Momentum) and not a.channel_lr
            and ret.identity_boundary and not getattr(ret, "per_channel", False) and not decays_toward_prior(ret)
            and set(spec.gates) <= {"lr", "log_alpha", "beta"})


def _act2(name: str, z: Tensor) -> Tensor:
    """d^2 act(z) / dz^2, elementwise."""
    if name == "gelu":                                       # phi(z) (2 - z^2)
        return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * (2.0 - z * z)
    if name == "silu":                                       # s (1 - s) (2 + z (1 - 2 s))
        s = torch.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    t = torch.tanh(z)
    return -2.0 * t * (1.0 - t * t)


def _rows(x: Tensor) -> Tensor:
    """[P, n] -> [P, n, 1] (one scalar per row)."""
    return x.unsqueeze(-1)


def _scal(x: Tensor) -> Tensor:
    """[P] -> [P, 1, 1] (one scalar per matrix)."""
    return x[:, None, None]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """<a_p, b_p> of two [P, o, i] stacks -> [P] (one fused reduction, no weight-sized temporary)."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


class MLP2Chunks(torch.autograd.Function):
    """Full chunks, P = B H heads: K, Q, V [P, N, n, d]; decay [P, N, n], C [P, N, n, n]; with momentum m, sdecay
    [P, N, n], Cs [P, N, n, n], else None; A1 [P, h, d], A2 [P, d, h], S1, S2 likewise or None.
    -> (Y [P, N, n, d], A1', A2', S1', S2' after the last chunk; S' None without momentum)."""

    @staticmethod
    def forward(ctx, K, Q, V, decay, C, m, sdecay, Cs, A1, A2, S1, S2, act: str, eps: float, residual: bool):
        mom = S1 is not None
        base = 2.0 * (K - V) if residual else -2.0 * V                 # E = base + 2 X
        starts, saved = [], []
        for c in range(K.shape[1]):                                             # the state passing
            Kc = K[:, c]
            starts.append((A1, A2, S1, S2))
            Z1 = Kc @ _mT(A1)
            H = activation(act, Z1)
            X, r = _ln(H @ _mT(A2), eps)
            E = base[:, c] + 2.0 * X
            G2 = _ln_back(E, X, r)
            G1 = (G2 @ A2) * activation_grad(act, Z1)
            saved.append((Z1, H, X, r, G1, G2))
            cl, dl = _rows(C[:, c, -1]), _scal(decay[:, c, -1])
            if mom:
                csl, ml, sl = _rows(Cs[:, c, -1]), _scal(m[:, c, -1]), _scal(sdecay[:, c, -1])
                A1, A2, S1, S2 = (torch.baddbmm(torch.addcmul(dl * A1, ml, S1), _mT(cl * G1), Kc, alpha=-1),
                                  torch.baddbmm(torch.addcmul(dl * A2, ml, S2), _mT(cl * G2), H, alpha=-1),
                                  torch.baddbmm(sl * S1, _mT(csl * G1), Kc, alpha=-1),
                                  torch.baddbmm(sl * S2, _mT(csl * G2), H, alpha=-1))
            else:
                A1, A2 = torch.baddbmm(dl * A1, _mT(cl * G1), Kc, alpha=-1), torch.baddbmm(dl * A2, _mT(cl * G2), H,
                                                                                         alpha=-1)
        A1s, A2s = (torch.stack([s[i] for s in starts], 1) for i in (0, 1))     # [P, N, out, in]
        S1s, S2s = (torch.stack([s[i] for s in starts], 1) for i in (2, 3)) if mom else (None, None)
        Z1, H, X, r, G1, G2 = (torch.stack(t, 1) for t in zip(*saved))
        # the reads of every chunk
        dec = decay.unsqueeze(-1)
        QK = Q @ _mT(K)                                                         # (C is 0 above the diagonal)
        Zq1 = dec * (Q @ _mT(A1s)) - (C * QK) @ G1
        if mom:
            Zq1 = Zq1 + m.unsqueeze(-1) * (Q @ _mT(S1s))
        Hq = activation(act, Zq1)
        HH = Hq @ _mT(H)
        Zq2 = dec * (Hq @ _mT(A2s)) - (C * HH) @ G2
        if mom:
            Zq2 = Zq2 + m.unsqueeze(-1) * (Hq @ _mT(S2s))
        Xq, rq = _ln(Zq2, eps)
        Y = Q + Xq if residual else Xq
        ctx.save_for_backward(K, Q, decay, C, m, sdecay, Cs, A1s, A2s, S1s, S2s, Z1, H, X, r, G1, G2, QK, Zq1, Hq,
                              HH, Xq, rq, base)
        ctx.act, ctx.residual = act, residual
        return Y, A1, A2, S1, S2

    @staticmethod
    @without_autocast
    def backward(ctx, dY, dA1_end, dA2_end, dS1_end, dS2_end):
        (K, Q, decay, C, m, sdecay, Cs, A1s, A2s, S1s, S2s, Z1, H, X, r, G1, G2, QK, Zq1, Hq, HH, Xq, rq,
         base) = ctx.saved_tensors
        act, mom, N = ctx.act, S1s is not None, K.shape[1]
        dec = decay.unsqueeze(-1)
        # the reads, every chunk at once (layer 2, then layer 1)
        dZq2 = _ln_back(dY, Xq, rq)
        dHq = (dec * dZq2) @ A2s
        dR2 = C * (dZq2 @ _mT(G2))                                      # minus d loss / d (C . Hq H^T), masked by C
        dHq = dHq - dR2 @ H
        dH_read = -(_mT(dR2) @ Hq)
        dG2_read = -(_mT(C * HH) @ dZq2)
        dC = -(dZq2 @ _mT(G2)) * HH
        ddecay = (dZq2 * (Hq @ _mT(A2s))).sum(-1)
        rA2 = dec * dZq2                                  # the reads' d loss / d A2 of chunk c: rA2[c]^T Hq[c]
        if mom:
            dHq = dHq + (m.unsqueeze(-1) * dZq2) @ S2s
            dm = (dZq2 * (Hq @ _mT(S2s))).sum(-1)
            rS2 = m.unsqueeze(-1) * dZq2
        dZq1 = dHq * activation_grad(act, Zq1)
        dQ = (dec * dZq1) @ A1s + (dY if ctx.residual else 0.0)
        dR1 = C * (dZq1 @ _mT(G1))
        dQ = dQ - dR1 @ K
        dK = -(_mT(dR1) @ Q)
        dG1_read = -(_mT(C * QK) @ dZq1)
        dC = dC - (dZq1 @ _mT(G1)) * QK
        ddecay = ddecay + (dZq1 * (Q @ _mT(A1s))).sum(-1)
        rA1 = dec * dZq1
        if mom:
            dQ = dQ + (m.unsqueeze(-1) * dZq1) @ S1s
            dm = dm + (dZq1 * (Q @ _mT(S1s))).sum(-1)
            rS1 = m.unsqueeze(-1) * dZq1
        # the sequential part, last chunk first: dA*, dS* = d loss / d the chunk's end state
        dA1, dA2 = (torch.zeros_like(A1s[:, 0]) if g is None else g for g in (dA1_end, dA2_end))
        dS1, dS2 = ((torch.zeros_like(S1s[:, 0]) if g is None else g for g in (dS1_end, dS2_end)) if mom
                    else (None, None))
        bX = (base + 2.0 * X) * X                                        # E X (its row mean: b in dX below)
        bX = bX.mean(-1, keepdim=True)
        dZ1s, dEs, dKe, dCl, dCsl, dDl, dMl, dSl = [], [], [], [], [], [], [], []
        for c in range(N - 1, -1, -1):
            Kc, Hc, G1c, G2c, Z1c, Xc, rc = K[:, c], H[:, c], G1[:, c], G2[:, c], Z1[:, c], X[:, c], r[:, c]
            A1c, A2c = A1s[:, c], A2s[:, c]
            cl, dl = _rows(C[:, c, -1]), _scal(decay[:, c, -1])
            KdA1, HdA2 = Kc @ _mT(dA1), Hc @ _mT(dA2)                               # [n, h], [n, d]
            dG1 = dG1_read[:, c] - cl * KdA1
            dG2 = dG2_read[:, c] - cl * HdA2
            dH = dH_read[:, c] - (cl * G2c) @ dA2
            dKc = -(cl * G1c) @ dA1
            dCl.append(-(KdA1 * G1c).sum(-1) - (HdA2 * G2c).sum(-1))
            dDl.append(_dot(dA1, A1c) + _dot(dA2, A2c))
            if mom:
                S1c, S2c = S1s[:, c], S2s[:, c]
                csl, ml, sl = _rows(Cs[:, c, -1]), _scal(m[:, c, -1]), _scal(sdecay[:, c, -1])
                KdS1, HdS2 = Kc @ _mT(dS1), Hc @ _mT(dS2)
                dG1 = dG1 - csl * KdS1
                dG2 = dG2 - csl * HdS2
                dH = dH - (csl * G2c) @ dS2
                dKc = dKc - (csl * G1c) @ dS1
                dCsl.append(-(KdS1 * G1c).sum(-1) - (HdS2 * G2c).sum(-1))
                dMl.append(_dot(dA1, S1c) + _dot(dA2, S2c))
                dSl.append(_dot(dS1, S1c) + _dot(dS2, S2c))
            # through the factors at the anchor A: G1 = (G2 A2) act'(Z1), G2 = LNback(E), E = 2 ([K +] X - V)
            a1 = activation_grad(act, Z1c)
            Gam = dG1 * a1
            G2A2 = G2c @ A2c
            dG2 = dG2 + Gam @ _mT(A2c)
            dZ1 = dG1 * G2A2 * _act2(act, Z1c)
            u = rc * dG2
            um, uX = u.mean(-1, keepdim=True), (u * Xc).mean(-1, keepdim=True)
            dE = u - um - Xc * uX
            Ec = base[:, c] + 2.0 * Xc
            dX = -bX[:, c] * u - uX * Ec + 2.0 * dE
            uG = (u * G2c).mean(-1, keepdim=True)
            dZ2 = rc * (dX - dX.mean(-1, keepdim=True)) - Xc * (rc * (dX * Xc).mean(-1, keepdim=True) + uG)
            dH = dH + dZ2 @ A2c
            dZ1 = dZ1 + dH * a1
            dZ1s.append(dZ1), dEs.append(dE), dKe.append(dKc)
            if mom:                                     # (before dA1, dA2 move on: they are d loss / d A' here)
                dS1 = torch.baddbmm(torch.addcmul(ml * dA1, sl, dS1), _mT(rS1[:, c]), Q[:, c])
                dS2 = torch.baddbmm(torch.addcmul(ml * dA2, sl, dS2), _mT(rS2[:, c]), Hq[:, c])
            # d loss / d A: decayed into A', read by the chunk, and the anchor of its factors (W2 in G1 and Z2)
            # (the reads' terms here, not for all chunks at once: that would be a state-sized tensor per chunk)
            dA1 = torch.baddbmm(torch.baddbmm(dl * dA1, _mT(rA1[:, c]), Q[:, c]), _mT(dZ1), Kc)
            dA2 = torch.baddbmm(torch.baddbmm(torch.baddbmm(dl * dA2, _mT(rA2[:, c]), Hq[:, c]), _mT(G2c), Gam),
                                _mT(dZ2), Hc)
        dZ1, dE, dKe, dCl, dDl = (torch.stack(t[::-1], 1) for t in (dZ1s, dEs, dKe, dCl, dDl))
        # per-token gradients of the updates, every chunk at once
        dP = 2.0 * dE
        dK = dK + dZ1 @ A1s + dKe + (dP if ctx.residual else 0.0)
        dC = torch.tril(dC)
        dC[..., -1, :] += dCl
        ddecay[..., -1] += dDl
        dm_out = dsdecay = dCs = None
        if mom:
            dCsl, dMl, dSl = (torch.stack(t[::-1], 1) for t in (dCsl, dMl, dSl))
            dm[..., -1] += dMl
            dm_out = dm
            dsdecay = torch.zeros_like(sdecay)
            dsdecay[..., -1] = dSl
            dCs = torch.zeros_like(Cs)
            dCs[..., -1, :] = dCsl
        return (dK, dQ, -dP, ddecay, dC, dm_out, dsdecay, dCs, dA1, dA2, dS1, dS2, None, None, None)


def full_chunks(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: MemoryState,
                token_offsets: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """`chunk_minibatch` on whole chunks from a chunk boundary (T a multiple of the chunk size, state.offset 0)."""
    from .chunk import coefficients
    B, T, H, _ = q.shape
    b = spec.chunk_size
    N = T // b
    dtype = torch.promote_types(q.dtype, torch.float32)

    def chunks(x: Tensor) -> Tensor:                                   # [B, T, H, ...] -> [B H, N, b, ...]
        return x.to(dtype).transpose(1, 2).flatten(0, 1).unflatten(1, (N, b))
    co = coefficients(chunks(gates["lr"]), chunks(gates["log_alpha"]) if "log_alpha" in gates else None,
                      chunks(gates["beta"]) if "beta" in gates else None)
    A = {n: a.to(dtype).flatten(0, 1) for n, a in state.A.items()}
    S = None if state.S is None else {n: s.to(dtype).flatten(0, 1) for n, s in state.S.items()}
    Y, A1, A2, S1, S2 = MLP2Chunks.apply(chunks(k), chunks(q), chunks(v), co.decay, co.C, co.m, co.sdecay, co.Cs,
                                         A["W1"], A["W2"], None if S is None else S["W1"], None if S is None else S["W2"],
                                         spec.memory.activation, spec.memory.norm_eps, spec.memory.residual)
    y = Y.flatten(1, 2).unflatten(0, (B, H)).transpose(1, 2).to(q.dtype)

    def heads(x: Tensor) -> Tensor:
        return x.unflatten(0, (B, H))
    return y, MemoryState({"W1": heads(A1), "W2": heads(A2)},
                          None if S is None else {"W1": heads(S1), "W2": heads(S2)})
