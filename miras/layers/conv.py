"""Depthwise causal short convolution (kernel 4 in Mamba-2, Titans, MIRAS) with a decoding state."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShortConv(nn.Module):
    """y_t = sum_{i<K} w_i x_{t-i} per channel, then an optional SiLU.

    x: [B, T, C]; state: the last K - 1 inputs [B, K - 1, C] (zeros before the first token).
    forward(x, state) -> (y, new_state), so a sequence split anywhere gives the same output.
    One token (T = 1, decoding) is the K-tap dot product of the weights with [state, x] per channel, without
    conv1d (whose call costs several times the product at this size); the same values up to rounding.
    """

    def __init__(self, channels: int, kernel: int = 4, activation: bool = True):
        super().__init__()
        self.kernel, self.activation = kernel, activation
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, T, C = x.shape
        if state is None:
            state = x.new_zeros(B, self.kernel - 1, C)
        full = torch.cat([state.to(x.dtype), x], dim=1)                     # [B, K - 1 + T, C]
        if T == 0:                                                           # nothing read: the state as it was
            return x, full
        if T == 1:                                                           # [B, K, C] . w [K, C] over the taps
            y = (full * self.weight.squeeze(1).t()).sum(1, keepdim=True) + self.bias
        else:
            y = F.conv1d(full.transpose(1, 2), self.weight, self.bias, groups=C).transpose(1, 2)
        return (F.silu(y) if self.activation else y), full[:, -(self.kernel - 1):] if self.kernel > 1 else full[:, :0]
