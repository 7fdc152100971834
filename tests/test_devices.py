"""Every fast path, a memory layer, a language model and packed documents on each device under test.

`device` (tests/conftest.py) is "cpu", plus "cuda" when torch sees a GPU, or MIRAS_TEST_DEVICES (e.g. "cuda" for
the GPU run of benchmarks/gpu.sh). On each device, in float32:

- one preset per op family (attention, SSD, delta, per-channel delta, the mini-batch engine's Titans, Moneta,
  Yaad, Memora and TTT-Linear): memory_op's fast path (mode="auto") and the recurrence (mode="reference") on the
  device, over two calls that carry the state across a chunk's middle, against the recurrence in float64: outputs,
  both calls' states and every gradient (q, k, v, gates, start state) within float32's relative precision (and,
  off the CPU, the fast path in float64 within 1e-9);
- a MemoryLayer (Titans' deep memory): auto against reference, outputs and every parameter gradient, and
  token-by-token decoding equal to one forward;
- a MirasLM mixing Titans MAC, Mamba-2 and Titans MAG (attention with a window and persistent tokens): logits
  and every parameter gradient against the same weights in float64 on the CPU, and decoding equal to one forward;
- packed documents (miras.ops.documents): memory_op with resets equal to one call per document;
- bfloat16 inputs and torch.autocast: the ops still compute in float32.

Each check also asserts that every output, state and gradient is on the inputs' device. The same checks run on
the "meta" device in test_meta_device_placement: tensors without data, so nothing is compared, but a tensor
created on the CPU inside the code (torch.arange without device=, ...) meets a meta tensor, and a call that mixes
the two raises (_NoHostTensorsWithMeta), as it would on a GPU. That is how device bugs show up on a machine
without a GPU (MIRAS_TEST_DEVICES=meta runs the parametrized tests on meta too).
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from torch.overrides import TorchFunctionMode

from miras.layers.memory import MemoryLayer
from miras.models import MirasConfig, MirasLM
from miras.models.state_tree import map_tensors
from miras.ops import MemoryState
from miras.ops.dispatch import memory_op, select_op
from miras.ops.documents import resets_from_cu_seqlens, spans
from miras.ops.inputs import random_inputs
from miras.space import get_preset
from miras.space.registry import Gate

from .ops.helpers import rel_err

FAMILIES = {"transformer": "attention", "mamba2": "ssd", "gated-deltanet": "delta", "kda": "delta",
            "titans-lmm": "minibatch", "moneta": "minibatch", "yaad": "minibatch", "memora": "minibatch",
            "ttt-linear": "minibatch"}
SPLIT = (67, 29)      # two calls; the first ends 3 tokens into a chunk of every op (chunks of 64 and 16)
META_SPLIT = (19, 6)  # on meta (slow per op: shapes are computed in Python): across a 16-token chunk
TOL = 1e-4            # float32: relative RMS error (against float64, or the other path on the same device)
LM = dict(preset="titans-lmm", layer_pattern=["titans-mac", "mamba2", "titans-mag"], d_model=32, heads=2,
          n_layers=3, window=8, segment=8, persistent_tokens=2, chunk_size=4, d_state=16)


def _leaf(x: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
    return x.detach().to(device=device, dtype=dtype).requires_grad_(True)


def _tensors(tree) -> list[torch.Tensor]:
    found = []
    map_tensors(lambda t: found.append(t) or t, tree)
    return found


def _assert_on(device: torch.device, *trees) -> None:
    for t in _tensors(list(trees)):
        assert t.device == device, f"a tensor on {t.device}, not on {device}: shape {tuple(t.shape)}"


def _numbers(device: torch.device) -> bool:
    return device.type != "meta"


def _projection(tensors: dict[str, torch.Tensor], seed: int = 7) -> torch.Tensor:
    """sum_n <t_n, w_n> with fixed random w_n (drawn on the CPU in float64: the same on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype)).sum()
               for t in tensors.values())


