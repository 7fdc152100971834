"""The deep memory with a hand-written backward: the depth-2 MLP behind a LayerNorm, M(x) = [x +] LN(W2 act(W1 x)),
stepped by GD or momentum on any residual bias (L2: Titans, Memora; Lp: Moneta; Huber: Yaad), with a scalar or
channel-wise eta, a scalar decay per head (toward 0 or toward the initial state W0), and a chunk-end map from the
accumulator to the weights: none (Titans, Yaad), the Lq normalization (Moneta) or the row softmax (Memora), read
through their in-chunk frames. Derivation: docs/ops/minibatch.md section 9.

Per head and chunk of n tokens, with the chunk's coefficients (decay_t, C[t, r], m_t, sdecay_t, Cs[t, r]: `chunk.py`'s
`coefficients`, a scalar lr folded into C and Cs), its start state A = (A1, A2), S = (S1, S2), the prior P = (P1, P2)
(0 for a decay toward 0) and its anchor W_i = boundary(A_i) (A_i; c(A_i) A_i for Lq; k softmax(A_i) for softmax):

    Z1 = K W1^T,  H = act(Z1),  X, r = LN(H W2^T),  R = [K +] X - V
    E = lr . bias.grad(R),  G2 = LNback(E; X, r),  G1 = (G2 W2) act'(Z1)     the factors: token r's gradient of W2
                                                                             is G2_r H_r^T, of W1 is G1_r K_r^T
    A'_i = decay_n (A_i - P_i) + P_i + m_n S_i - sum_r C[n, r] outer(G_i,r, a_i,r)        (a_1 = K, a_2 = H)
    S'_i = sdecay_n S_i - sum_r Cs[n, r] outer(G_i,r, a_i,r)

The reads of a layer with input h (Q, then Hq; a = K, then H) use the dual form U of (A_t - f A_s) h' without
forming A_t:

    U = (decay - f) (h' A^T) + (1 - decay) (h' P^T) + m (h' S^T) - (C . h' a^T) G
    identity:  Z = U                                    (f = 0, h' = h)
    Lq:        Z = c_s U; the last token c(A') U       (f = 0, h' = h: W_t = c_s A_t, boundary(A') at the end)
    softmax:   Z = h W_s^T + s U; the last token h W'^T (f = 1, h' = h - mean(h), s = k / n_in: the Jacobian frame)

then Hq = act(Z1), Y = [Q +] LN(Z2). The forward loop over chunks runs only the state passing (the anchor, the
factors, then A', S'), and the reads of every chunk run at once after it. Backward does the reads' backward for all
chunks at once, then the reverse loop for the sequential part (the state's gradient through each chunk's update:
second order through the MLP, the LayerNorm and the bias at the anchor, and through the anchor's map), then the
per-token gradients for all chunks at once. Coefficients come in as tensors, so their gradients (and those of the
gates behind them) are autograd's.
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
from ...space.retention import Decay, KLSoftmax, LqNormalization, NoRetention
from ..amp import without_autocast
from ..state import MemoryState, state_prior
from .linear_ln import _ln, _ln_back, _mT

ACTS = ("gelu", "silu", "tanh")
BIASES = (L2, Lp, Huber)        # biases of the residual R = M(k) - v (so d/d v = -d/d R), each tested here
# Without autograd the generic engine is faster (this forward stacks what backward needs: 0.7x-0.9x at T = 2048)
TRAINING_ONLY = True


def applies(spec: MirasSpec) -> bool:
    """True for a depth-2 MLP memory with LayerNorm and no affine (the papers' deep memory), an L2, Lp or Huber bias,
    GD or momentum with a scalar or channel-wise eta, and a scalar decay per head (toward 0 or W0), none, or the Lq
    normalization or the softmax applied at chunk ends."""
    m, a, ret = spec.memory, spec.algorithm, spec.retention
    retention = (type(ret) is NoRetention or (type(ret) is Decay and not ret.per_channel)
                 or (type(ret) in (LqNormalization, KLSoftmax) and ret.boundary_at == "chunk-end"))
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


def _center(x: Tensor) -> Tensor:
    return x - x.mean(-1, keepdim=True)


def _last_row_apart(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [P, N, n, o] -> (x with its last rows zero, the last rows [P, N, 1, o])."""
    return torch.cat([x[..., :-1, :], torch.zeros_like(x[..., -1:, :])], -2), x[..., -1:, :]


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
    grad and grad_vjp) with the names of its gates, and the chunk-end map: None (the identity), an LqNormalization
    (its scale and scale_vjp) or a KLSoftmax (its row sum k)."""

    act: str
    eps: float
    residual: bool
    bias: object
    gate_names: tuple[str, ...] = ()
    retention: LqNormalization | KLSoftmax | None = None

    @property
    def kind(self) -> str:
        return {LqNormalization: "lq", KLSoftmax: "softmax"}.get(type(self.retention), "identity")

    def anchor(self, A: Tensor) -> tuple[Tensor, Tensor | None]:
        """The weights W = boundary(A) a chunk takes its gradients at, and Lq's normalizer c [P, 1, 1] (else None)."""
        if self.kind == "lq":
            c = self.retention.scale(A)
            return c * A, c
        if self.kind == "softmax":
            return self.retention.c(A.shape[-1]) * torch.softmax(A, -1), None
        return A, None

    def softmax_vjp(self, W: Tensor, dW: Tensor) -> Tensor:
        """dW of W = k softmax(A) (rows) taken back to A: W (dW - rowsum(dW W) / k)."""
        return W * (dW - (dW * W).sum(-1, keepdim=True) / self.retention.c(W.shape[-1]))

    @property
    def centered(self) -> bool:
        """Whether the softmax's in-chunk frame centres the layer input (in_chunk="jacobian")."""
        return self.kind == "softmax" and self.retention.in_chunk == "jacobian"

    def frame_scale(self, n_in: int) -> float:
        """The softmax's in-chunk frame scale s: k / n_in for the Jacobian frame, 1 for the identity."""
        return self.retention.c(n_in) / n_in if self.centered else 1.0


