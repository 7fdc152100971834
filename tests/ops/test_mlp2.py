"""The deep-memory op with the hand-written backward (miras/ops/minibatch/mlp2.py) against the recurrent reference:
outputs, the final state and every gradient (q, k, v, every gate, every start tensor, the prior), float64 tight and
float32 relative, at T = 0, 1, < chunk, one chunk, odd lengths, from a state left mid-chunk, for Titans, Moneta and
Yaad, with and without momentum and decay (toward 0 or W0), for each bias, activation and Lq form it takes."""
from dataclasses import replace

import pytest
import torch

from miras.ops import recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk as engine
from miras.ops.minibatch import mlp2
from miras.space import MirasSpec, get_preset
from miras.space.algorithm import GD, Momentum
from miras.space.bias import L2, Huber, Lp
from miras.space.memory import MLPMemory
from miras.space.retention import Decay, KLSoftmax, LqNormalization, NoRetention

from .helpers import assert_same, rel_err, run_both

B = 4
TITANS = replace(get_preset("titans-lmm").spec, chunk_size=B)
MONETA = replace(get_preset("moneta").spec, chunk_size=B)
YAAD = replace(get_preset("yaad").spec, chunk_size=B)
MEMORA = replace(get_preset("memora").spec, chunk_size=B)


def _inputs(spec, T, before=0, dtype=torch.float64):
    """random inputs of T tokens, from the state `before` tokens into a stream (its tensors grad-requiring leaves)."""
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=T, heads=2, d_k=6, d_v=6, dtype=dtype,
                                          requires_grad=True)
    if before:
        q0, k0, v0, g0, _ = random_inputs(spec, batch=2, seqlen=before, heads=2, d_k=6, d_v=6, dtype=dtype, seed=3)
        with torch.no_grad():
            _, state = recurrent_reference(spec, q0, k0, v0, g0, state)
        for group in (state.A, state.S, state.anchor):
            for n in list(group or {}):
                group[n] = group[n].clone().requires_grad_(True)
    return q, k, v, gates, state


def _compare(spec, T, before=0, dtype=torch.float64):
    return run_both(spec, *_inputs(spec, T, before, dtype))


def test_titans_and_the_miras_models_take_this_op_and_others_do_not():
    for name in ("titans-lmm", "titans-mac", "titans-mag", "titans-mal", "moneta", "moneta-h", "yaad", "yaad-h",
                 "memora", "memora-h"):
        assert mlp2.applies(get_preset(name).spec), name
    for name in ("ttt-mlp", "atlas", "omeganet", "lact", "ttt-linear"):
        assert not mlp2.applies(get_preset(name).spec), name
    every_token = replace(MONETA, retention=LqNormalization(boundary_at="every-token"))
    assert not mlp2.applies(every_token)
    assert not mlp2.applies(replace(MEMORA, retention=KLSoftmax(boundary_at="every-token")))


@pytest.mark.parametrize("spec", [TITANS, MONETA, YAAD, MEMORA], ids=["titans", "moneta", "yaad", "memora"])
@pytest.mark.parametrize("T", [0, 1, B - 1, B, B + 1, 3 * B, 17])
@pytest.mark.parametrize("before", [0, 3])
def test_equals_the_recurrence_in_float64(spec, T, before):
    assert_same(_compare(spec, T, before))


@pytest.mark.parametrize("spec", [
    MirasSpec(MLPMemory(), L2(), Decay(), GD(), chunk_size=B),                          # no momentum
    MirasSpec(MLPMemory(), L2(), NoRetention(), Momentum(), chunk_size=B),              # no decay
    MirasSpec(MLPMemory(activation="silu", residual=False), L2(), Decay(), Momentum(), chunk_size=B),
    MirasSpec(MLPMemory(activation="tanh", expansion=2), L2(), NoRetention(), GD(), chunk_size=B),
    MirasSpec(MLPMemory(), L2(), Decay(toward="init"), Momentum(channel_lr=True), chunk_size=B),
    MirasSpec(MLPMemory(activation="silu"), Lp(p=2.5), LqNormalization(q=3.0, form="paper", radius=2.0), Momentum(),
              chunk_size=B),
    MirasSpec(MLPMemory(residual=False), Lp(), LqNormalization(toward="init"), Momentum(channel_lr=True),
              chunk_size=B),
    MirasSpec(MLPMemory(), Huber(form="coord", channel_delta=True), Decay(toward="init"), GD(), chunk_size=B),
    MirasSpec(MLPMemory(), Huber(form="switch"), NoRetention(), GD(channel_lr=True), chunk_size=B),
    MirasSpec(MLPMemory(activation="tanh"), L2(), KLSoftmax(in_chunk="identity"), Momentum(), chunk_size=B),
    MirasSpec(MLPMemory(residual=False), Lp(), KLSoftmax(scale="sqrt_n_in", toward="init"), Momentum(channel_lr=True),
              chunk_size=B),
], ids=["gd-decay", "momentum", "silu-no-residual", "tanh-gd", "l2-toward-init-channel-lr", "lq-paper-momentum",
        "lq-sphere-toward-init-no-residual", "huber-coord-channel-delta", "huber-switch", "softmax-identity-frame",
        "softmax-toward-init-no-residual"])
def test_variants_equal_the_recurrence(spec):
    assert mlp2.applies(spec)
    assert_same(_compare(spec, 4 * B + 1, before=2))


@pytest.mark.parametrize("spec", [TITANS, MONETA, YAAD, MEMORA], ids=["titans", "moneta", "yaad", "memora"])
def test_float32_as_accurate_as_the_recurrence(spec):
    """In float32 the op is within 3x the float32 recurrence's own error against float64 (or 1e-5), and 1e-3 relative
    where the float32 recurrence is (Moneta's gradient of the open chunk's start reaches it only through the
    normalizer's tiny derivative: about 2% off in float32 for both)."""
    ref32, fast32 = _compare(spec, 19, before=2, dtype=torch.float32)
    ref64 = _compare(spec, 19, before=2)[0]
    for key in ref64:
        err, own = rel_err(fast32[key], ref64[key]), rel_err(ref32[key], ref64[key])
        assert err <= max(3 * own, 1e-5) and (err < 1e-3 or own >= 1e-3), key


def test_full_chunks_run_in_the_hand_written_op(monkeypatch):
    calls = []
    real = mlp2.MLP2Chunks.apply
    monkeypatch.setattr(mlp2.MLP2Chunks, "apply", lambda *a: calls.append(a[1].shape) or real(*a))
    engine.chunk_minibatch(TITANS, *_inputs(TITANS, 3 + 4 * B + 2, before=B - 3))
    assert [s[1] for s in calls] == [4]                                  # [B H, N = 4 full chunks, n, d]


def test_calls_without_autograd_run_the_generic_engine(monkeypatch):
    """The op's forward stacks what its backward needs; without autograd the generic engine runs (same numbers)."""
    calls = []
    real = mlp2.MLP2Chunks.apply
    monkeypatch.setattr(mlp2.MLP2Chunks, "apply", lambda *a: calls.append(1) or real(*a))
    inputs = _inputs(MONETA, 3 * B)
    with torch.no_grad():
        y_plain, _ = engine.chunk_minibatch(MONETA, *inputs)
    assert calls == []
    y_op, _ = engine.chunk_minibatch(MONETA, *inputs)
    assert calls == [1]
    torch.testing.assert_close(y_op.detach(), y_plain, rtol=1e-12, atol=1e-12)
