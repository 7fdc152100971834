"""ATLAS's Omega rule (space/bias.py `Omega`): the reference is the windowed loss written out, the chunked engine
equals the reference (outputs, final state with its window, every gradient), and the window is carried across
calls and restarted at document starts."""
import pytest
import torch

from miras.ops import MemoryState, recurrent_reference
from miras.ops.dispatch import memory_op
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk_minibatch
from miras.ops.state import initial_state
from miras.space import ConfigError, MirasSpec
from miras.space.algorithm import GD, Delta, Momentum
from miras.space.algorithm import NonParametric as Attention
from miras.space.bias import L2, Omega
from miras.space.memory import MLPMemory, NonParametric, matrix
from miras.space.retention import Decay, KLSoftmax, NoRetention

from . import helpers
from .helpers import rel_err


def spec_of(window: int, chunk: int, kind: str = "deep") -> MirasSpec:
    if kind == "matrix":
        return MirasSpec(matrix(), Omega(window), Decay(), GD(), chunk_size=chunk)
    if kind == "memora":            # a boundary map: reads through the retention's in-chunk frame
        return MirasSpec(MLPMemory(depth=2, expansion=2), Omega(window), KLSoftmax(), GD(), chunk_size=chunk)
    return MirasSpec(MLPMemory(depth=2, expansion=2), Omega(window), Decay(), Momentum(), chunk_size=chunk)


def inputs(spec, seqlen, dtype=torch.float64, seed=0, grads=False):
    """random_inputs with a random window before the first token (so its tokens, and their gradients, count)."""
    q, k, v, gates, state = random_inputs(spec, seqlen=seqlen, dtype=dtype, seed=seed)
    if state.window is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        draw = {n: torch.rand if n == "gamma" else torch.randn for n in state.window}
        state.window = {n: draw[n](w.shape, generator=gen, dtype=torch.float64).to(dtype) for n, w in state.window.items()}
    if grads:
        for t in [q, k, v, *gates.values(), *state.tensors().values()]:
            t.requires_grad_(True)
    return q, k, v, gates, state


def literal(spec, q, k, v, gates, state):
    """The Omega rule written out from its definition, without the bias' closed-form gradient: at token t the loss
    sum_{i=t-c+1..t} gamma_i ||M_W(k_i) - v_i||^2 of the last c tokens (the state's window before the first) at W =
    the chunk's anchor, its gradient by autograd, then momentum and decay; y_t = M_{A_t}(q_t). Values only."""
    memory, c, b = spec.memory, spec.bias.window, spec.chunk_size
    window = state.window or {"k": k[:, :0].transpose(1, 2), "v": v[:, :0].transpose(1, 2),
                              "gamma": gates["gamma"][:, :0].transpose(1, 2)}
    keys, values, gamma = (torch.cat([window[n], x.transpose(1, 2)], dim=2)       # [B, H, c - 1 + T(, d)]
                           for n, x in (("k", k), ("v", v), ("gamma", gates["gamma"])))
    A = {n: a.detach() for n, a in state.A.items()}
    S = {n: s.detach() for n, s in state.S.items()} if state.S is not None else None
    ys = []
    for t in range(q.shape[1]):
        if t % b == 0:
            anchor = {n: a.clone().requires_grad_(True) for n, a in A.items()}
        i = slice(t, t + c)                               # tokens t - c + 1 .. t: columns t .. t + c - 1
        loss = (gamma[:, :, i] * (memory(anchor, keys[:, :, i]) - values[:, :, i]).pow(2).sum(-1)).sum()
        grad = dict(zip(anchor, torch.autograd.grad(loss, list(anchor.values()))))
        lr, alpha = gates["lr"][:, t, :, None, None], gates["log_alpha"][:, t, :, None, None].exp()
        step = {n: -lr * grad[n] for n in A}
        if S is not None:
            S = step = {n: gates["beta"][:, t, :, None, None] * S[n] + step[n] for n in A}
        A = {n: alpha * A[n] + step[n] for n in A}
        ys.append(memory(A, q[:, t].unsqueeze(2)).squeeze(2))
    return torch.stack(ys, dim=1), A