@dataclass
class _Reads:
    """One layer's read coefficients for every chunk, [P, N, n(, n)]: decay, the A_s weight ad = decay - f, C, m."""

    decay: Tensor
    ad: Tensor
    C: Tensor
    m: Tensor | None

    @classmethod
    def of(cls, cfg: Config, decay: Tensor, C: Tensor, m: Tensor | None) -> _Reads:
        """From the coefficients decay, m [P, N, n] and C: f = 1 for the softmax's frame (module docstring), else 0."""
        dec = decay.unsqueeze(-1)
        return cls(dec, dec - 1.0 if cfg.kind == "softmax" else dec, C, None if m is None else m.unsqueeze(-1))


def _read(co: _Reads, h: Tensor, a: Tensor, G: Tensor, As: Tensor, Ss: Tensor | None, P: Tensor | None
          ) -> tuple[Tensor, Tensor]:
    """One layer's dual-form reads U of every chunk (module docstring) for the input h' [P, N, n, i], the chunk's
    inputs a and factors G of that layer -> (U [P, N, n, o], h' a^T)."""
    ha = h @ _mT(a)                                                     # (C is 0 above the diagonal)
    U = co.ad * (h @ _mT(As)) - (co.C * ha) @ G
    if P is not None:
        U = torch.addcmul(U, 1.0 - co.decay, _each(h, _mT(P)))
    if Ss is not None:
        U = U + co.m * (h @ _mT(Ss))
    return U, ha


