"""One entry for every memory op: a spec and tensors in, the right kernel chosen.

    mode="auto"       the fastest exact path for the spec (`select_op` says which)
    mode="reference"  the token-by-token recurrence (the spec)
    mode="chunked"    like auto, but raises where only the reference applies
"""
from __future__ import annotations

import os

import torch
from torch import Tensor

from ..spec import MirasSpec, bias, optim
from ..spec.errors import require
from .attention import causal_attention
from .delta import chunk_gated_delta_rule
from .minibatch import chunk_minibatch
from .reference import recurrent_reference
from .ssd import chunk_gla
from .state import MemoryState, check_inputs, check_tensors, initial_state

MODES = ("auto", "reference", "chunked")
CHECK_FINITE_ENV = "MIRAS_CHECK_FINITE"   # =1: report NaN / Inf in every op's inputs, outputs and states
EXACT_CHUNK = 64  # kernel chunk of the chunk-invariant ops (the function does not depend on it)


def select_op(spec: MirasSpec) -> str:
    """'attention' | 'ssd' | 'delta' | 'minibatch' | 'reference' (no fast path)."""
    if isinstance(spec.algorithm, optim.NonParametric):
        return "attention"
    if isinstance(spec.algorithm, optim.Delta):
        return "delta"
    if (spec.memory.is_matrix and isinstance(spec.bias, bias.DotProduct) and spec.retention.identity_boundary
            and not spec.algorithm.momentum):
        return "ssd"
    if spec.retention.per_channel:
        return "reference"
    return "minibatch"


def check_finite(where: str, tensors: dict[str, Tensor]) -> None:
    """FloatingPointError naming the first tensor with a NaN or Inf, and where it is."""
    for name, t in tensors.items():
        if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
            index = tuple(torch.nonzero(~torch.isfinite(t))[0].tolist())
            raise FloatingPointError(f"{where}: {name} has a non-finite value at index {index} "
                                     f"(checked because {CHECK_FINITE_ENV}=1)")


def memory_op(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None,
              state: MemoryState | None = None, mode: str = "auto", checkpoint_chunks: int = 0
              ) -> tuple[Tensor, MemoryState]:
    """q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; gates: spec.gates -> [B, T, H]; state: MemoryState
    (None: zeros, for matrix memories and attention). Returns (y [B, T, H, d_v], final state), equal to
    `recurrent_reference` with the same arguments whatever the mode. With MIRAS_CHECK_FINITE=1 in the
    environment, NaN / Inf in the inputs, the start state, the output or the final state raise."""
    checking = os.environ.get(CHECK_FINITE_ENV) == "1"
    if checking:
        check_finite("memory_op input", {"q": q, "k": k, "v": v, **(gates or {}),
                                         **(state.tensors() if state is not None else {})})
    y, final = _memory_op(spec, q, k, v, gates, state, mode, checkpoint_chunks)
    if checking:
        check_finite("memory_op output", {"y": y, **final.tensors()})
    return y, final


def _memory_op(spec, q, k, v, gates, state, mode, checkpoint_chunks):
    require(mode in MODES, "mode", mode, f"one of {MODES}", "'auto' picks the fastest exact path")
    gates = gates or {}
    op = "reference" if mode == "reference" else select_op(spec)
    require(not (mode == "chunked" and op == "reference"), "mode", mode, f"'auto' or 'reference' for {spec}",
            "per-channel decay with a non-dot-product bias has no chunked form yet")
    if state is not None:
        check_tensors({"q": q, **{f"state.{n}": t for n, t in state.tensors().items()}})
    if op == "reference":
        return recurrent_reference(spec, q, k, v, gates, state)
    check_inputs(spec, q, k, v, gates)
    B, T, H, d_k = k.shape
    if state is None:
        state = initial_state(spec, B, heads=H, d_k=d_k, d_v=v.shape[-1], dtype=q.dtype, device=q.device)
    if op == "attention":
        return causal_attention(q, k, v, state)
    if op == "minibatch":
        return chunk_minibatch(spec, q, k, v, gates, state, checkpoint_chunks)
    S0 = state.A["W1"].transpose(-1, -2)                                   # miras W [d_v, d_k] -> fla S [K, V]
    if op == "ssd":
        g = gates.get("log_alpha", torch.zeros_like(gates["lr"]))
        y, S = chunk_gla(q, k, v * gates["lr"].unsqueeze(-1).to(v.dtype), g, scale=1.0, initial_state=S0,
                         output_final_state=True, chunk_size=EXACT_CHUNK)
    else:
        y, S = chunk_gated_delta_rule(q, k, v, g=gates.get("log_alpha"), beta=gates["lr"], scale=1.0,
                                      initial_state=S0, output_final_state=True, chunk_size=EXACT_CHUNK)
    return y, MemoryState({"W1": S.transpose(-1, -2)})
