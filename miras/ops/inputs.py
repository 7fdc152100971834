"""Random but realistic op inputs (normalized q/k, bounded gates): for tests, demos and benchmarks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..space import MirasSpec
from ..space.registry import GATES
from .state import MemoryState, initial_state


def random_inputs(spec: MirasSpec, batch: int = 2, seqlen: int = 16, heads: int = 2, d_k: int = 8, d_v: int | None = None,
                  dtype: torch.dtype = torch.float64, seed: int = 0, requires_grad: bool = False
                  ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], MemoryState]:
    """q, k [B, T, H, d_k] (unit norm), v [B, T, H, d_v], the spec's gates, and a start state with a
    random W0 (and random momentum; for a decay toward W0, the prior W0 and A = W0 + noise) so that every gradient
    path is exercised.

    With requires_grad, q, k, v, the gates and the state's tensors are leaves that require grad.
    """
    d_v = d_v or d_k
    gen = torch.Generator().manual_seed(seed)
    # drawn in float64 and cast, so that the float32 inputs are the float64 ones rounded (torch draws other numbers
    # per dtype): float32 runs are then comparable with float64 runs of the same seed
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)  # noqa: E731
    q = F.normalize(rand(batch, seqlen, heads, d_k), dim=-1)
    k = F.normalize(rand(batch, seqlen, heads, d_k), dim=-1)
    v = rand(batch, seqlen, heads, d_v)
    deep = hasattr(spec.memory, "init_state") and not spec.memory.is_matrix
    gates = {}
    for name in spec.gates:           # a typical value of each gate (registry.Gate.sample) from N(0, 1) noise
        shape = spec.gate_shape(name, batch, seqlen, heads, d_k, d_v)
        gates[name] = GATES[name].sample(rand(*shape))
    if "lr" in gates:
        gates["lr"] = gates["lr"] * (0.1 if deep else 1.0)           # deep memories take smaller steps
    if deep:
        W0 = {n: w.to(dtype) for n, w in spec.memory.init_state(heads, d_k, d_v, generator=gen).items()}
        state = initial_state(spec, batch, W0)
    else:
        state = initial_state(spec, batch, heads=heads, d_k=d_k, d_v=d_v, dtype=dtype)
        if "W1" in state.A:
            state.A["W1"] = 0.1 * rand(*state.A["W1"].shape)
    if state.S is not None:
        state.S = {n: 0.01 * rand(*s.shape) for n, s in state.S.items()}
    if state.prior is not None:          # a decay toward W0: A away from its prior, as after some tokens
        state.A = {n: a + 0.1 * rand(*a.shape) for n, a in state.A.items()}
    if requires_grad:
        for t in [q, k, v, *gates.values(), *state.tensors().values()]:      # (A, S, the Omega bias' window)
            t.requires_grad_(True)
    return q, k, v, gates, state