def _read_back(co: _Reads, dU: Tensor, h: Tensor, a: Tensor, G: Tensor, ha: Tensor, As: Tensor, Ss: Tensor | None,
               P: Tensor | None) -> dict[str, Tensor | None]:
    """`_read`'s backward for every chunk at once, except the state-sized gradients (one per chunk, formed in the
    reverse loop from the rows rA, rS: dA_s = rA^T h', dS_s = rS^T h'). -> d h', d a, d G, d C, d decay, d m, rA,
    rS, d P."""
    dR = co.C * (dU @ _mT(G))                                          # minus d loss / d (C . h' a^T), masked by C
    dh = (co.ad * dU) @ As - dR @ a
    out = {"a": -(_mT(dR) @ h), "G": -(_mT(co.C * ha) @ dU), "C": -(dU @ _mT(G)) * ha, "rA": co.ad * dU,
           "m": None, "rS": None, "P": None}
    hA = h @ _mT(As)
    if P is not None:
        pU = (1.0 - co.decay) * dU
        dh = dh + _each(pU, P)
        hA = hA - _each(h, _mT(P))
        out["P"] = _mT(pU.flatten(1, 2)) @ h.flatten(1, 2)
    out["decay"] = (dU * hA).sum(-1)
    if Ss is not None:
        dh = dh + (co.m * dU) @ Ss
        out["m"], out["rS"] = (dU * (h @ _mT(Ss))).sum(-1), co.m * dU
    out["h"] = dh
    return out


