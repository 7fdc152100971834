"""memory_op picks a fast path for every preset and equals the reference through it."""
import pytest
import torch

from miras.ops import recurrent_reference
from miras.ops.dispatch import memory_op, select_op
from miras.ops.inputs import random_inputs
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.bias import L2, DotProduct
from miras.space.memory import matrix
from miras.space.algorithm import GD
from miras.space.retention import Decay

EXPECTED = {"transformer": "attention", "linear-attention": "ssd", "retnet": "ssd", "mamba2": "ssd",
            "deltanet": "delta", "gated-deltanet": "delta", "ttt-linear": "minibatch", "ttt-mlp": "minibatch",
            "titans-lmm": "minibatch", "moneta": "minibatch", "yaad": "minibatch", "memora": "minibatch"}


GLA = MirasSpec(matrix(), DotProduct(), Decay(per_channel=True), GD())
SPECS = {**{name: get_preset(name).spec for name in EXPECTED}, "gla-per-channel": GLA}
EXPECTED["gla-per-channel"] = "ssd"


@pytest.mark.parametrize("name", list(SPECS))
def test_auto_equals_reference_with_gradients(name):
    spec = SPECS[name]
    assert select_op(spec) == EXPECTED[name]
    results = []
    for mode in ("reference", "auto"):
        q, k, v, gates, state = random_inputs(spec, seqlen=70, requires_grad=True)
        y, final = memory_op(spec, q, k, v, gates, state, mode=mode)
        leaves = [q, k, v, *gates.values(), *state.A.values()]
        grads = torch.autograd.grad(y.pow(2).sum() + sum(a.sum() for a in final.A.values()), leaves)
        results.append((y, final.A, grads))
    (y0, A0, g0), (y1, A1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-10)
    for n in A0:
        torch.testing.assert_close(A1[n], A0[n], rtol=1e-9, atol=1e-10)
    for a, b in zip(g1, g0):   # relative RMS error, as the engine tests (single entries may cancel)
        assert ((a - b).norm() / b.norm().clamp_min(1e-30)).item() <= 1e-9


def test_per_channel_l2_has_no_chunked_form_and_says_so():
    spec = MirasSpec(matrix(), L2(), Decay(per_channel=True), GD())
    q, k, v, gates, state = random_inputs(spec, seqlen=5)
    y, _ = memory_op(spec, q, k, v, gates, state)                         # auto: falls back to the reference
    torch.testing.assert_close(y, recurrent_reference(spec, q, k, v, gates, state)[0])
    with pytest.raises(ConfigError, match="mode='chunked'.*per-channel"):
        memory_op(spec, q, k, v, gates, state, mode="chunked")
    with pytest.raises(ConfigError, match="mode='fast'.*allowed one of"):
        memory_op(spec, q, k, v, gates, state, mode="fast")


def test_opt_in_finite_check_names_the_tensor(monkeypatch):
    spec = get_preset("titans-lmm").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=6)
    v[0, 3, 1, 2] = float("nan")
    y, _ = memory_op(spec, q, k, v, gates, state)                         # off by default: NaN propagates
    assert torch.isnan(y).any()
    monkeypatch.setenv("MIRAS_CHECK_FINITE", "1")
    with pytest.raises(FloatingPointError, match=r"memory_op input: v has a non-finite value at index \(0, 3, 1, 2\)"):
        memory_op(spec, q, k, v, gates, state)


@pytest.mark.parametrize("name", ["mamba2", "gated-deltanet", "titans-lmm", "transformer"])
def test_device_and_dtype_mismatches_name_the_argument(name):
    """A tensor on another device ("meta" stands in for a GPU) or an integer tensor raises before any math,
    naming the argument, what it is and what is expected."""
    spec = get_preset(name).spec
    q, k, v, gates, state = random_inputs(spec, seqlen=5)
    with pytest.raises(ConfigError, match=r"k\.device='meta' is invalid: allowed cpu \(the device of q\)"):
        memory_op(spec, q, k.to("meta"), v, gates, state)
    with pytest.raises(ConfigError, match=r"v\.dtype=torch\.int64 is invalid: allowed a floating-point dtype"):
        memory_op(spec, q, k, v.long(), gates, state)
    if state is not None and state.A:
        name0, t = next(iter(state.A.items()))
        bad = type(state)({**state.A, name0: t.to("meta")}, state.S, state.anchor, state.offset)
        with pytest.raises(ConfigError, match=rf"state\.A\.{name0}\.device='meta'"):
            memory_op(spec, q, k, v, gates, bad)


def test_exact_ops_check_devices_and_dtypes():
    from miras.ops.delta import chunk_gated_delta_rule
    from miras.ops.ssd import chunk_gla, ssd
    q = k = v = torch.randn(1, 5, 2, 4)
    g = -torch.rand(1, 5, 2)
    with pytest.raises(ConfigError, match=r"g\.device='meta'"):
        chunk_gla(q, k, v, g.to("meta"))
    with pytest.raises(ConfigError, match=r"beta\.dtype=torch\.int64"):
        chunk_gated_delta_rule(q, k, v, g, beta=torch.ones(1, 5, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"A\.device='meta'"):
        ssd(v, -g, -torch.ones(2, device="meta"), q, k)
