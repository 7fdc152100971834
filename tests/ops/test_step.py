"""Decoding: memory_op on one token at a time (ops/step.py, the T = 1 branch of dispatch) equals the recurrence.

For every preset's spec: from the state a chunked prefill of an odd length leaves (inside a chunk, with its anchor,
start accumulator, momentum, Omega window), single-token calls with the state carried equal one call of
`recurrent_reference` on the same tokens from the same state: the outputs, every tensor of the final state, its
offset, and the gradients of both with respect to the inputs, the gates, every tensor of the prefilled state and
TTT's token offsets; float64 to ~1e-10, float32 relative. DeltaProduct's layer hands the op n_h sub-steps per token,
so its calls are of n_h tokens. The Mamba-2 layer's step (ssd_step) against the SSD op on one token.
"""
import pytest
import torch

from miras.ops import dispatch
from miras.ops.dispatch import memory_op, select_op
from miras.ops.inputs import random_inputs
from miras.ops.ssd import ssd
from miras.ops.state import MemoryState
from miras.ops.step import ssd_step
from miras.space import get_preset, list_presets
from tests.ops.helpers import assert_same, run_both

PRESETS = [name for name in list_presets() if get_preset(name).spec is not None]
TOLERANCES = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-4)}    # (outputs and state, gradients)


def spec_of(name: str):
    """The preset's spec; LaCT's with chunks of 16 (not 2048: a short prefill); the dot-product bias' with chunks of
    1: its gradient reads no anchor, so its ops keep no chunk grid, and with chunk_size 1 neither does the
    recurrence (no anchor, offset 0 in the state it returns; the same numbers at any chunk size)."""
    spec = get_preset(name).spec
    if select_op(spec) == "ssd":
        return spec.with_chunk_size(1)
    return spec.with_chunk_size(16) if spec.chunk_size > 64 else spec


def token_calls(spec, q, k, v, gates, state, token_offsets=None):
    """memory_op on one token at a time (DeltaProduct: its n_h sub-steps), the state carried from call to call."""
    n = getattr(spec.algorithm, "steps", 1)
    if q.shape[1] == 0:
        return memory_op(spec, q, k, v, gates, state, token_offsets=token_offsets)
    ys = []
    for t in range(0, q.shape[1], n):
        s = slice(t, t + n)
        y, state = memory_op(spec, q[:, s], k[:, s], v[:, s], {g: x[:, s] for g, x in gates.items()}, state,
                             token_offsets=token_offsets)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def prefilled(spec, steps: int, dtype: torch.dtype, seed: int = 0):
    """Inputs of `steps` tokens, the state after a chunked prefill of 2 chunk_size - 3 tokens, at least 61 (odd, so
    that the steps cross a chunk end of the spec or of the chunk-invariant ops' 64-token kernels), and the kwargs of
    the op (TTT's token offsets), every tensor a leaf."""
    prefill = max(2 * spec.chunk_size - 3, 61)
    q, k, v, gates, state = random_inputs(spec, seqlen=prefill + steps, dtype=dtype, seed=seed)
    kwargs = {}
    if getattr(spec.algorithm, "token_weights", False):
        kwargs["token_offsets"] = leaf(0.3 * torch.randn(spec.chunk_size, generator=torch.Generator().manual_seed(5),
                                                         dtype=torch.float64).to(dtype))
    with torch.no_grad():
        _, state = memory_op(spec, q[:, :prefill], k[:, :prefill], v[:, :prefill],
                             {n: g[:, :prefill] for n, g in gates.items()}, state, **kwargs)
    state = MemoryState(**{name: None if group is None else {n: leaf(t) for n, t in group.items()}
                           for name, group in state.groups().items()}, offset=state.offset)
    tail = [leaf(x[:, prefill:]) for x in (q, k, v)]
    return (*tail, {n: leaf(g[:, prefill:]) for n, g in gates.items()}, state, kwargs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("preset", PRESETS)
def test_token_by_token_calls_equal_the_recurrence(preset, dtype):
    spec = spec_of(preset)
    n = getattr(spec.algorithm, "steps", 1)
    for steps in (n, 6 * n):                                  # one call alone, and calls crossing a chunk end
        q, k, v, gates, state, kwargs = prefilled(spec, steps, dtype)
        assert 0 < state.offset or select_op(spec) != "minibatch"            # (the prefill ends inside a chunk)
        outs = run_both(spec, q, k, v, gates, state, fast=token_calls, extra=kwargs, **kwargs)
        assert outs[1]["y"].dtype == dtype and outs[1]["y"].shape == q.shape[:3] + (v.shape[-1],)
        assert_same(outs, *TOLERANCES[dtype])


@pytest.mark.parametrize("preset", PRESETS)
def test_a_call_with_no_tokens_returns_the_state(preset):
    spec = spec_of(preset)
    q, k, v, gates, state, kwargs = prefilled(spec, 0, torch.float64)
    ref, step = run_both(spec, q, k, v, gates, state, grads=False, fast=token_calls, **kwargs)
    assert step["y"].shape == q.shape[:3] + (v.shape[-1],) == (2, 0, 2, 8)
    assert_same([ref, step])
    assert all(torch.equal(step[n], t) for n, t in state.tensors().items())


@pytest.mark.parametrize("preset", ["gated-deltanet", "kda", "mamba2", "titans-lmm", "gated-deltaproduct"])
def test_one_token_takes_the_step_path(preset, monkeypatch):
    """No chunked op runs for a single token (DeltaProduct: for its n_h sub-steps)."""
    def chunked(*args, **kwargs):
        raise AssertionError("a chunked op ran for one token")
    for name in ("chunk_minibatch", "chunk_gla", "chunk_kda", "chunk_gated_delta_rule"):
        monkeypatch.setattr(dispatch, name, chunked)
    spec = spec_of(preset)
    n = getattr(spec.algorithm, "steps", 1)
    q, k, v, gates, state = random_inputs(spec, seqlen=n)
    y, _ = memory_op(spec, q, k, v, gates, state)
    assert y.shape == v.shape


@pytest.mark.parametrize("groups, D_shape, from_zero", [(1, (4,), False), (2, (4, 3), False), (2, None, True)])
def test_mamba2_ssd_step_equals_ssd_on_one_token(groups, D_shape, from_zero):
    """ssd_step (the Mamba-2 layer's decoding step) against ops.ssd.ssd with l = 1: outputs, final state and the
    gradients with respect to every input and the start state, float64."""
    gen = torch.Generator().manual_seed(3)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    b, h, p, n = 2, 4, 3, 5
    inputs = {"x": rand(b, 1, h, p), "dt": torch.nn.functional.softplus(rand(b, 1, h)), "A": -rand(h).exp(),
              "B": rand(b, 1, groups, n), "C": rand(b, 1, groups, n),
              "D": None if D_shape is None else rand(*D_shape),
              "initial_states": None if from_zero else rand(b, h, p, n)}
    leaves = {name: leaf(t) for name, t in inputs.items() if t is not None}
    w_y, w_h = rand(b, 1, h, p), rand(b, h, p, n)
    results = []
    for run in (lambda **a: ssd(**a, chunk_size=1, return_final_states=True), ssd_step):
        y, state = run(**{**inputs, **leaves})
        grads = torch.autograd.grad((y * w_y).sum() + (state * w_h).sum(), list(leaves.values()))
        results.append([y, state, *grads])
    for got, want in zip(*results[::-1]):                  # (atol: from a zero state dA is 0, up to the op's rounding)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
