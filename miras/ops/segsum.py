"""Segment sums and products: products of decays without dividing cumulative products (Mamba-2's idea)."""
from __future__ import annotations

import torch
from torch import Tensor


def segsum(x: Tensor) -> Tensor:
    """x: [..., n] log-decays -> [..., n, n] with out[..., t, s] = sum_{r=s+1}^{t} x_r for s <= t, -inf above.

    Each entry sums only its own terms (a masked cumsum), so a very negative x_r never cancels
    catastrophically against a later one, and exp(out) is the decay from s to t.
    """
    n = x.shape[-1]
    strict = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)
    xs = x.unsqueeze(-2).expand(*x.shape[:-1], n, n).transpose(-1, -2)      # [..., t, r] = x_t
    out = xs.masked_fill(~strict, 0).cumsum(dim=-2)                          # rows accumulate x_{s+1..t}
    return out.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), float("-inf"))


def segprod(x: Tensor) -> Tensor:
    """x: [..., n] factors in [0, 1] -> [..., n, n] with out[..., t, s] = prod_{r=s+1}^{t} x_r for s <= t, 0 above.

    For factors that may be exactly 0 (momentum's beta = 0): a product, not exp of a sum of logs, so a zero factor
    keeps its gradient (the product of the others) instead of a clamped log's zero gradient.
    """
    n = x.shape[-1]
    strict = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)
    xs = x.unsqueeze(-2).expand(*x.shape[:-1], n, n).transpose(-1, -2)      # [..., t, r] = x_t
    out = xs.masked_fill(~strict, 1).cumprod(dim=-2)                         # rows multiply x_{s+1..t}
    return out.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), 0)
