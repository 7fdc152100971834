"""One entry for every memory op: a spec and tensors in, the right kernel chosen.

    mode="auto"       the fastest exact path for the spec (`select_op` says which)
    mode="reference"  the token-by-token recurrence (the spec)
    mode="chunked"    like auto, but raises where only the reference applies
"""
from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from ..space import MirasSpec, bias
from ..space import algorithm as algorithms
from ..space.retention import decays_toward_prior
from ..errors import require
from .amp import without_autocast
from .attention import causal_attention
from .delta import chunk_gated_delta_rule, chunk_kda
from .documents import check_resets, run_documents
from .minibatch import chunk_minibatch
from .reference import recurrent_reference
from .ssd import chunk_gla
from .step import memory_step
from .state import MemoryState, RaggedState, check_inputs, check_tensors, check_token_offsets, initial_state

MODES = ("auto", "reference", "chunked")
CHECK_FINITE_ENV = "MIRAS_CHECK_FINITE"   # =1: report NaN / Inf in every op's inputs, outputs and states
EXACT_CHUNK = 64  # kernel chunk of the chunk-invariant ops (the function does not depend on it)
CHANNEL_CHUNK = 16  # chunk_kda's chunk: its in-chunk decays are [C, C, d_k] (C = 16: ~4x faster than 64)


def select_op(spec: MirasSpec) -> str:
    """'attention' | 'ssd' | 'delta' | 'minibatch' | 'reference' (no fast path). 'delta' with a per-channel decay
    (KDA) runs delta/channel.py's chunk_kda."""
    if isinstance(spec.algorithm, algorithms.NonParametric):
        return "attention"
    if isinstance(spec.algorithm, algorithms.Delta):
        return "delta"
    if (spec.memory.is_matrix and isinstance(spec.bias, bias.DotProduct) and spec.retention.identity_boundary
            and not spec.algorithm.momentum and not spec.per_channel("lr")
            and not getattr(spec.algorithm, "weighted", False)            # (weighted reads: TTT, LaCT)
            and not decays_toward_prior(spec.retention)):
        return "ssd"
    if spec.retention.per_channel:
        return "reference"
    return "minibatch"


def check_finite(where: str, tensors: dict[str, Tensor], per_token: tuple[str, ...] = ()) -> None:
    """FloatingPointError naming the first tensor with a NaN or Inf, and where it is (for the [B, T, ...] tensors
    named in per_token also the first token, over the whole batch, with one)."""
    for name, t in tensors.items():
        if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
            bad = ~torch.isfinite(t)
            index = tuple(torch.nonzero(bad)[0].tolist())
            token = f", first at token {_first_token(bad)}" if name in per_token else ""
            raise FloatingPointError(f"{where}: {name} has a non-finite value at index {index}{token} "
                                     f"(checked because {CHECK_FINITE_ENV}=1)")


def _first_token(bad: Tensor) -> int:
    """bad: [B, T, ...] bool -> the first t with any bad[:, t]."""
    return int(bad.transpose(0, 1).flatten(1).any(1).nonzero()[0])


@torch.no_grad()
def first_nonfinite_token(*xs: Tensor) -> int | None:
    """The first token t with a NaN or Inf in any x[:, t] of the [B, T, ...] tensors xs, None if all are finite.

    Cheap when all are finite: one sum per tensor and one sync (a NaN / Inf anywhere makes the sum non-finite;
    a sum that merely overflows costs the exact search, which then finds nothing). The per-token search runs
    only when the sum is not finite."""
    total = sum(x.sum(dtype=torch.promote_types(x.dtype, torch.float32)) for x in xs)
    if bool(torch.isfinite(total)):
        return None
    firsts = [_first_token(~torch.isfinite(x)) for x in xs if not bool(torch.isfinite(x).all())]
    return min(firsts) if firsts else None


