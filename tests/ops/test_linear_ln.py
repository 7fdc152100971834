"""TTT-Linear's op with the hand-written backward (miras/ops/minibatch/linear_ln.py) against the recurrent reference:
outputs, the final state and every gradient (q, k, v, eta, every start tensor, the token-weight offsets), float64
tight and float32 relative, at T = 0, 1, < chunk, one chunk, odd lengths, and from a state left mid-chunk."""
import pytest
import torch

from miras.ops import recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk as engine
from miras.ops.minibatch import linear_ln
from miras.space import MirasSpec, get_preset
from miras.space.algorithm import GD
from miras.space.bias import L2
from miras.space.memory import MLPMemory
from miras.space.retention import NoRetention

from .helpers import assert_same, rel_err, run_both

B = 4


def _spec(token_weights=True, residual=True, affine=True, b=B):
    memory = MLPMemory(depth=1, residual=residual, norm=True, norm_affine=affine)
    return MirasSpec(memory, L2(), NoRetention(), GD(token_weights=token_weights), chunk_size=b)


def _inputs(spec, T, before=0, dtype=torch.float64, seed=0):
    """random inputs of T tokens, from the state `before` tokens into a stream (its tensors grad-requiring leaves)."""
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=T, heads=2, d_k=6, d_v=6, dtype=dtype, seed=seed,
                                          requires_grad=True)
    offsets = None
    if spec.algorithm.token_weights:
        offsets = (0.3 * torch.randn(spec.chunk_size, generator=torch.Generator().manual_seed(5),
                                     dtype=torch.float64)).to(dtype).requires_grad_(True)
    if before:
        q0, k0, v0, g0, _ = random_inputs(spec, batch=2, seqlen=before, heads=2, d_k=6, d_v=6, dtype=dtype, seed=3)
        with torch.no_grad():
            _, state = recurrent_reference(spec, q0, k0, v0, g0, state,
                                           token_offsets=None if offsets is None else offsets.detach())
        for group in (state.A, state.start, state.anchor):
            for n in list(group or {}):
                group[n] = group[n].clone().requires_grad_(True)
    return q, k, v, gates, state, offsets


def _compare(spec, T, before=0, dtype=torch.float64):
    q, k, v, gates, state, offsets = _inputs(spec, T, before, dtype)
    extra = {} if offsets is None else {"offsets": offsets}
    return run_both(spec, q, k, v, gates, state, extra=extra, token_offsets=offsets)


def test_the_ttt_linear_preset_takes_this_op_and_others_do_not():
    assert linear_ln.applies(get_preset("ttt-linear").spec)
    for name in ("ttt-mlp", "titans-lmm", "moneta", "lact", "deltanet"):
        assert not linear_ln.applies(get_preset(name).spec), name
    assert not linear_ln.applies(MirasSpec(MLPMemory(depth=1, residual=True, norm=True), L2(), NoRetention(),
                                           GD(channel_lr=True), chunk_size=B))


@pytest.mark.parametrize("T", [0, 1, B - 1, B, B + 1, 3 * B, 37])
@pytest.mark.parametrize("before", [0, 3])
def test_equals_the_recurrence_in_float64(T, before):
    assert_same(_compare(_spec(), T, before))


@pytest.mark.parametrize("variant", [dict(token_weights=False), dict(residual=False), dict(affine=False)])
def test_variants_equal_the_recurrence(variant):
    assert_same(_compare(_spec(**variant), 5 * B + 2, before=1))


def test_float32_as_accurate_as_the_recurrence():
    """In float32 the op is within 3x the float32 recurrence's own error against float64 (or 1e-5), and 1e-3 relative."""
    spec = _spec()
    ref32, fast32 = _compare(spec, 29, before=2, dtype=torch.float32)
    ref64 = _compare(spec, 29, before=2)[0]
    for key in ref64:
        err = rel_err(fast32[key], ref64[key])
        assert err <= max(3 * rel_err(ref32[key], ref64[key]), 1e-5) and err < 1e-3, key


def test_full_chunks_run_in_the_hand_written_op(monkeypatch):
    """The op is really used for the full chunks (only the head and tail go to the generic engine)."""
    calls = []
    real = linear_ln.LinearLNChunks.apply
    monkeypatch.setattr(linear_ln.LinearLNChunks, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    spec = _spec()
    q, k, v, gates, state, offsets = _inputs(spec, 3 + 4 * B + 2, before=B - 3)
    engine.chunk_minibatch(spec, q, k, v, gates, state, token_offsets=offsets)
    assert [s[2] for s in calls] == [4]                                  # [B, H, N = 4 full chunks, n, d]