class MLP2Chunks(torch.autograd.Function):
    """Full chunks, P = B H heads: K, Q, V [P, N, n, d]; LR [P, N, n, d] (channel-wise eta) or None; decay
    [P, N, n], C [P, N, n, n]; with momentum m, sdecay [P, N, n], Cs [P, N, n, n], else None; A1 [P, h, d], A2
    [P, d, h], S1, S2 likewise or None; P1, P2 (the prior) likewise or None; the bias' gates [P, N, n(, d)].
    -> (Y [P, N, n, d], A1', A2', S1', S2' after the last chunk; S' None without momentum)."""

    @staticmethod
    def forward(ctx, cfg: Config, K, Q, V, LR, decay, C, m, sdecay, Cs, A1, A2, S1, S2, P1, P2, *bgates):
        mom, prior, kind, N = S1 is not None, P1 is not None, cfg.kind, K.shape[1]
        starts, saved, anchors = [], [], []
        for c in range(N):                                                      # the state passing
            Kc = K[:, c]
            starts.append((A1, A2, S1, S2))
            (W1, c1), (W2, c2) = cfg.anchor(A1), cfg.anchor(A2)
            anchors.append((W1, W2, c1, c2))
            Z1 = Kc @ _mT(W1)
            H = activation(cfg.act, Z1)
            X, r = _ln(H @ _mT(W2), cfg.eps)
            Pred = Kc + X if cfg.residual else X
            Gb = cfg.bias.grad(Pred, V[:, c], {name: g[:, c] for name, g in zip(cfg.gate_names, bgates)})
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
        cs1 = cs2 = W1a = W2a = None
        if kind != "identity":
            (W1, c1), (W2, c2) = cfg.anchor(A1), cfg.anchor(A2)             # the end state's, read by the last token
            anchors.append((W1, W2, c1, c2))
        if kind == "lq":
            cs1, cs2 = (torch.stack([a[i].flatten() for a in anchors], 1) for i in (2, 3))     # [P, N + 1]
        elif kind == "softmax":
            W1a, W2a = (torch.stack([a[i] for a in anchors], 1) for i in (0, 1))            # [P, N + 1, out, in]
        # the reads of every chunk
        co = _Reads.of(cfg, decay, C, m)
        centered = cfg.centered
        Qc = _center(Q) if centered else Q
        U1, QK = _read(co, Qc, K, G1, A1s, S1s, P1)
        Zq1 = _frame(cfg, U1, Q, W1a, cs1)
        Hq = activation(cfg.act, Zq1)
        Hqc = _center(Hq) if centered else Hq
        U2, HH = _read(co, Hqc, H, G2, A2s, S2s, P2)
        Xq, rq = _ln(_frame(cfg, U2, Hq, W2a, cs2), cfg.eps)
        Y = Q + Xq if cfg.residual else Xq
        ctx.save_for_backward(K, Q, V, LR, decay, C, m, sdecay, Cs, A1s, A2s, S1s, S2s, P1, P2,
                              A1 if kind == "lq" else None, A2 if kind == "lq" else None, cs1, cs2, W1a, W2a,
                              Z1, H, X, r, G1, G2, Pred, Gb, QK, U1, Zq1, Hq, HH, U2, Xq, rq, *bgates)
        ctx.cfg = cfg
        return Y, A1, A2, S1, S2

    @staticmethod
    @without_autocast
    def backward(ctx, dY, dA1_end, dA2_end, dS1_end, dS2_end):
        (K, Q, V, LR, decay, C, m, sdecay, Cs, A1s, A2s, S1s, S2s, P1, P2, A1e, A2e, cs1, cs2, W1a, W2a,
         Z1, H, X, r, G1, G2, Pred, Gb, QK, U1, Zq1, Hq, HH, U2, Xq, rq, *bgates) = ctx.saved_tensors
        cfg = ctx.cfg
        act, kind, mom, prior, N = cfg.act, cfg.kind, S1s is not None, P1 is not None, K.shape[1]
        co = _Reads.of(cfg, decay, C, m)
        centered = cfg.centered
        Qc = _center(Q) if centered else Q
        Hqc = _center(Hq) if centered else Hq
        # the reads, every chunk at once (layer 2, then layer 1); dU = d loss / d U
        dZq2 = _ln_back(dY, Xq, rq)
        dU2, dcs2, dZin2, dZl2, dHq = _frame_back(cfg, dZq2, U2, Hq, W2a, cs2)
        g2 = _read_back(co, dU2, Hqc, H, G2, HH, A2s, S2s, P2)
        dHq = dHq + (_center(g2["h"]) if centered else g2["h"])
        dZq1 = dHq * activation_grad(act, Zq1)
        dU1, dcs1, dZin1, dZl1, dQ = _frame_back(cfg, dZq1, U1, Q, W1a, cs1)
        g1 = _read_back(co, dU1, Qc, K, G1, QK, A1s, S1s, P1)
        dQ = dQ + (_center(g1["h"]) if centered else g1["h"]) + (dY if cfg.residual else 0.0)
        dK, dH_read, dG1_read, dG2_read = g1["a"], g2["a"], g1["G"], g2["G"]
        dC, ddecay = g1["C"] + g2["C"], g1["decay"] + g2["decay"]
        rA1, rA2, rS1, rS2 = g1["rA"], g2["rA"], g1["rS"], g2["rS"]
        dP1, dP2 = g1["P"], g2["P"]
        # the sequential part, last chunk first: dA*, dS* = d loss / d the chunk's end state
        dA1, dA2 = (torch.zeros_like(A1s[:, 0]) if g is None else g for g in (dA1_end, dA2_end))
        dS1, dS2 = ((torch.zeros_like(S1s[:, 0]) if g is None else g for g in (dS1_end, dS2_end)) if mom
                    else (None, None))
        if kind == "lq":                              # the last read's normalizer is c(A') of the final state
            dA1 = dA1 + cfg.retention.scale_vjp(A1e, _scal(cs1[:, N]), _scal(dcs1[:, N]))
            dA2 = dA2 + cfg.retention.scale_vjp(A2e, _scal(cs2[:, N]), _scal(dcs2[:, N]))
        elif kind == "softmax":                       # the last token reads W' = boundary(A') of the final state
            dA1 = dA1 + cfg.softmax_vjp(W1a[:, N], _mT(dZl1[:, N - 1]) @ Q[:, N - 1, -1:])
            dA2 = dA2 + cfg.softmax_vjp(W2a[:, N], _mT(dZl2[:, N - 1]) @ Hq[:, N - 1, -1:])
        E = Gb if LR is None else LR * Gb
        bX = (E * X).mean(-1, keepdim=True)                              # (b in dX below)
        dZ1s, dEs, dRs, dKe, dCl, dCsl, dDl, dMl, dSl, dgs = [], [], [], [], [], [], [], [], [], []
        for c in range(N - 1, -1, -1):
            Kc, Hc, G1c, G2c, Z1c, Xc, rc = K[:, c], H[:, c], G1[:, c], G2[:, c], Z1[:, c], X[:, c], r[:, c]
            A1c, A2c = A1s[:, c], A2s[:, c]
            W2c = W2a[:, c] if kind == "softmax" else A2c if kind == "identity" else _scal(cs2[:, c]) * A2c
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
                dS1 = torch.baddbmm(torch.addcmul(ml * dA1, sl, dS1), _mT(rS1[:, c]), Qc[:, c])
                dS2 = torch.baddbmm(torch.addcmul(ml * dA2, sl, dS2), _mT(rS2[:, c]), Hqc[:, c])
            if prior:
                dP1, dP2 = torch.addcmul(dP1, 1.0 - dl, dA1), torch.addcmul(dP2, 1.0 - dl, dA2)
            # d loss / d A: decayed into A', read by the chunk (the dual form), and through the anchor W: the factors
            # (W1 in Z1, W2 in G1 and Z2) and, for the softmax, the frame's W_s h and the previous chunk's last read
            # (the reads' terms here, not for all chunks at once: that would be a state-sized tensor per chunk)
            nA1 = torch.baddbmm(dl * dA1, _mT(rA1[:, c]), Qc[:, c])
            nA2 = torch.baddbmm(dl * dA2, _mT(rA2[:, c]), Hqc[:, c])
            if kind == "identity":
                nA1 = torch.baddbmm(nA1, _mT(dZ1), Kc)
                nA2 = torch.baddbmm(torch.baddbmm(nA2, _mT(G2c), Gam), _mT(dZ2), Hc)
            elif kind == "lq":       # W = c A: through A (c x the factors' products) and through c (module docstring)
                c1, c2 = _scal(cs1[:, c]), _scal(cs2[:, c])
                nA1 = torch.baddbmm(nA1, _mT(c1 * dZ1), Kc)
                nA2 = torch.baddbmm(torch.baddbmm(nA2, _mT(c2 * G2c), Gam), _mT(c2 * dZ2), Hc)
                dc1 = (dZ1 * Z1c).sum((-2, -1)) / cs1[:, c] + dcs1[:, c]
                dc2 = ((Gam * G2W2).sum((-2, -1)) + (dZ2 * Xc / rc).sum((-2, -1))) / cs2[:, c] + dcs2[:, c]
                nA1 = nA1 + cfg.retention.scale_vjp(A1c, c1, _scal(dc1))
                nA2 = nA2 + cfg.retention.scale_vjp(A2c, c2, _scal(dc2))
            else:                    # W = k softmax(A): d loss / d W, then the softmax's backward
                gW1 = torch.baddbmm(_mT(dZin1[:, c]) @ Q[:, c], _mT(dZ1), Kc)
                gW2 = torch.baddbmm(torch.baddbmm(_mT(dZin2[:, c]) @ Hq[:, c], _mT(G2c), Gam), _mT(dZ2), Hc)
                if c > 0:
                    gW1 = torch.baddbmm(gW1, _mT(dZl1[:, c - 1]), Q[:, c - 1, -1:])
                    gW2 = torch.baddbmm(gW2, _mT(dZl2[:, c - 1]), Hq[:, c - 1, -1:])
                nA1 = nA1 + cfg.softmax_vjp(W1a[:, c], gW1)
                nA2 = nA2 + cfg.softmax_vjp(W2a[:, c], gW2)
            dA1, dA2 = nA1, nA2
        dZ1, dE, dR, dKe, dCl, dDl = (torch.stack(t[::-1], 1) for t in (dZ1s, dEs, dRs, dKe, dCl, dDl))
        # per-token gradients of the updates, every chunk at once
        dKz = dZ1 @ (W1a[:, :N] if kind == "softmax" else A1s)                  # Z1 = K W1^T, W1 the anchor
        if kind == "lq":
            dKz = cs1[:, :N, None, None] * dKz
        dK = dK + dKz + dKe + (dR if cfg.residual else 0.0)
        dLR = None if LR is None else Gb * dE
        dgates = [torch.stack([g[name] for g in dgs[::-1]], 1) for name in cfg.gate_names]
        dC = torch.tril(dC)
        dC[..., -1, :] += dCl
        ddecay[..., -1] += dDl
        dm_out = dsdecay = dCs = None
        if mom:
            dCsl, dMl, dSl = (torch.stack(t[::-1], 1) for t in (dCsl, dMl, dSl))
            dm = g1["m"] + g2["m"]
            dm[..., -1] += dMl
            dm_out = dm
            dsdecay = torch.zeros_like(sdecay)
            dsdecay[..., -1] = dSl
            dCs = torch.zeros_like(Cs)
            dCs[..., -1, :] = dCsl
        return (None, dK, dQ, -dR, dLR, ddecay, dC, dm_out, dsdecay, dCs, dA1, dA2, dS1, dS2, dP1, dP2, *dgates)