def _assert_close(got: dict, want: dict, tol: float = TOL) -> None:
    assert got.keys() == want.keys()
    errors = {n: rel_err(got[n], want[n]) for n in want}
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


# -- op families ---------------------------------------------------------------------------------------------------

def _two_calls(spec, inputs, device, mode: str, split: tuple[int, int], dtype=torch.float32
               ) -> dict[str, torch.Tensor]:
    """memory_op over the two calls of `split` on the device: y, each call's state, and the gradients (wrt q, k, v,
    the gates and the start state) of a projection of y and of each call's A and S (the other state tensors, e.g.
    the anchor that the reference keeps mid-chunk and the SSD path does not need, act through the second call's
    outputs)."""
    q, k, v, gates, state = inputs
    leaves = {"q": _leaf(q, device, dtype), "k": _leaf(k, device, dtype), "v": _leaf(v, device, dtype),
              **{f"gates.{n}": _leaf(g, device, dtype) for n, g in gates.items()},
              **{f"state.{n}": _leaf(t, device, dtype) for n, t in state.tensors().items()}}
    groups = {g: None if grp is None else {n: leaves[f"state.{g}.{n}"] for n in grp}
              for g, grp in state.groups().items()}
    s = MemoryState(**groups, offset=state.offset)
    out, ys, start = {}, [], 0
    for i, n in enumerate(split):
        part = slice(start, start + n)
        y, s = memory_op(spec, leaves["q"][:, part], leaves["k"][:, part], leaves["v"][:, part],
                         {g: leaves[f"gates.{g}"][:, part] for g in gates}, s, mode=mode)
        ys.append(y)
        out.update({f"call{i}.{name}": t for name, t in s.tensors().items()})
        out[f"call{i}.offset"] = torch.tensor(float(s.offset), dtype=torch.float64)
        start += n
    out["y"] = torch.cat(ys, dim=1)
    projected = {n: t for n, t in out.items() if n == "y" or ".A." in n or ".S." in n}
    grads = torch.autograd.grad(_projection(projected), list(leaves.values()), allow_unused=True,
                                materialize_grads=True)
    out.update({f"d{n}": g for n, g in zip(leaves, grads)})
    return out


def check_op_family(name: str, device: torch.device) -> None:
    """On the device in float32, the fast path and the recurrence, each against the recurrence in float64 on the
    CPU (the spec): the fast path's relative error at most TOL, or 5x the float32 recurrence's own where float32
    itself loses more (Memora's softmax boundary: ~2e-2 after 96 tokens, for both). Off the CPU also float64 on the
    device, within 1e-9."""
    spec = get_preset(name).spec
    assert select_op(spec) == FAMILIES[name]                  # the fast path under test is the family's
    split = SPLIT if _numbers(device) else META_SPLIT
    inputs = random_inputs(spec, batch=2, seqlen=sum(split), heads=2, d_k=16, dtype=torch.float64, seed=1)
    fast = _two_calls(spec, inputs, device, "auto", split)
    _assert_on(device, {n: t for n, t in fast.items() if ".offset" not in n})
    assert fast["y"].dtype == torch.float32
    if not _numbers(device) and name in ("moneta", "yaad", "memora"):    # (meta: their recurrence is Titans' code)
        return
    ref = _two_calls(spec, inputs, device, "reference", split)
    _assert_on(device, {n: t for n, t in ref.items() if ".offset" not in n})
    assert {n for n in ref if n.startswith(("call0.A.", "call1.A.", "call0.S.", "call1.S."))} <= set(fast)
    if not _numbers(device):
        return
    exact = _two_calls(spec, inputs, torch.device("cpu"), "reference", split, torch.float64)
    common = [n for n in fast if n in ref and n in exact     # (the chunk-invariant ops keep no chunk offset)
              and (FAMILIES[name] == "minibatch" or ".offset" not in n)]
    allowed = {n: max(TOL, 5 * rel_err(ref[n], exact[n])) for n in common}
    bad = {n: (rel_err(fast[n], exact[n]), allowed[n]) for n in common if not rel_err(fast[n], exact[n]) <= allowed[n]}
    assert not bad, f"relative errors (and the allowed ones) of the fast path against the float64 recurrence: {bad}"
    if device.type != "cpu":                                   # (tests/ops checks float64 on the CPU)
        fast64 = _two_calls(spec, inputs, device, "auto", split, torch.float64)
        _assert_close({n: fast64[n] for n in common}, {n: exact[n] for n in common}, tol=1e-9)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_op_family_equals_the_reference(name, device):
    check_op_family(name, device)


