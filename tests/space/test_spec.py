import pytest

from miras.space import ConfigError, MirasSpec, get_preset, list_presets
from miras.space.bias import L2, DotProduct, Huber, Lp
from miras.space.memory import MLPMemory, NonParametric, matrix
from miras.space.algorithm import GD, Delta, Momentum
from miras.space.algorithm import NonParametric as Attention
from miras.space.retention import Decay, KLSoftmax, LqNormalization, NoRetention
from miras.space.tables import spec_from_dict, spec_to_dict

SPEC_TABLE = ["transformer", "linear-attention", "retnet", "mamba2", "deltanet", "gated-deltanet", "ttt-linear",
              "ttt-mlp", "titans-lmm", "moneta", "yaad", "memora", "titans-mac", "titans-mag", "titans-mal",
              "moneta-h", "yaad-h", "memora-h", "kda", "gated-deltaproduct", "omeganet", "atlas", "lact"]


def test_every_row_of_the_spec_table_is_a_preset():
    assert list_presets() == SPEC_TABLE


@pytest.mark.parametrize("name", SPEC_TABLE)
def test_preset_has_equation_and_prints(name):
    preset = get_preset(name)
    assert preset.equation and preset.paper
    text = str(preset.spec)
    for axis in preset.spec.axes().values():
        assert axis in text


def test_preset_axes_follow_the_papers():
    assert isinstance(get_preset("moneta").spec.bias, Lp) and get_preset("moneta").spec.bias.p == 3.0
    assert isinstance(get_preset("moneta").spec.retention, LqNormalization)
    assert isinstance(get_preset("yaad").spec.bias, Huber)
    assert isinstance(get_preset("memora").spec.retention, KLSoftmax)
    assert isinstance(get_preset("titans-lmm").spec.algorithm, Momentum)
    assert get_preset("ttt-linear").spec.chunk_size == 16
    assert get_preset("gated-deltanet").spec.gates == ("lr", "log_alpha")
    assert get_preset("titans-lmm").spec.gates == ("lr", "log_alpha", "beta")
    assert get_preset("yaad").spec.gates == ("lr", "log_alpha", "delta")
    assert get_preset("transformer").spec.gates == ()


def test_chunk_invariance_is_known():
    assert get_preset("mamba2").spec.chunk_invariant and get_preset("gated-deltanet").spec.chunk_invariant
    assert not get_preset("moneta").spec.chunk_invariant and not get_preset("ttt-linear").spec.chunk_invariant


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="preset='mamba3'.*moneta"):
        get_preset("mamba3")


@pytest.mark.parametrize("kwargs,field", [
    (dict(memory=MLPMemory(), bias=L2(), retention=NoRetention(), algorithm=Delta()), "memory"),
    (dict(memory=matrix(), bias=DotProduct(), retention=NoRetention(), algorithm=Delta()), "bias"),
    (dict(memory=matrix(), bias=L2(), retention=KLSoftmax(), algorithm=Delta()), "retention"),
    (dict(memory=MLPMemory(), bias=L2(), retention=Decay(per_channel=True), algorithm=GD()), "retention.per_channel"),
    (dict(memory=MLPMemory(), bias=L2(), retention=Decay(per_channel=True), algorithm=Delta()), "memory"),
    (dict(memory=NonParametric(), bias=L2(), retention=NoRetention(), algorithm=GD()), "algorithm"),
    (dict(memory=matrix(), bias=L2(), retention=NoRetention(), algorithm=Attention()), "algorithm"),
    (dict(memory=NonParametric(), bias=L2(), retention=Decay(), algorithm=Attention()), "retention"),
    (dict(memory=matrix(), bias=L2(), retention=NoRetention(), algorithm=GD(), chunk_size=0), "chunk_size"),
])
def test_invalid_combinations_raise_with_field_value_and_fix(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: allowed .*; fix: "):
        MirasSpec(**kwargs)


def test_the_frontier_presets_are_their_papers_points():
    kda, product = get_preset("kda").spec, get_preset("gated-deltaproduct").spec
    assert kda.retention == Decay(per_channel=True) and isinstance(kda.algorithm, Delta) and kda.chunk_invariant
    assert kda.gates == ("lr", "log_alpha") and kda.per_channel("log_alpha") and not kda.per_channel("lr")
    assert product.algorithm == Delta(steps=2) and product.retention == Decay() and product.chunk_invariant
    assert spec_to_dict(product)["algorithm"] == {"name": "delta", "steps": 2}
    assert spec_from_dict(spec_to_dict(product)) == product and "2 steps per token" in str(product)


@pytest.mark.parametrize("steps", [0, -1, 1.5, True, "2"])
def test_delta_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ConfigError, match=r"^algorithm\.steps=.* is invalid: allowed an integer >= 1 .*; fix: "):
        Delta(steps=steps)


def test_a_new_combination_is_one_line():
    spec = MirasSpec(MLPMemory(depth=3), Huber(), LqNormalization(q=3.0), Momentum(), chunk_size=8)
    assert spec.gates == ("lr", "log_alpha", "beta", "delta")
