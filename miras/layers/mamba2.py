"""Mamba-2 block (Dao & Gu 2024): in_proj, short conv + SiLU on (x, B, C), SSD + D x, gated RMSNorm, out_proj."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.ssd import ssd
from ..ops.step import ssd_step
from ..errors import require
from .conv import ShortConv


@dataclass
class Mamba2State:
    """conv: [B, conv_kernel - 1, d_inner + 2 ngroups d_state] the last conv inputs;
    ssm: [B, nheads, headdim, d_state] the SSD state h (at least fp32)."""
    conv: Tensor
    ssm: Tensor


class GatedRMSNorm(nn.Module):
    """y: [..., d], z: [..., d] -> RMSNorm(y * SiLU(z)) * weight over the last dim, computed in at least fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = torch.promote_types(y.dtype, torch.float32)
        g = y.to(dtype) * F.silu(z.to(dtype))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g * self.weight.to(dtype)).to(y.dtype)


class Mamba2(nn.Module):
    """The Mamba-2 token mixer. x: [B, T, d_model] -> y: [B, T, d_model]; forward(x, state) -> (y, Mamba2State).

    d_inner = expand * d_model splits into nheads = d_inner / headdim heads; B and C ([d_state] per token) are
    shared by the nheads / ngroups heads of a group. Per head h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,
    y_t = h_t C_t + D x_t (the exact chunked `ssd` op; chunk_size only sets its speed/memory trade-off).
    """

    def __init__(self, d_model: int, d_state: int = 128, headdim: int = 64, expand: int = 2, ngroups: int = 1,
                 conv_kernel: int = 4, chunk_size: int = 64, dt_min: float = 0.001, dt_max: float = 0.1,
                 A_init_range: tuple[float, float] = (1, 16)):
        super().__init__()
        d_inner = expand * d_model
        require(d_inner >= 1, "expand", expand, "an integer >= 1 (d_inner = expand * d_model)")
        require(headdim >= 1 and d_inner % headdim == 0, "headdim", headdim,
                f"a divisor of d_inner = expand * d_model = {d_inner}")
        nheads = d_inner // headdim
        require(ngroups >= 1 and nheads % ngroups == 0, "ngroups", ngroups, f"a divisor of nheads = {nheads}")
        require(d_state >= 1, "d_state", d_state, "an integer >= 1")
        require(conv_kernel >= 1, "conv_kernel", conv_kernel, "an integer >= 1")
        require(chunk_size >= 1, "chunk_size", chunk_size, "an integer >= 1")
        require(0 < dt_min <= dt_max, "dt_min, dt_max", (dt_min, dt_max), "0 < dt_min <= dt_max")
        require(len(A_init_range) == 2 and 0 < A_init_range[0] <= A_init_range[1], "A_init_range", A_init_range,
                "(low, high) with 0 < low <= high")
        self.d_inner, self.nheads, self.headdim, self.ngroups, self.d_state = d_inner, nheads, headdim, ngroups, d_state
        self.chunk_size = chunk_size
        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + conv_dim + nheads, bias=False)   # [z, (x, B, C), dt]
        self.conv = ShortConv(conv_dim, conv_kernel, activation=True)
        dt = torch.exp(torch.empty(nheads).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))                # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(nheads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: Tensor, state: Mamba2State | None = None) -> tuple[Tensor, Mamba2State]:
        T, G, N = x.shape[1], self.ngroups, self.d_state
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * G * N, self.nheads], dim=-1)
        xBC, conv_state = self.conv(xBC, None if state is None else state.conv)
        xs, B, C = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        dtype = torch.promote_types(x.dtype, torch.float32)
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))                      # [B, T, nheads]
        A = -self.A_log.to(dtype).exp()                                             # [nheads]
        args = (xs.unflatten(-1, (self.nheads, self.headdim)), dt, A, B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N)))
        h0 = None if state is None else state.ssm
        if T == 1:                                          # decoding: the recurrence's step, no chunk machinery
            y, ssm_state = ssd_step(*args, D=self.D, initial_states=h0)
        else:
            y, ssm_state = ssd(*args, chunk_size=max(1, min(self.chunk_size, T)), D=self.D, initial_states=h0,
                               return_final_states=True)
        return self.out_proj(self.norm(y.flatten(2), z)), Mamba2State(conv_state, ssm_state)
