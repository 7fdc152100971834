"""The recurrent state every op takes and returns, and the checks on gate tensors."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..space import MirasSpec
from ..errors import require
from ..space.memory import NonParametric
from ..space.registry import GATES
from ..space.retention import decays_toward_prior, uses_frame


@dataclass
class MemoryState:
    """What a memory layer carries from one call to the next, per batch row and head.

    A: the accumulator, name -> [B, H, out, in] (for attention: the KV cache, "k"/"v" -> [B, H, n, d]).
    S: the momentum, same shapes as A, or None without momentum.
    anchor: the memory at which the open chunk's gradients are taken (None at a chunk boundary,
        where it is boundary(A)); needed to continue a chunk across calls.
    offset: tokens already in the open chunk, in [0, chunk_size).
    start: the accumulator A at the open chunk's start, for retention gates whose reads inside a chunk
        are a linear map frozen there (`retention.frame`: Moneta, Memora, elastic net) and for TTT's token
        weights (reads W_s + tau (A_t - W_s)); None otherwise.
    window: the Omega bias' last c - 1 tokens before the next one (c = bias.window > 1), "k" [B, H, c-1, d_k],
        "v" [B, H, c-1, d_v], "gamma" [B, H, c-1], oldest first: zeros with gamma = 0 before a stream's first token
        (they add nothing); None otherwise (for the Omega bias: no token before, a fresh start).
    prior: the initial state W0 that a retention with toward="init" decays A toward (`decays_toward_prior`), same
        shapes as A; None otherwise. It is constant along a stream and is carried so that every call sees it.
    """

    A: dict[str, Tensor]
    S: dict[str, Tensor] | None = None
    anchor: dict[str, Tensor] | None = None
    offset: int = 0
    start: dict[str, Tensor] | None = None
    window: dict[str, Tensor] | None = None
    prior: dict[str, Tensor] | None = None

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor view (for comparisons and saving)."""
        return {f"{prefix}.{n}": t for prefix, group in self.groups().items() for n, t in (group or {}).items()}

    def groups(self) -> dict[str, dict[str, Tensor] | None]:
        return {"A": self.A, "S": self.S, "anchor": self.anchor, "start": self.start, "window": self.window,
                "prior": self.prior}

    def rows(self, index: Tensor) -> "MemoryState":
        """The batch rows `index` (int64 [n]) of every tensor."""
        def take(group):
            return None if group is None else {n: t[index.to(t.device)] for n, t in group.items()}
        return MemoryState(**{name: take(g) for name, g in self.groups().items()}, offset=self.offset)

    @staticmethod
    def stack_rows(parts: list[tuple[Tensor, "MemoryState"]]) -> "MemoryState | RaggedState":
        """One state from (rows, state of those rows) parts that cover rows 0..B-1 once: a MemoryState where the
        parts agree on the open chunk (offset, which of S / anchor / start / window they carry) and, for attention,
        the cache length; a RaggedState of the parts otherwise."""
        parts = [(rows, p) for rows, s in parts for rows, p in _flat_parts(rows, s)]
        states = [s for _, s in parts]
        shapes = {(s.offset, *(tuple(t.shape[1:]) for t in s.tensors().values()), *s.tensors()) for s in states}
        if len(shapes) > 1:
            return RaggedState(parts)
        order = torch.argsort(torch.cat([rows for rows, _ in parts]))

        def cat(name):
            group = states[0].groups()[name]
            if group is None:
                return None
            return {n: torch.cat([s.groups()[name][n] for s in states])[order.to(group[n].device)] for n in group}
        return MemoryState(**{name: cat(name) for name in states[0].groups()}, offset=states[0].offset)


def _flat_parts(rows: Tensor, state) -> list[tuple[Tensor, MemoryState]]:
    """(rows, state) with a RaggedState's parts mapped to the given rows."""
    if isinstance(state, RaggedState):
        return [(rows[r], s) for r, s in state.parts]
    return [(rows, state)]


@dataclass
class RaggedState:
    """The state of rows that stopped at different points of their chunk grids (or, for attention, with caches of
    different lengths) after a call with packed documents: parts of (rows int64 [n], MemoryState of those rows),
    covering every row once. memory_op continues it (one call per part); a single MemoryState cannot hold it."""

    parts: list[tuple[Tensor, MemoryState]]

    def tensors(self) -> dict[str, Tensor]:
        return {f"part{i}.{n}": t for i, (_, s) in enumerate(self.parts) for n, t in s.tensors().items()}

    def rows(self, index: Tensor) -> "MemoryState | RaggedState":
        """The batch rows `index` (int64 [n]), in that order."""
        index = index.cpu()
        picked = []
        for rows, s in self.parts:
            hit = (rows[None, :] == index[:, None])          # [n, part rows]
            where, local = hit.nonzero(as_tuple=True)
            if len(where):
                picked.append((where, s.rows(local)))
        return MemoryState.stack_rows(picked)