# -- a memory layer ------------------------------------------------------------------------------------------------

def check_memory_layer(device: torch.device) -> None:
    torch.manual_seed(0)
    layer = MemoryLayer(get_preset("titans-lmm").spec, d_model=32, heads=2).to(device)
    x = torch.randn(2, 37 if _numbers(device) else 20, 32, generator=torch.Generator().manual_seed(1)).to(device)
    results = {}
    for mode in ("reference", "auto") if _numbers(device) else ("auto",):   # (meta: op-level reference suffices)
        layer.mode = mode
        xs = x.clone().requires_grad_(True)
        y, state = layer(xs)
        _assert_on(device, y, state)
        params = dict(layer.named_parameters())
        grads = torch.autograd.grad(_projection({"y": y}), [xs, *params.values()], allow_unused=True,
                                    materialize_grads=True)
        _assert_on(device, grads)
        results[mode] = {"y": y, **state.memory.tensors(), **{f"d{n}": g for n, g in zip(["x", *params], grads)}}
    layer.mode = "auto"
    with torch.no_grad():
        steps, state = [], None
        for t in range(x.shape[1]):
            y_t, state = layer(x[:, t:t + 1], state)
            steps.append(y_t)
    _assert_on(device, steps, state)
    if _numbers(device):
        _assert_close(results["auto"], results["reference"])
        assert rel_err(torch.cat(steps, dim=1), results["auto"]["y"]) <= TOL


def test_memory_layer(device):
    check_memory_layer(device)


# -- a language model ----------------------------------------------------------------------------------------------

def check_language_model(device: torch.device) -> None:
    torch.manual_seed(0)
    exact = MirasLM(MirasConfig(**LM)).double()                    # the same weights in float64 on the CPU
    model = copy.deepcopy(exact).float().to(device)
    ids = torch.randint(0, 256, (2, 21 if _numbers(device) else 13), generator=torch.Generator().manual_seed(1))
    results = {}
    runs = [("exact", exact, ids)] if _numbers(device) else []
    for name, m, inputs in [*runs, ("device", model, ids.to(device))]:
        logits, states = m(inputs)
        params = dict(m.named_parameters())
        grads = torch.autograd.grad(_projection({"logits": logits}), list(params.values()), allow_unused=True,
                                    materialize_grads=True)
        results[name] = {"logits": logits, **{f"d{n}": g for n, g in zip(params, grads)}}
        if m is model:
            _assert_on(device, logits, states, grads)
    with torch.no_grad():
        first, states = model(ids[:, :9].to(device))               # prefill, then token by token
        steps = [first]
        for t in range(9, ids.shape[1]):
            logits, states = model(ids[:, t:t + 1].to(device), states)
            steps.append(logits)
    _assert_on(device, steps, states)
    if _numbers(device):
        _assert_close(results["device"], results["exact"])
        assert rel_err(torch.cat(steps, dim=1), results["device"]["logits"]) <= TOL


def test_language_model(device):
    check_language_model(device)


# -- packed documents ----------------------------------------------------------------------------------------------

