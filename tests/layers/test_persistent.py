"""Titans persistent memory in MAG / MAL: the memory layer reads N_p learnable tokens P before the sequence.

Checked against the explicit construction x~ = [P ++ x] through the same layer without persistent tokens (the
outputs at P dropped), for outputs and every parameter's gradient; a stream fed in pieces equals one call; the
presets' defaults.
"""
import pytest
import torch

from miras.layers.hybrid import Gated, Sequential
from miras.layers.memory import MemoryLayer
from miras.models import MirasConfig
from miras.models.mixers import build_mixer
from miras.space import ConfigError, get_preset

from .helpers import in_pieces

D, H, NP = 16, 2, 3
TOL = dict(rtol=1e-6, atol=1e-7)    # float64 layers, but the gates (and so the memory's steps) are fp32


def _layers(preset: str, chunk: int = 4):
    """(layer with NP persistent tokens, the same weights without them), float64."""
    torch.manual_seed(0)
    spec = get_preset(preset).spec.with_chunk_size(chunk)
    with_p = MemoryLayer(spec, D, H, gate_rank=4, persistent_tokens=NP).double()
    with torch.no_grad():
        with_p.persistent.mul_(0.7)
        for gate in with_p.gates.values():      # non-zero gate weights: P's gates depend on P
            gate.up.weight.normal_(0, 0.3)
    plain = MemoryLayer(spec, D, H, gate_rank=4).double()
    plain.load_state_dict({k: v for k, v in with_p.state_dict().items() if k != "persistent"})
    return with_p, plain


def _explicit(with_p, plain, x):
    """plain([P ++ x]) with P's outputs dropped (P from with_p, so that its gradient lands there)."""
    prefix = with_p.persistent.unsqueeze(0).expand(x.shape[0], -1, -1)
    return plain(torch.cat([prefix, x], dim=1))[0][:, NP:]


@pytest.mark.parametrize("preset", ["titans-lmm", "gated-deltanet", "moneta"])
def test_persistent_prefix_equals_prepending_the_tokens(preset):
    with_p, plain = _layers(preset)
    x = torch.randn(2, 11, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(2, 11, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, _ = with_p(x)
    torch.testing.assert_close(y, _explicit(with_p, plain, x), **TOL)

    def grads(run):
        for p in (*with_p.parameters(), *plain.parameters()):
            p.grad = None
        (run() * weights).sum().backward()
        return {n: p.grad for n, p in with_p.named_parameters()}, {n: p.grad for n, p in plain.named_parameters()}

    got, _ = grads(lambda: with_p(x)[0])
    ref_p, ref = grads(lambda: _explicit(with_p, plain, x))
    ref["persistent"] = ref_p["persistent"]
    assert set(got) == set(ref)
    for name in got:
        assert got[name] is not None and ref[name] is not None, name
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-6, msg=name)
    assert got["persistent"].abs().sum() > 0


@pytest.mark.parametrize("sizes", [[11], [1, 10], [5, 1, 5], [4, 4, 3]])
def test_only_the_first_call_of_a_stream_reads_the_prefix(sizes):
    with_p, _ = _layers("titans-lmm")
    x = torch.randn(2, 11, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, end = with_p(x)
        pieces, end_pieces = in_pieces(with_p, x, sizes)
    torch.testing.assert_close(pieces, full, **TOL)
    for name, t in end.memory.tensors().items():
        torch.testing.assert_close(end_pieces.memory.tensors()[name], t, **TOL)


def test_the_prefix_state_is_the_same_for_every_row():
    with_p, plain = _layers("titans-lmm")
    with torch.no_grad():
        state = with_p.persistent_state(3, torch.zeros((), dtype=torch.float64))
        _, ref = plain(with_p.persistent.unsqueeze(0))
    assert state.memory.offset == NP
    for name, t in state.memory.tensors().items():
        assert t.shape[0] == 3
        torch.testing.assert_close(t, ref.memory.tensors()[name].expand_as(t), rtol=0, atol=0)


def test_titans_presets_default_to_persistent_tokens():
    for preset in ("titans-mac", "titans-mag", "titans-mal"):
        assert MirasConfig(preset=preset).persistent_tokens == 4
    for preset in ("titans-lmm", "gated-deltanet", "moneta-h", "transformer"):
        assert MirasConfig(preset=preset).persistent_tokens == 0
    assert MirasConfig(preset="titans-mag", persistent_tokens=0).persistent_tokens == 0
    assert MirasConfig(preset="titans-mag").to_dict()["persistent_tokens"] == 4    # saved resolved
    for bad in (-1, 1.5, True, "4"):
        with pytest.raises(ConfigError, match="persistent_tokens"):
            MirasConfig(preset="titans-mag", persistent_tokens=bad)


def test_mag_and_mal_memories_read_the_prefix_and_their_attention_sees_it():
    config = MirasConfig(preset="titans-mag", d_model=D, heads=H, persistent_tokens=NP)
    mag = build_mixer(config, "titans-mag")
    mal = build_mixer(config, "titans-mal")
    hybrid = build_mixer(MirasConfig(preset="moneta-h", d_model=D, heads=H, persistent_tokens=NP), "memory+swa")
    assert isinstance(mag, Gated) and isinstance(mal, Sequential)
    assert mag.memory.persistent.shape == (NP, D) and mal.first.persistent.shape == (NP, D)
    assert mag.attention.persistent_tokens == NP and mal.second.persistent_tokens == NP
    assert hybrid.first.persistent is None          # the MIRAS -H hybrids: attention only