def initial_state(spec: MirasSpec, batch: int, W0: dict[str, Tensor] | None = None, *, heads: int | None = None,
                  d_k: int | None = None, d_v: int | None = None, dtype=torch.float32, device=None) -> MemoryState:
    """The state before the first token: W0 ([H, out, in] or [B, H, out, in]) broadcast over the batch,
    zero momentum, and for the Omega bias an empty window (zeros, gamma = 0). Without W0 a matrix memory starts at
    zero (heads, d_k, d_v needed). A retention that decays toward the initial state keeps W0 as the state's prior."""
    if isinstance(spec.memory, NonParametric):
        shape = (batch, heads, 0)
        return MemoryState({"k": torch.zeros(*shape, d_k, dtype=dtype, device=device),
                            "v": torch.zeros(*shape, d_v, dtype=dtype, device=device)})
    if W0 is None:
        require(spec.memory.is_matrix, "W0", None, "a dict of [H, out, in] tensors for a deep memory",
                "pass W0=spec.memory.init_state(heads, d_k, d_v) or a layer's learnable W0")
        W0 = {n: torch.zeros(heads, o, i, dtype=dtype, device=device)
              for n, (o, i) in spec.memory.shapes(d_k, d_v).items()}
    A = {n: (w if w.dim() == 4 else w.unsqueeze(0).expand(batch, *w.shape)) for n, w in W0.items()}
    S = {n: torch.zeros_like(a) for n, a in A.items()} if spec.algorithm.momentum else None
    first, last = A[spec.memory.layers[0]], A[spec.memory.layers[-1]]
    return MemoryState(A, S, window=empty_window(spec, batch, first.shape[1], first.shape[-1], last.shape[-2],
                                                 first.dtype, first.device),
                       prior=dict(A) if decays_toward_prior(spec.retention) else None)


def window_size(spec: MirasSpec) -> int:
    """c - 1: the tokens before each token that its step's loss reads (the Omega bias' window c; 0 otherwise)."""
    return getattr(spec.bias, "window", 1) - 1


def empty_window(spec: MirasSpec, batch: int, heads: int, d_k: int, d_v: int, dtype=torch.float32, device=None
                 ) -> dict[str, Tensor] | None:
    """The Omega bias' window before a stream's first token: c - 1 zero keys and values with gamma = 0 (None for
    every other bias, and for c = 1)."""
    n = window_size(spec)
    if n == 0:
        return None
    zeros = lambda *shape: torch.zeros(batch, heads, n, *shape, dtype=dtype, device=device)  # noqa: E731
    return {"k": zeros(d_k), "v": zeros(d_v), "gamma": zeros()}


def carries_start(spec: MirasSpec) -> bool:
    """Whether reads inside a chunk need the chunk's start accumulator (MemoryState.start)."""
    return uses_frame(spec.retention) or getattr(spec.algorithm, "weighted", False)


def close_chunk(spec: MirasSpec, start: dict[str, Tensor], A: dict[str, Tensor], end) -> dict[str, Tensor]:
    """The state a chunk with weighted reads leaves (GD.weighted: TTT's token weights, LaCT's chunk-start reads):
    W_s + end U(A - W_s), U the algorithm's update map (Newton-Schulz with muon), then the retention's projection
    relative to W_s where it has one (RowNorm: every row to W_s's row norm). end: the algorithm's end weight."""
    step = spec.algorithm.update({n: A[n] - start[n] for n in A})
    W = {n: start[n] + end * step[n] for n in A}
    project = getattr(spec.retention, "project", None)
    return W if project is None else project(W, start)


def state_prior(spec: MirasSpec, state: MemoryState, dtype: torch.dtype) -> dict[str, Tensor] | None:
    """The prior W0 in dtype for a retention that decays toward it (None otherwise); a clear error when the state
    lacks it."""
    if not decays_toward_prior(spec.retention):
        return None
    require(state.prior is not None, "state.prior", None,
            f"the initial state W0 that {spec.retention.describe()!r} decays toward",
            "start from initial_state(spec, batch, W0) (the layer's W0), or continue from the state a call returned")
    return {n: p.to(dtype) for n, p in state.prior.items()}


