"""Channel-wise gates (MIRAS section 5.4) over the memory's output channels: step sizes (GD / Momentum with
channel_lr=True: eta_t in R^{d_v}, folded into the error signal, g_t = J^T (eta_t * dl/dpred), scalar step 1) and
Yaad's Huber thresholds (Huber(form="coord", channel_delta=True): delta_t in R^{d_v}).

The reference against the rule written out for a matrix memory (a per-row step of the gradient), equal channels
against the scalar gates, and the mini-batch engine against the reference with every gradient."""
from dataclasses import replace

import pytest
import torch

from miras import memory_op
from miras.layers.memory import MemoryLayer
from miras.ops import recurrent_reference
from miras.ops.dispatch import select_op
from miras.ops.inputs import random_inputs
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.algorithm import GD, Momentum
from miras.space.bias import DotProduct, Huber, L2
from miras.space.memory import matrix
from miras.space.retention import Decay, NoRetention

from .helpers import assert_engine_equals_reference, rel_err


def _channel(spec):
    return replace(spec, algorithm=replace(spec.algorithm, channel_lr=True))


def test_matrix_memory_steps_each_row_with_its_own_eta():
    spec = MirasSpec(matrix(), L2(), NoRetention(), GD(channel_lr=True), chunk_size=1)
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=5, heads=1, d_k=3, d_v=4)
    assert gates["lr"].shape == (1, 5, 1, 4)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    W = state.A["W1"][0, 0]
    for t in range(5):
        grad = 2 * torch.outer(W @ k[0, t, 0] - v[0, t, 0], k[0, t, 0])
        W = W - gates["lr"][0, t, 0, :, None] * grad
        assert rel_err(y[0, t, 0], W @ q[0, t, 0]) < 1e-13
    assert rel_err(final.A["W1"][0, 0], W) < 1e-13


def test_equal_channels_equal_the_scalar_step():
    spec = get_preset("titans-lmm").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=21)
    y0, _ = memory_op(spec, q, k, v, gates, state)
    wide = {**gates, "lr": gates["lr"].unsqueeze(-1).expand(*gates["lr"].shape, v.shape[-1])}
    y1, _ = memory_op(_channel(spec), q, k, v, wide, state)
    assert rel_err(y1, y0) < 1e-12


@pytest.mark.parametrize("preset", ["titans-lmm", "moneta", "yaad", "memora", "ttt-mlp"])
@pytest.mark.parametrize("seqlen", [1, 7, 37])
def test_engine_equals_reference_every_gradient(preset, seqlen):
    spec = _channel(get_preset(preset).spec).with_chunk_size(8)
    assert_engine_equals_reference(spec, seqlen, tol=1e-9)


def test_dot_product_matrix_memory_leaves_the_ssd_for_the_engine():
    spec = MirasSpec(matrix(), DotProduct(), Decay(), GD(channel_lr=True), chunk_size=16)
    assert select_op(spec) == "minibatch"
    q, k, v, gates, state = random_inputs(spec, seqlen=19)
    y, final = memory_op(spec, q, k, v, gates, state)
    y0, final0 = recurrent_reference(spec, q, k, v, gates, state)
    assert rel_err(y, y0) < 1e-12 and rel_err(final.A["W1"], final0.A["W1"]) < 1e-12


def test_layer_and_bad_shapes():
    layer = MemoryLayer(_channel(get_preset("yaad").spec), d_model=16, heads=2)
    x = torch.randn(2, 9, 16)
    assert layer.gate_values(x)["lr"].shape == (2, 9, 2, 8)
    y, _ = layer(x)
    assert torch.isfinite(y).all()
    spec = MirasSpec(matrix(), L2(), Decay(), Momentum(channel_lr=True), chunk_size=4)
    q, k, v, gates, state = random_inputs(spec, seqlen=3)
    with pytest.raises(ConfigError, match=r"gates.lr.shape"):
        memory_op(spec, q, k, v, {**gates, "lr": gates["lr"][..., 0]}, state)


def _channel_delta(spec):
    return replace(spec, bias=Huber(form="coord", channel_delta=True))


def test_equal_thresholds_equal_the_scalar_delta():
    spec = replace(get_preset("yaad").spec, bias=Huber(form="coord"))
    q, k, v, gates, state = random_inputs(spec, seqlen=21)
    y0, _ = memory_op(spec, q, k, v, gates, state)
    wide = {**gates, "delta": gates["delta"].unsqueeze(-1).expand(*gates["delta"].shape, v.shape[-1])}
    y1, _ = memory_op(_channel_delta(spec), q, k, v, wide, state)
    assert rel_err(y1, y0) < 1e-12
    narrow = {**wide, "delta": wide["delta"].clone()}
    narrow["delta"][..., 0] = 1e-3                                   # one coordinate clipped hard: a different step
    y2, _ = memory_op(_channel_delta(spec), q, k, v, narrow, state)
    assert rel_err(y2, y0) > 1e-4


@pytest.mark.parametrize("seqlen", [1, 9, 37])
def test_engine_equals_reference_with_channel_delta_and_eta(seqlen):
    spec = _channel(_channel_delta(get_preset("yaad").spec)).with_chunk_size(8)
    assert spec.gates == ("lr", "log_alpha", "delta")
    assert_engine_equals_reference(spec, seqlen, tol=1e-9)


def test_channel_delta_needs_the_coordinate_form():
    with pytest.raises(ConfigError, match="bias.channel_delta"):
        Huber(form="norm", channel_delta=True)