@pytest.mark.parametrize("window,chunk", [(1, 1), (2, 3), (5, 3), (5, 1)], ids=str)
def test_the_reference_is_the_windowed_loss_differentiated(window, chunk):
    spec = spec_of(window, chunk)
    q, k, v, gates, state = inputs(spec, 11)
    y, A = literal(spec, q, k, v, gates, state)
    y_ref, final = recurrent_reference(spec, q, k, v, gates, state)
    assert rel_err(y_ref, y) <= 1e-12
    for n in A:
        assert rel_err(final.A[n], A[n]) <= 1e-12, n


def test_window_one_with_unit_gamma_is_the_l2_bias():
    omega, l2 = spec_of(1, 4), MirasSpec(MLPMemory(depth=2, expansion=2), L2(), Decay(), Momentum(), chunk_size=4)
    q, k, v, gates, state = inputs(omega, 10)
    ones = dict(gates, gamma=torch.ones_like(gates["gamma"]))
    plain = {n: gates[n] for n in l2.gates}
    for fn in (recurrent_reference, chunk_minibatch):
        y, final = fn(omega, q, k, v, ones, state)
        y_l2, final_l2 = fn(l2, q, k, v, plain, state)
        assert final.window is None
        torch.testing.assert_close(y, y_l2, rtol=1e-13, atol=1e-13)
        for key, t in final_l2.tensors().items():
            torch.testing.assert_close(final.tensors()[key], t, rtol=1e-13, atol=1e-13)


def run_both(spec, seqlen, dtype=torch.float64, grads=True):
    """The reference and the engine on this file's inputs (helpers.run_both)."""
    return helpers.run_both(spec, *inputs(spec, seqlen, dtype=dtype, grads=grads), grads=grads)


CASES = [(0, 4), (1, 4), (3, 4), (11, 4), (9, 2)]     # T = 0, 1, T < chunk, odd lengths; with c = 5 > chunk


@pytest.mark.parametrize("seqlen,chunk", CASES, ids=str)
@pytest.mark.parametrize("window", [1, 2, 5])
def test_engine_equals_reference_fp64(window, seqlen, chunk):
    ref, fast = run_both(spec_of(window, chunk), seqlen)
    assert ref.keys() == fast.keys()
    assert {"window.k", "window.v", "window.gamma", "dwindow.k", "dgates.gamma"} <= set(ref) or window == 1
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= 1e-10, key


@pytest.mark.parametrize("kind", ["matrix", "memora"])
def test_engine_equals_reference_for_other_memories_and_retentions(kind):
    ref, fast = run_both(spec_of(3, 4, kind), 13)
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= 1e-10, key


def test_engine_fp32_is_as_accurate_as_the_fp32_reference():
    spec = spec_of(5, 4)
    fp64, _ = run_both(spec, 32)
    ref32, fast32 = run_both(spec, 32, dtype=torch.float32)
    for key in fp64:
        assert rel_err(fast32[key], fp64[key]) <= 4 * rel_err(ref32[key], fp64[key]) + 1e-6, key


@pytest.mark.parametrize("fn", [recurrent_reference, chunk_minibatch], ids=["reference", "engine"])
@pytest.mark.parametrize("split", [6, 8, 2], ids=["mid-chunk", "chunk-boundary", "shorter-than-window"])
def test_state_carried_across_two_calls_equals_one_call(fn, split):
    spec = spec_of(5, 4)
    q, k, v, gates, state = inputs(spec, 13)
    y, final = fn(spec, q, k, v, gates, state)
    first, rest = slice(0, split), slice(split, None)
    y1, mid = fn(spec, q[:, first], k[:, first], v[:, first], {n: g[:, first] for n, g in gates.items()}, state)
    y2, end = fn(spec, q[:, rest], k[:, rest], v[:, rest], {n: g[:, rest] for n, g in gates.items()}, mid)
    assert rel_err(torch.cat([y1, y2], 1), y) <= 1e-12
    assert end.tensors().keys() == final.tensors().keys()
    for key, t in final.tensors().items():
        assert rel_err(end.tensors()[key], t) <= 1e-12, key