def check_documents(name: str, device: torch.device) -> None:
    """Row 0 holds documents [0, 5) [5, 12) [12, 30) continuing the given state; row 1 resets at 0 and holds
    [0, 9) [9, 10) [10, 28) [28, 30)."""
    spec = get_preset(name).spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=30, heads=2, d_k=16, dtype=torch.float64, seed=2)
    deep = not spec.memory.is_matrix
    cpu_resets = torch.cat([resets_from_cu_seqlens(torch.tensor(c)) for c in ([0, 5, 12, 30], [0, 9, 10, 28, 30])])
    cpu_resets[0, 0] = False                                       # row 0 continues the state it is given
    resets = cpu_resets.to(device) if _numbers(device) else cpu_resets   # (a meta mask has no values to read)
    assert resets_from_cu_seqlens(torch.tensor([0, 5, 12, 30]), device).device == device
    leaves = {"q": _leaf(q, device), "k": _leaf(k, device), "v": _leaf(v, device),
              **{f"gates.{n}": _leaf(g, device) for n, g in gates.items()},
              **{f"A.{n}": _leaf(t, device) for n, t in state.A.items()},
              **({f"W0.{n}": _leaf(t[0], device) for n, t in state.A.items()} if deep else {})}
    gate_leaves = {n: leaves[f"gates.{n}"] for n in gates}
    start = MemoryState({n: leaves[f"A.{n}"] for n in state.A},
                        None if state.S is None else {n: s.to(device) for n, s in state.S.items()})
    W0 = {n: leaves[f"W0.{n}"] for n in state.A} if deep else None
    y, final = memory_op(spec, leaves["q"], leaves["k"], leaves["v"], gate_leaves, start, resets=resets, W0=W0)
    packed = {"y": y, **{f"row{r}.{n}": t for r in range(2)
                         for n, t in final.rows(torch.tensor([r])).tensors().items()}}
    alone = {}
    rows = []
    for r, docs in enumerate(spans(cpu_resets)):
        row_state, pieces = start.rows(torch.tensor([r])), []
        for i, (a, b) in enumerate(docs):
            s = row_state if i == 0 and not cpu_resets[r, 0] else None
            y_doc, row_state = memory_op(spec, *(leaves[x][r:r + 1, a:b] for x in "qkv"),
                                         {n: g[r:r + 1, a:b] for n, g in gate_leaves.items()}, s, W0=W0)
            pieces.append(y_doc)
        rows.append(torch.cat(pieces, dim=1))
        alone.update({f"row{r}.{n}": t for n, t in row_state.tensors().items()})
    alone = {"y": torch.cat(rows), **alone}
    for res in (packed, alone):
        grads = torch.autograd.grad(_projection(res), list(leaves.values()), allow_unused=True, materialize_grads=True)
        res.update({f"d{n}": g for n, g in zip(leaves, grads)})
    _assert_on(device, packed, alone)
    if _numbers(device):
        _assert_close(packed, alone, tol=1e-5)


@pytest.mark.parametrize("name", ["gated-deltanet", "titans-lmm"])
def test_packed_documents(name, device):
    check_documents(name, device)


# -- low precision -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_inputs_and_autocast(name, device):
    """bf16 q, k, v: y in bf16, within bf16's precision of the float32 result, the state in float32. Under
    torch.autocast (bf16), forward and a backward called outside it give exactly the float32 results: the ops
    switch autocast off (miras/ops/amp.py)."""
    if not _numbers(device):
        pytest.skip("compares values (and meta has no autocast)")
    spec = get_preset(name).spec
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=40, heads=2, d_k=16, dtype=torch.float32, seed=4)
    q, k, v = (x.to(device) for x in (q, k, v))
    gates = {n: g.to(device) for n, g in gates.items()}
    state = MemoryState(**{g: None if grp is None else {n: t.to(device) for n, t in grp.items()}
                           for g, grp in state.groups().items()}, offset=state.offset)
    y32, s32 = memory_op(spec, q, k, v, gates, state)
    y16, s16 = memory_op(spec, q.bfloat16(), k.bfloat16(), v.bfloat16(), gates, state)
    assert y16.dtype == torch.bfloat16
    if FAMILIES[name] != "attention":                              # (attention's state is its KV cache, in bf16)
        assert all(t.dtype == torch.float32 for t in s16.A.values())
    assert rel_err(y16, y32) <= 3e-2
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y_amp, s_amp = memory_op(spec, *leaves, gates, state)
    grads_amp = torch.autograd.grad(_projection({"y": y_amp}), leaves)
    leaves32 = [x.clone().requires_grad_(True) for x in (q, k, v)]
    y_ref, s_ref = memory_op(spec, *leaves32, gates, state)          # (with autograd: the same path as y_amp)
    grads32 = torch.autograd.grad(_projection({"y": y_ref}), leaves32)
    assert y_amp.dtype == torch.float32
    assert rel_err(y_amp, y_ref) == 0 and all(rel_err(s_amp.A[n], s_ref.A[n]) == 0 for n in s_ref.A)
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(grads_amp, grads32))


