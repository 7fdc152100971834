"""The deep memory with a hand-written backward: the depth-2 MLP behind a LayerNorm, M(x) = [x +] LN(W2 act(W1 x)),
stepped by GD or momentum on any residual bias (L2: Titans; Lp: Moneta; Huber: Yaad), with a scalar or channel-wise
eta, a scalar decay per head (toward 0 or toward the initial state W0) and, for Moneta, the Lq normalization read
through its in-chunk frame (titans-lmm, moneta, yaad and their blocks). Derivation: docs/ops/minibatch.md section 9.

Per head and chunk of n tokens, with the chunk's coefficients (decay_t, C[t, r], m_t, sdecay_t, Cs[t, r]: `chunk.py`'s
`coefficients`, a scalar lr folded into C and Cs), its start state A = (A1, A2), S = (S1, S2), the prior P = (P1, P2)
(0 for a decay toward 0) and the normalizer c_i = c(A_i) (1 without the Lq retention; the anchor is W_i = c_i A_i):

    Z1 = K W1^T,  H = act(Z1),  X, r = LN(H W2^T),  R = [K +] X - V
    E = lr . bias.grad(R),  G2 = LNback(E; X, r),  G1 = (G2 W2) act'(Z1)     the factors: token r's gradient of W2
                                                                             is G2_r H_r^T, of W1 is G1_r K_r^T
    A'_i = decay_n (A_i - P_i) + P_i + m_n S_i - sum_r C[n, r] outer(G_i,r, a_i,r)        (a_1 = K, a_2 = H)
    S'_i = sdecay_n S_i - sum_r Cs[n, r] outer(G_i,r, a_i,r)
    reads, the dual form, U_i = A_t h for the layer's input h (Q, then Hq), without forming A_t:
        U1 = decay (Q A1^T) + (1 - decay) (Q P1^T) + m (Q S1^T) - (C . Q K^T) G1,   Hq = act(c1 U1)
        U2 = the same with Hq, H, G2, A2,                                             Y = [Q +] LN(c2 U2)
    where the reads inside a chunk scale by the chunk start's c (the frame W_t = c_s A_t) and the chunk's last
    token by the next chunk's (W = boundary(A') = c(A') A').

The forward loop over chunks runs only the state passing (the factors at the anchor, then A', S'), and the reads of
every chunk run at once after it. Backward does the reads' backward for all chunks at once, then the reverse loop for
the sequential part (the state's gradient through each chunk's update: second order through the MLP, the LayerNorm
and the bias at the anchor, and through c), then the per-token gradients for all chunks at once. Coefficients come
in as tensors, so their gradients (and those of the gates behind them) are autograd's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ...space import MirasSpec
from ...space.algorithm import GD, Momentum
from ...space.bias import L2, Huber, Lp, grad_vjp
from ...space.memory import MLPMemory, activation, activation_grad
from ...space.retention import Decay, LqNormalization, NoRetention
from ..amp import without_autocast
from ..state import MemoryState, state_prior
from .linear_ln import _ln, _ln_back, _mT

ACTS = ("gelu", "silu", "tanh")
BIASES = (L2, Lp, Huber)        # biases of the residual R = M(k) - v (so d/d v = -d/d R), each tested here


def applies(spec: MirasSpec) -> bool:
    """True for a depth-2 MLP memory with LayerNorm and no affine (the papers' deep memory), an L2, Lp or Huber bias,
    GD or momentum with a scalar or channel-wise eta, and a scalar decay per head (toward 0 or W0), none, or the Lq
    normalization applied at chunk ends."""
    m, a, ret = spec.memory, spec.algorithm, spec.retention
    retention = (type(ret) is NoRetention or (type(ret) is Decay and not ret.per_channel)
                 or (type(ret) is LqNormalization and ret.boundary_at == "chunk-end"))
    return (isinstance(m, MLPMemory) and m.depth == 2 and m.norm and not m.norm_affine and m.activation in ACTS
            and m.features == "identity" and type(spec.bias) in BIASES and retention
            and ((type(a) is GD and not a.weighted and not a.muon) or type(a) is Momentum)
            and set(spec.gates) <= {"lr", "log_alpha", "beta", *spec.bias.gates})


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


def _each(x: Tensor, M: Tensor) -> Tensor:
    """x [P, N, n, i] times one matrix per head M [P, i, o] -> [P, N, n, o], as one [N n, i] product per head (a
    broadcast matmul would copy M for every chunk)."""
    return (x.flatten(1, 2) @ M).view(*x.shape[:-1], M.shape[-1])


def _row_scales(cs: Tensor, n: int) -> Tensor:
    """The normalizers of every chunk start and the end, cs [P, N + 1] -> the scale of each read [P, N, n, 1]: the
    chunk start's for its first n - 1 tokens, the next chunk's for its last."""
    P, N = cs.shape[0], cs.shape[1] - 1
    return torch.cat([cs[:, :-1, None].expand(P, N, n - 1), cs[:, 1:, None]], dim=-1).unsqueeze(-1)


def _read_scale_grads(dcrow: Tensor) -> Tensor:
    """The reads' gradient of each row scale [P, N, n] -> of each normalizer [P, N + 1] (`_row_scales` backward)."""
    z = dcrow.new_zeros(dcrow.shape[0], 1)
    return torch.cat([dcrow[..., :-1].sum(-1), z], 1) + torch.cat([z, dcrow[..., -1]], 1)


@dataclass(frozen=True)
class Config:
    """What MLP2Chunks needs besides tensors: the memory's activation, LayerNorm eps and residual, the bias (its
    grad and grad_vjp) with the names of its gates, and the Lq retention (its scale and scale_vjp) or None."""

    act: str
    eps: float
    residual: bool
    bias: object
    gate_names: tuple[str, ...] = ()
    lq: LqNormalization | None = None


class MLP2Chunks(torch.autograd.Function):
    """Full chunks, P = B H heads: K, Q, V [P, N, n, d]; LR [P, N, n, d] (channel-wise eta) or None; decay
    [P, N, n], C [P, N, n, n]; with momentum m, sdecay [P, N, n], Cs [P, N, n, n], else None; A1 [P, h, d], A2
    [P, d, h], S1, S2 likewise or None; P1, P2 (the prior) likewise or None; the bias' gates [P, N, n(, d)].
    -> (Y [P, N, n, d], A1', A2', S1', S2' after the last chunk; S' None without momentum)."""

    @staticmethod
    def forward(ctx, cfg: Config, K, Q, V, LR, decay, C, m, sdecay, Cs, A1, A2, S1, S2, P1, P2, *bgates):
        mom, prior, lq, N = S1 is not None, P1 is not None, cfg.lq, K.shape[1]
        starts, saved, cs = [], [], []
        for c in range(N):                                                      # the state passing
            Kc = K[:, c]
            starts.append((A1, A2, S1, S2))
            if lq is not None:
                cs.append((lq.scale(A1), lq.scale(A2)))
                W1, W2 = cs[-1][0] * A1, cs[-1][1] * A2
            else:
                W1, W2 = A1, A2
            Z1 = Kc @ _mT(W1)
            H = activation(cfg.act, Z1)
            X, r = _ln(H @ _mT(W2), cfg.eps)
            Pred = Kc + X if cfg.residual else X
            Gb = cfg.bias.grad(Pred, V[:, c], {n: g[:, c] for n, g in zip(cfg.gate_names, bgates)})
            E = Gb if LR is None else LR[:, c] * Gb
            G2 = _ln_back(E, X, r)
            G1 = (G2 @ W2) * activation_grad(cfg.act, Z1)
            saved.append((Z1, H, X, r, G1, G2, Pred, Gb))
            cl, dl = _rows(C[:, c, -1]), _scal(decay[:, c, -1])
            B1, B2 = dl * A1, dl * A2
            if prior:
                B1, B2 = torch.addcmul(B1, 1.0 - dl, P1), torch.addcmul(B2, 1.0 - dl, P2)
            if mom:
                csl, ml, sl = _rows(Cs[:, c, -1]), _scal(m[:, c, -1]), _scal(sdecay[:, c, -1])
                B1, B2 = torch.addcmul(B1, ml, S1), torch.addcmul(B2, ml, S2)
                S1, S2 = (torch.baddbmm(sl * S1, _mT(csl * G1), Kc, alpha=-1),
                          torch.baddbmm(sl * S2, _mT(csl * G2), H, alpha=-1))
            A1, A2 = torch.baddbmm(B1, _mT(cl * G1), Kc, alpha=-1), torch.baddbmm(B2, _mT(cl * G2), H, alpha=-1)
        A1s, A2s = (torch.stack([s[i] for s in starts], 1) for i in (0, 1))     # [P, N, out, in]
        S1s, S2s = (torch.stack([s[i] for s in starts], 1) for i in (2, 3)) if mom else (None, None)
        Z1, H, X, r, G1, G2, Pred, Gb = (torch.stack(t, 1) for t in zip(*saved))
        n = K.shape[2]
        if lq is not None:
            cs.append((lq.scale(A1), lq.scale(A2)))
            cs1, cs2 = (torch.stack([c[i].flatten() for c in cs], 1) for i in (0, 1))     # [P, N + 1]
            crow1, crow2 = _row_scales(cs1, n), _row_scales(cs2, n)
        else:
            cs1 = cs2 = crow1 = crow2 = None
        # the reads of every chunk
        dec = decay.unsqueeze(-1)
        QK = Q @ _mT(K)                                                         # (C is 0 above the diagonal)
        U1 = dec * (Q @ _mT(A1s)) - (C * QK) @ G1
        if prior:
            U1 = torch.addcmul(U1, 1.0 - dec, _each(Q, _mT(P1)))
        if mom:
            U1 = U1 + m.unsqueeze(-1) * (Q @ _mT(S1s))
        Hq = activation(cfg.act, U1 if lq is None else crow1 * U1)
        HH = Hq @ _mT(H)
        U2 = dec * (Hq @ _mT(A2s)) - (C * HH) @ G2
        if prior:
            U2 = torch.addcmul(U2, 1.0 - dec, _each(Hq, _mT(P2)))
        if mom:
            U2 = U2 + m.unsqueeze(-1) * (Hq @ _mT(S2s))
        Xq, rq = _ln(U2 if lq is None else crow2 * U2, cfg.eps)
        Y = Q + Xq if cfg.residual else Xq
        ctx.save_for_backward(K, Q, V, LR, decay, C, m, sdecay, Cs, A1s, A2s, S1s, S2s, P1, P2,
                              A1 if lq is not None else None, A2 if lq is not None else None, cs1, cs2,
                              Z1, H, X, r, G1, G2, Pred, Gb, QK, U1, Hq, HH, U2, Xq, rq, *bgates)
        ctx.cfg = cfg
        return Y, A1, A2, S1, S2

    @staticmethod
    @without_autocast
    def backward(ctx, dY, dA1_end, dA2_end, dS1_end, dS2_end):
        (K, Q, V, LR, decay, C, m, sdecay, Cs, A1s, A2s, S1s, S2s, P1, P2, A1e, A2e, cs1, cs2,
         Z1, H, X, r, G1, G2, Pred, Gb, QK, U1, Hq, HH, U2, Xq, rq, *bgates) = ctx.saved_tensors
        cfg = ctx.cfg
        act, lq, mom, prior, N, n = cfg.act, cfg.lq, S1s is not None, P1 is not None, K.shape[1], K.shape[2]
        dec = decay.unsqueeze(-1)
        if lq is not None:
            crow1, crow2 = _row_scales(cs1, n), _row_scales(cs2, n)
        # the reads, every chunk at once (layer 2, then layer 1); dU = d loss / d U, the unscaled read
        dZq2 = _ln_back(dY, Xq, rq)
        dU2 = dZq2 if lq is None else crow2 * dZq2
        dHq = (dec * dU2) @ A2s
        dR2 = C * (dU2 @ _mT(G2))                                       # minus d loss / d (C . Hq H^T), masked by C
        dHq = dHq - dR2 @ H
        dH_read = -(_mT(dR2) @ Hq)
        dG2_read = -(_mT(C * HH) @ dU2)
        dC = -(dU2 @ _mT(G2)) * HH
        HA2 = Hq @ _mT(A2s)
        rA2 = dec * dU2                                   # the reads' d loss / d A2 of chunk c: rA2[c]^T Hq[c]
        if prior:
            pU2 = (1.0 - dec) * dU2
            dHq = dHq + _each(pU2, P2)
            HA2 = HA2 - _each(Hq, _mT(P2))
            dP2 = _mT(pU2.flatten(1, 2)) @ Hq.flatten(1, 2)
        ddecay = (dU2 * HA2).sum(-1)
        if mom:
            dHq = dHq + (m.unsqueeze(-1) * dU2) @ S2s
            dm = (dU2 * (Hq @ _mT(S2s))).sum(-1)
            rS2 = m.unsqueeze(-1) * dU2
        Zq1 = U1 if lq is None else crow1 * U1
        dZq1 = dHq * activation_grad(act, Zq1)
        dU1 = dZq1 if lq is None else crow1 * dZq1
        dQ = (dec * dU1) @ A1s + (dY if cfg.residual else 0.0)
        dR1 = C * (dU1 @ _mT(G1))
        dQ = dQ - dR1 @ K
        dK = -(_mT(dR1) @ Q)
        dG1_read = -(_mT(C * QK) @ dU1)
        dC = dC - (dU1 @ _mT(G1)) * QK
        QA1 = Q @ _mT(A1s)
        rA1 = dec * dU1
        if prior:
            pU1 = (1.0 - dec) * dU1
            dQ = dQ + _each(pU1, P1)
            QA1 = QA1 - _each(Q, _mT(P1))
            dP1 = _mT(pU1.flatten(1, 2)) @ Q.flatten(1, 2)
        ddecay = ddecay + (dU1 * QA1).sum(-1)
        if mom:
            dQ = dQ + (m.unsqueeze(-1) * dU1) @ S1s
            dm = dm + (dU1 * (Q @ _mT(S1s))).sum(-1)
            rS1 = m.unsqueeze(-1) * dU1
        if lq is not None:                            # the reads' gradient of every normalizer c [P, N + 1]
            dcs1 = _read_scale_grads((dZq1 * U1).sum(-1))
            dcs2 = _read_scale_grads((dZq2 * U2).sum(-1))
        # the sequential part, last chunk first: dA*, dS* = d loss / d the chunk's end state
        dA1, dA2 = (torch.zeros_like(A1s[:, 0]) if g is None else g for g in (dA1_end, dA2_end))
        dS1, dS2 = ((torch.zeros_like(S1s[:, 0]) if g is None else g for g in (dS1_end, dS2_end)) if mom
                    else (None, None))
        if lq is not None:                            # the last read's normalizer is c(A') of the final state
            dA1 = dA1 + lq.scale_vjp(A1e, _scal(cs1[:, N]), _scal(dcs1[:, N]))
            dA2 = dA2 + lq.scale_vjp(A2e, _scal(cs2[:, N]), _scal(dcs2[:, N]))
        E = Gb if LR is None else LR * Gb
        bX = (E * X).mean(-1, keepdim=True)                              # (b in dX below)
        dZ1s, dEs, dRs, dKe, dCl, dCsl, dDl, dMl, dSl, dgs = [], [], [], [], [], [], [], [], [], []
        for c in range(N - 1, -1, -1):
            Kc, Hc, G1c, G2c, Z1c, Xc, rc = K[:, c], H[:, c], G1[:, c], G2[:, c], Z1[:, c], X[:, c], r[:, c]
            A1c, A2c = A1s[:, c], A2s[:, c]
            if lq is not None:
                c1, c2 = _scal(cs1[:, c]), _scal(cs2[:, c])
            W2c = A2c if lq is None else c2 * A2c
            cl, dl = _rows(C[:, c, -1]), _scal(decay[:, c, -1])
            KdA1, HdA2 = Kc @ _mT(dA1), Hc @ _mT(dA2)                               # [n, h], [n, d]
            dG1 = dG1_read[:, c] - cl * KdA1
            dG2 = dG2_read[:, c] - cl * HdA2
            dH = dH_read[:, c] - (cl * G2c) @ dA2
            dKc = -(cl * G1c) @ dA1
            dCl.append(-(KdA1 * G1c).sum(-1) - (HdA2 * G2c).sum(-1))
            dDl.append(_dot(dA1, A1c) + _dot(dA2, A2c) - (_dot(dA1, P1) + _dot(dA2, P2) if prior else 0.0))
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
            # through the factors at the anchor W: G1 = (G2 W2) act'(Z1), G2 = LNback(E), E = lr bias.grad(R)
            a1 = activation_grad(act, Z1c)
            Gam = dG1 * a1
            G2W2 = G2c @ W2c
            dG2 = dG2 + Gam @ _mT(W2c)
            dZ1 = dG1 * G2W2 * _act2(act, Z1c)
            u = rc * dG2
            um, uX = u.mean(-1, keepdim=True), (u * Xc).mean(-1, keepdim=True)
            dE = u - um - Xc * uX
            gates = {name: g[:, c] for name, g in zip(cfg.gate_names, bgates)}
            dR, dg = grad_vjp(cfg.bias, Pred[:, c], V[:, c], gates, dE if LR is None else LR[:, c] * dE)
            dX = -bX[:, c] * u - uX * E[:, c] + dR
            uG = (u * G2c).mean(-1, keepdim=True)
            dZ2 = rc * (dX - dX.mean(-1, keepdim=True)) - Xc * (rc * (dX * Xc).mean(-1, keepdim=True) + uG)
            dH = dH + dZ2 @ W2c
            dZ1 = dZ1 + dH * a1
            dZ1s.append(dZ1), dEs.append(dE), dRs.append(dR), dKe.append(dKc), dgs.append(dg)
            if mom:                                     # (before dA1, dA2 move on: they are d loss / d A' here)
                dS1 = torch.baddbmm(torch.addcmul(ml * dA1, sl, dS1), _mT(rS1[:, c]), Q[:, c])
                dS2 = torch.baddbmm(torch.addcmul(ml * dA2, sl, dS2), _mT(rS2[:, c]), Hq[:, c])
            if prior:
                dP1, dP2 = torch.addcmul(dP1, 1.0 - dl, dA1), torch.addcmul(dP2, 1.0 - dl, dA2)
            # d loss / d A: decayed into A', read by the chunk, and the anchor W = c A of its factors (W2 in G1 and
            # Z2; with the Lq retention also through c, whose gradients come from the factors' products: Z1 = c1 K
            # A1^T, and dZ2 has zero row mean so <dZ2, Z2> = <dZ2, X / r>)
            # (the reads' terms here, not for all chunks at once: that would be a state-sized tensor per chunk)
            gZ1, gG2, gZ2 = (dZ1, G2c, dZ2) if lq is None else (c1 * dZ1, c2 * G2c, c2 * dZ2)
            nA1 = torch.baddbmm(torch.baddbmm(dl * dA1, _mT(rA1[:, c]), Q[:, c]), _mT(gZ1), Kc)
            nA2 = torch.baddbmm(torch.baddbmm(torch.baddbmm(dl * dA2, _mT(rA2[:, c]), Hq[:, c]), _mT(gG2), Gam),
                                _mT(gZ2), Hc)
            if lq is not None:
                dc1 = (dZ1 * Z1c).sum((-2, -1)) / cs1[:, c] + dcs1[:, c]
                dc2 = ((Gam * G2W2).sum((-2, -1)) + (dZ2 * Xc / rc).sum((-2, -1))) / cs2[:, c] + dcs2[:, c]
                nA1 = nA1 + lq.scale_vjp(A1c, c1, _scal(dc1))
                nA2 = nA2 + lq.scale_vjp(A2c, c2, _scal(dc2))
            dA1, dA2 = nA1, nA2
        dZ1, dE, dR, dKe, dCl, dDl = (torch.stack(t[::-1], 1) for t in (dZ1s, dEs, dRs, dKe, dCl, dDl))
        # per-token gradients of the updates, every chunk at once
        W1s = A1s if lq is None else cs1[:, :N, None, None] * A1s
        dK = dK + dZ1 @ W1s + dKe + (dR if cfg.residual else 0.0)
        dLR = None if LR is None else Gb * dE
        dgates = [torch.stack([g[name] for g in dgs[::-1]], 1) for name in cfg.gate_names]
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
        return (None, dK, dQ, -dR, dLR, ddecay, dC, dm_out, dsdecay, dCs, dA1, dA2, dS1, dS2,
                dP1 if prior else None, dP2 if prior else None, *dgates)


def full_chunks(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor], state: MemoryState,
                token_offsets: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """`chunk_minibatch` on whole chunks from a chunk boundary (T a multiple of the chunk size, state.offset 0)."""
    from .chunk import coefficients
    B, T, H, _ = q.shape
    b = spec.chunk_size
    N = T // b
    dtype = torch.promote_types(q.dtype, torch.float32)

    def chunks(x: Tensor) -> Tensor:                           # [B, T, H, ...] -> [B H, N, b, ...]
        return x.to(dtype).transpose(1, 2).flatten(0, 1).unflatten(1, (N, b))
    channel_lr = spec.per_channel("lr")                        # channel-wise eta: in E (the coefficients' lr is 1)
    lr = chunks(gates["lr"])
    co = coefficients(torch.ones_like(lr[..., 0]) if channel_lr else lr,
                      chunks(gates["log_alpha"]) if "log_alpha" in gates else None,
                      chunks(gates["beta"]) if "beta" in gates else None)
    A = {n: a.to(dtype).flatten(0, 1) for n, a in state.A.items()}
    S = None if state.S is None else {n: s.to(dtype).flatten(0, 1) for n, s in state.S.items()}
    prior = state_prior(spec, state, dtype)
    P = None if prior is None else {n: p.flatten(0, 1) for n, p in prior.items()}
    mem, ret = spec.memory, spec.retention
    cfg = Config(mem.activation, mem.norm_eps, mem.residual, spec.bias, tuple(spec.bias.gates),
                 ret if isinstance(ret, LqNormalization) else None)
    Y, A1, A2, S1, S2 = MLP2Chunks.apply(
        cfg, chunks(k), chunks(q), chunks(v), lr if channel_lr else None, co.decay, co.C, co.m, co.sdecay, co.Cs,
        A["W1"], A["W2"], *((None, None) if S is None else (S["W1"], S["W2"])),
        *((None, None) if P is None else (P["W1"], P["W2"])), *(chunks(gates[n]) for n in spec.bias.gates))
    y = Y.flatten(1, 2).unflatten(0, (B, H)).transpose(1, 2).to(q.dtype)

    def heads(x: Tensor) -> Tensor:
        return x.unflatten(0, (B, H))
    return y, MemoryState({"W1": heads(A1), "W2": heads(A2)},
                          None if S is None else {"W1": heads(S1), "W2": heads(S2)}, prior=prior)