@without_autocast     # the ops compute in >= float32 whatever autocast says (amp.py)
def memory_op(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor] | None = None,
              state: MemoryState | None = None, mode: str = "auto", checkpoint_chunks: int = 0,
              resets: Tensor | None = None, W0: dict[str, Tensor] | None = None,
              token_offsets: Tensor | None = None, compile: bool = False) -> tuple[Tensor, MemoryState]:
    """q, k: [B, T, H, d_k]; v: [B, T, H, d_v]; gates: spec.gates -> [B, T, H]; state: MemoryState
    (None: zeros, for matrix memories and attention). Returns (y [B, T, H, d_v], final state), equal to
    `recurrent_reference` with the same arguments whatever the mode.

    Non-finite inputs: a gate outside its range (NaN / Inf included) raises ConfigError. A NaN / Inf in q, k or v
    at token t leaves every output before t exact and finite, as in the recurrence (the call is split at the
    first such token: a chunked op would otherwise spread it back to the start of t's chunk), so the first
    non-finite output is at the first bad token. With MIRAS_CHECK_FINITE=1 in the environment, NaN / Inf in the
    inputs, the start state, the output or the final state raise FloatingPointError naming the tensor, the
    index and the first bad token (docs/ops/ssd.md, "Non-finite inputs").

    Packed documents (documents.py): resets [B, T] bool, True at a document's first token, where the memory
    restarts from W0 ([H, out, in], as `initial_state` takes it; None: zeros, for matrix memories and attention).
    Outputs, gradients and the final state equal one call per document; the final state is each row's after its
    last token (rows of the mini-batch engine must then end at the same offset of their chunk grids).

    token_offsets: TTT's learned offsets [chunk_size] of the token weights, for GD(token_weights=True) (None: zeros,
    TTT's 1/i; see space/algorithm.py).

    compile: run the chunked op through torch.compile in fixed-length segments (compiled.py; the same result,
    opt-in: docs/training.md, "Compiled ops")."""
    checking = os.environ.get(CHECK_FINITE_ENV) == "1"
    if checking:
        check_finite("memory_op input", {"q": q, "k": k, "v": v, **(gates or {}),
                                         **(state.tensors() if state is not None else {})},
                     per_token=("q", "k", "v", *(gates or {})))
    y, final = _memory_op(spec, q, k, v, gates, state, mode, checkpoint_chunks, resets, W0, token_offsets, compile)
    if checking:
        check_finite("memory_op output", {"y": y, **final.tensors()}, per_token=("y",))
    return y, final


def _memory_op(spec, q, k, v, gates, state, mode, checkpoint_chunks, resets=None, W0=None, token_offsets=None,
               compile=False):
    require(mode in MODES, "mode", mode, f"one of {MODES}", "'auto' picks the fastest exact path")
    gates = gates or {}
    if isinstance(state, RaggedState):                 # rows at different points of their grids: one call per part
        y, finals = None, []
        for rows, part in state.parts:
            r = rows.to(q.device)
            y_part, final = _memory_op(spec, q[r], k[r], v[r], {n: g[r] for n, g in gates.items()}, part, mode,
                                       checkpoint_chunks, None if resets is None else resets[rows.to(resets.device)], W0,
                                       token_offsets, compile)
            y = y_part.new_empty(q.shape[0], *y_part.shape[1:]) if y is None else y
            y = y.index_copy(0, r, y_part)
            finals.append((rows, final))
        return y, MemoryState.stack_rows(finals)
    op = "reference" if mode == "reference" else select_op(spec)
    require(not (mode == "chunked" and op == "reference"), "mode", mode, f"'auto' or 'reference' for {spec}",
            "per-channel decay has a chunked form only with the dot-product bias (GLA) or the delta rule (KDA)")
    if state is not None:
        check_tensors({"q": q, **{f"state.{n}": t for n, t in state.tensors().items()}})
    check_inputs(spec, q, k, v, gates)
    check_token_offsets(spec, token_offsets)
    B, T, H, d_k = k.shape
    if resets is not None:
        resets = check_resets(resets, B, T)
        require(W0 is not None or spec.memory.is_matrix or isinstance(spec.algorithm, algorithms.NonParametric), "W0",
                None, f"the memory at a document start for {spec.memory}", "pass W0 (e.g. the layer's W0)")
    if resets is not None and T and (resets[:, 1:].any() or (state is not None and resets[:, 0].any())):
        names = list(gates)

        def run(inputs, sub_state):
            if sub_state is None:
                sub_state = initial_state(spec, inputs[0].shape[0], W0, heads=H, d_k=d_k, d_v=v.shape[-1],
                                          dtype=q.dtype, device=q.device)
            y, final = _split_nonfinite(op, spec, *inputs[:3], dict(zip(names, inputs[3:])), sub_state,
                                        checkpoint_chunks, token_offsets, compile)
            return [y], final
        (y,), finals = run_documents(run, [q, k, v, *gates.values()], resets, state, lambda s, rows: s.rows(rows))
        return y, MemoryState.stack_rows(finals)
    if state is None and W0 is not None:
        state = initial_state(spec, B, W0)
    return _split_nonfinite(op, spec, q, k, v, gates, state, checkpoint_chunks, token_offsets, compile)