def open_chunk_start(spec: MirasSpec, state: MemoryState, dtype: torch.dtype) -> dict[str, Tensor] | None:
    """The open chunk's start accumulator in dtype; a clear error when a retention that reads through a frame
    (Moneta, Memora, elastic net) or weighted reads (TTT, LaCT) continue mid-chunk without it."""
    require(not (carries_start(spec) and state.offset and state.start is None), "state.start", None,
            f"the open chunk's start accumulator for {spec} (offset {state.offset})",
            "continue from the MemoryState the previous call returned")
    return None if state.start is None else {n: a.to(dtype) for n, a in state.start.items()}


def check_token_offsets(spec: MirasSpec, offsets: Tensor | None) -> None:
    """TTT's learned token-weight offsets: None, or a finite [chunk_size] tensor for a token-weighted GD spec."""
    if offsets is None:
        return
    require(getattr(spec.algorithm, "token_weights", False), "token_offsets", "a tensor",
            f"None for {spec.algorithm.describe()} (they are read only with GD(token_weights=True))",
            "drop token_offsets or set algorithm.token_weights")
    require(isinstance(offsets, Tensor) and offsets.is_floating_point()
            and tuple(offsets.shape) == (spec.chunk_size,), "token_offsets.shape",
            tuple(offsets.shape) if isinstance(offsets, Tensor) else type(offsets).__name__,
            f"a floating-point tensor of shape ({spec.chunk_size},) (one offset per chunk position)")
    require(bool(torch.isfinite(offsets).all()), "token_offsets", "a non-finite value", "finite numbers")


def check_tensors(tensors: dict[str, Tensor | None]) -> None:
    """Every given tensor floating point and on the first one's device (None entries are skipped)."""
    given = {name: t for name, t in tensors.items() if t is not None}
    device = next(iter(given.values())).device
    for name, t in given.items():
        require(t.is_floating_point(), f"{name}.dtype", t.dtype, "a floating-point dtype",
                "cast with .float() (float32 / float64 / bfloat16 / float16)")
        require(t.device == device, f"{name}.device", str(t.device), f"{device} (the device of "
                f"{next(iter(given))})", "move every input and the state to one device")


def check_inputs(spec: MirasSpec, q: Tensor, k: Tensor, v: Tensor, gates: dict[str, Tensor]) -> None:
    """Dtypes, devices and shapes of q, k, v and presence, shape and range of every gate the spec reads."""
    check_tensors({"q": q, "k": k, "v": v, **{f"gates.{n}": g for n, g in gates.items()}})
    require(q.dim() == 4 and q.shape == k.shape, "q/k shape", (tuple(q.shape), tuple(k.shape)),
            "equal [B, T, H, d_k]", "pass heads as the third dim")
    require(v.dim() == 4 and v.shape[:3] == k.shape[:3], "v shape", tuple(v.shape),
            f"[B, T, H, d_v] with B, T, H = {tuple(k.shape[:3])}")
    B, T, H, d_k = k.shape
    for name in spec.gates:
        require(name in gates, f"gates.{name}", None, f"a tensor; this spec reads {spec.gates}")
        want = spec.gate_shape(name, B, T, H, d_k, v.shape[-1])
        require(tuple(gates[name].shape) == want, f"gates.{name}.shape", tuple(gates[name].shape), f"{want}")
    ranges = gate_ranges({n: gates[n] for n in spec.gates if gates[n].numel()})
    for name, (lo, hi) in ranges.items():
        require(GATES[name].within(lo, hi), f"gates.{name}", f"[{lo:.4g}, {hi:.4g}]", GATES[name].allowed,
                "bound the gate with its activation in the layer (spec/registry.py: Gate.activation)")


def gate_ranges(gates: dict[str, Tensor]) -> dict[str, tuple[float, float]]:
    """name -> (min, max) of every (non-empty) gate, read back in one device-to-host copy (on a GPU: one sync per
    call instead of two per gate). Exact: the extrema are gathered in the widest gate dtype, at least float32."""
    if not gates:
        return {}
    dtype = torch.float32
    for g in gates.values():
        dtype = torch.promote_types(dtype, g.dtype)
    extrema = torch.stack([torch.stack([g.min(), g.max()]).to(dtype) for g in gates.values()])
    return {name: (lo, hi) for name, (lo, hi) in zip(gates, extrema.cpu().tolist())}