def _frame(cfg: Config, U: Tensor, h: Tensor, Wa: Tensor | None, cs: Tensor | None) -> Tensor:
    """A layer's pre-activations Z [P, N, n, o] from its dual-form reads U (module docstring): U for the identity;
    the chunk start's normalizer times U, and the next one's for the last token (Lq); h W_s^T + s U, and h W'^T for
    the last token (softmax; Wa: the anchors of every chunk start and the end, [P, N + 1, o, i])."""
    if cfg.kind == "lq":
        return _row_scales(cs, U.shape[-2]) * U
    if cfg.kind == "softmax":
        Z = h @ _mT(Wa[:, :-1]) + cfg.frame_scale(h.shape[-1]) * U
        return torch.cat([Z[..., :-1, :], h[..., -1:, :] @ _mT(Wa[:, 1:])], -2)
    return U


def _frame_back(cfg: Config, dZ: Tensor, U: Tensor, h: Tensor, Wa: Tensor | None, cs: Tensor | None):
    """`_frame`'s backward -> (dU; Lq: the normalizers' gradients [P, N + 1]; softmax: dZ of the frame rows and of
    the last rows (whose state-sized gradients the reverse loop forms); d h through the anchors' products)."""
    if cfg.kind == "lq":
        return _row_scales(cs, U.shape[-2]) * dZ, _read_scale_grads((dZ * U).sum(-1)), None, None, 0.0
    if cfg.kind == "softmax":
        dZin, dZl = _last_row_apart(dZ)
        dh = dZin @ Wa[:, :-1]
        dh = torch.cat([dh[..., :-1, :], dh[..., -1:, :] + dZl @ Wa[:, 1:]], -2)
        return cfg.frame_scale(h.shape[-1]) * dZin, None, dZin, dZl, dh
    return dZ, None, None, None, 0.0


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
                 ret if isinstance(ret, (LqNormalization, KLSoftmax)) else None)
    Y, A1, A2, S1, S2 = MLP2Chunks.apply(
        cfg, chunks(k), chunks(q), chunks(v), lr if channel_lr else None, co.decay, co.C, co.m, co.sdecay, co.Cs,
        A["W1"], A["W2"], *((None, None) if S is None else (S["W1"], S["W2"])),
        *((None, None) if P is None else (P["W1"], P["W2"])), *(chunks(gates[n]) for n in spec.bias.gates))
    y = Y.flatten(1, 2).unflatten(0, (B, H)).transpose(1, 2).to(q.dtype)

    def heads(x: Tensor) -> Tensor:
        return x.unflatten(0, (B, H))
    return y, MemoryState({"W1": heads(A1), "W2": heads(A2)},
                          None if S is None else {"W1": heads(S1), "W2": heads(S2)}, prior=prior)