# -- the meta device: device bugs without a GPU --------------------------------------------------------------------

def _read_meta_values_as_zeros(monkeypatch) -> None:
    """Reads of a meta tensor's values (item(), bool(), int(), float(), .cpu()) give zeros / True instead of
    raising (patched on torch.Tensor: cheaper than a dispatch mode, which costs Python time on every op)."""
    def patch(name, fake):
        real = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            return fake(self) if self.device.type == "meta" else real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, method)
    patch("item", lambda t: True if t.dtype == torch.bool else 0.0 if t.is_floating_point() else 0)
    patch("__bool__", lambda t: True)
    patch("__int__", lambda t: 0)
    patch("__index__", lambda t: 0)
    patch("__float__", lambda t: 0.0)
    patch("cpu", lambda t: torch.zeros(t.shape, dtype=t.dtype))


class _NoHostTensorsWithMeta(TorchFunctionMode):
    """Raises when a call mixes meta tensors with CPU tensors (0-dim ones aside: a GPU takes those as scalars), as
    a GPU would; meta kernels check that only for some ops (element-wise, cat, where: not matmuls, in-place
    masked_fill_). Indexing with CPU indices and copies from the CPU are allowed, as on a GPU."""

    ALLOWED = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_, torch.Tensor.to,
               torch.Tensor.new_tensor, torch._has_compatible_shallow_copy_type}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        several = len(args) + len(kwargs) > 1 or (args and isinstance(args[0], (list, tuple)))
        if several and func not in self.ALLOWED:                            # (one tensor cannot mix devices)
            kinds = {t.device.type for a in (*args, *kwargs.values()) for t in (a if isinstance(a, (list, tuple))
                                                                                else (a,))
                     if isinstance(t, torch.Tensor) and t.dim() > 0}
            if "meta" in kinds and "cpu" in kinds:
                raise AssertionError(f"{getattr(func, '__name__', func)} mixes tensors on the CPU and on the device "
                                     "(meta): a tensor was created without device=")
        return func(*args, **kwargs)


def _on_meta(monkeypatch) -> _NoHostTensorsWithMeta:
    """Meta values read as zeros, the gate-range check told they are in range (their values cannot be read), and
    the mode to run the checks in."""
    monkeypatch.setattr(Gate, "within", lambda self, lo, hi: True)
    _read_meta_values_as_zeros(monkeypatch)
    return _NoHostTensorsWithMeta()


@pytest.fixture(autouse=True)
def _meta_device(request, monkeypatch):
    """With MIRAS_TEST_DEVICES=meta, the parametrized tests run on meta as test_meta_device_placement does."""
    if "device" in request.fixturenames and request.getfixturevalue("device").type == "meta":
        with _on_meta(monkeypatch):
            yield
    else:
        yield


@pytest.mark.skipif(os.environ.get("MIRAS_TEST_DEVICES", "") not in ("", "cpu"), reason="the CPU suite's check")
def test_meta_device_placement(monkeypatch):
    """Every check above on the meta device: a CPU tensor created inside the code meets a meta tensor and raises,
    and every output, state and gradient must come back on meta."""
    meta = torch.device("meta")
    with _on_meta(monkeypatch):
        for name in FAMILIES:
            check_op_family(name, meta)
        check_memory_layer(meta)
        check_language_model(meta)
        for name in ("gated-deltanet", "titans-lmm"):
            check_documents(name, meta)