def test_the_window_holds_the_last_tokens_and_starts_empty():
    spec = spec_of(5, 4)
    q, k, v, gates, state = inputs(spec, 6)
    fresh = initial_state(spec, 2, {n: a[0] for n, a in state.A.items()})
    assert fresh.window["k"].shape == (2, 2, 4, 8) and not fresh.window["gamma"].any()
    for fn in (recurrent_reference, chunk_minibatch):
        _, final = fn(spec, q, k, v, gates, state)
        torch.testing.assert_close(final.window["k"], k[:, 2:].transpose(1, 2).to(final.window["k"].dtype))
        torch.testing.assert_close(final.window["gamma"], gates["gamma"][:, 2:].transpose(1, 2))


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_packed_documents_equal_one_call_per_document(mode):
    spec = spec_of(3, 4)
    q, k, v, gates, state = inputs(spec, 14)
    W0 = {n: a[0] for n, a in state.A.items()}
    resets = torch.zeros(2, 14, dtype=torch.bool)
    resets[0, [5, 6]] = True
    resets[1, [0, 9]] = True
    y, final = memory_op(spec, q, k, v, gates, state, mode=mode, resets=resets, W0=W0)
    for row, cuts in ((0, [0, 5, 6, 14]), (1, [0, 9, 14])):
        s = initial_state(spec, 1, W0)                   # row 0 continues its row of the state, row 1 restarts
        if row == 0:
            s = MemoryState(**{name: None if group is None else {n: t[:1] for n, t in group.items()}
                               for name, group in state.groups().items()}, offset=state.offset)
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a > 0:
                s = initial_state(spec, 1, W0)
            part = slice(a, b)
            y_doc, s = memory_op(spec, q[row:row + 1, part], k[row:row + 1, part], v[row:row + 1, part],
                                 {n: g[row:row + 1, part] for n, g in gates.items()}, s, mode=mode)
            assert rel_err(y[row:row + 1, part], y_doc) <= 1e-12, (row, a)
        got = final.rows(torch.tensor([row])).tensors()          # (rows that stop at different offsets: ragged)
        assert got.keys() == s.tensors().keys()
        for key, t in s.tensors().items():
            assert rel_err(got[key], t) <= 1e-12, (row, key)


def test_invalid_windows_and_combinations_are_refused():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match=r"^bias\.window=.* is invalid: allowed an integer >= 1"):
            Omega(bad)
    with pytest.raises(ConfigError, match=r"^algorithm='delta' is invalid: allowed 'gd', 'momentum' or 'muon'"):
        MirasSpec(matrix(), Omega(2), Decay(), Delta())
    with pytest.raises(ConfigError, match=r"^algorithm='attention' is invalid: allowed 'gd', 'momentum' or 'muon'"):
        MirasSpec(NonParametric(), Omega(2), NoRetention(), Attention())
    with pytest.raises(ConfigError, match=r"^algorithm\.channel_lr=True is invalid"):
        MirasSpec(matrix(), Omega(2), Decay(), GD(channel_lr=True))
    spec = spec_of(2, 4)
    q, k, v, gates, state = inputs(spec, 5)
    with pytest.raises(ConfigError, match=r"^gates\.gamma=.* is invalid: allowed gamma in \[0, 1\]"):
        chunk_minibatch(spec, q, k, v, dict(gates, gamma=gates["gamma"] + 1.0), state)