def _split_nonfinite(op, spec, q, k, v, gates, state, checkpoint_chunks, token_offsets=None, compile=False):
    run = _run
    if compile:
        from .compiled import segmented_run         # (imported when asked for: it imports torch._dynamo, a second)
        run = functools.partial(segmented_run, _run)
    t = first_nonfinite_token(q, k, v) if q.shape[1] > 1 else None     # (one token has nothing before it to spoil)
    if t:                                 # exact and finite up to t, whatever the op's chunking
        before, after = ({n: g[:, s] for n, g in gates.items()} for s in (slice(0, t), slice(t, None)))
        y0, state = run(op, spec, q[:, :t], k[:, :t], v[:, :t], before, state, checkpoint_chunks, token_offsets)
        y1, final = run(op, spec, q[:, t:], k[:, t:], v[:, t:], after, state, checkpoint_chunks, token_offsets)
        return torch.cat([y0, y1], dim=1), final
    return run(op, spec, q, k, v, gates, state, checkpoint_chunks, token_offsets)


def _run(op, spec, q, k, v, gates, state, checkpoint_chunks, token_offsets=None):
    if op == "reference":
        return recurrent_reference(spec, q, k, v, gates, state, token_offsets)
    B, T, H, d_k = k.shape
    if state is None:
        state = initial_state(spec, B, heads=H, d_k=d_k, d_v=v.shape[-1], dtype=q.dtype, device=q.device)
    if op == "attention":
        return causal_attention(q, k, v, state)
    if T <= getattr(spec.algorithm, "steps", 1):     # one token (DeltaProduct: its n_h sub-steps): step.py's update
        return memory_step(op, spec, q, k, v, gates, state, token_offsets)
    if op == "minibatch":
        return chunk_minibatch(spec, q, k, v, gates, state, checkpoint_chunks, token_offsets)
    S0 = state.A["W1"].transpose(-1, -2)                                   # miras W [d_v, d_k] -> fla S [K, V]
    if op == "ssd":
        g = gates.get("log_alpha", torch.zeros_like(gates["lr"]))
        y, S = chunk_gla(q, k, v * gates["lr"].unsqueeze(-1).to(v.dtype), g, scale=1.0, initial_state=S0,
                         output_final_state=True, chunk_size=EXACT_CHUNK)
    elif spec.retention.per_channel:
        y, S = chunk_kda(q, k, v, gates["log_alpha"], gates["lr"], scale=1.0, initial_state=S0, output_final_state=True,
                         chunk_size=CHANNEL_CHUNK)
    else:
        y, S = chunk_gated_delta_rule(q, k, v, g=gates.get("log_alpha"), beta=gates["lr"], scale=1.0,
                                      initial_state=S0, output_final_state=True, chunk_size=EXACT_CHUNK)
    return y, MemoryState({"W1": S.transpose(-1, -2)})
