"""The ATLAS presets (omeganet, atlas) as language models: their spec, one training step, and decoding token by
token equal to one forward at the preset's own chunk size (windows that cross chunks and calls)."""
import pytest
import torch

from miras.models import MirasConfig, MirasLM
from miras.space import get_preset
from miras.space.algorithm import GD, Muon
from miras.space.bias import Omega


def test_the_presets_are_the_omega_rule_on_polynomial_features():
    for name, algorithm in (("omeganet", GD()), ("atlas", Muon(ns_steps=5))):
        preset = get_preset(name)
        spec = preset.spec
        assert (preset.block, spec.bias, spec.algorithm, spec.chunk_size) == ("memory", Omega(4), algorithm, 16)
        assert (spec.memory.features, spec.memory.degree, spec.memory.depth, spec.memory.residual) == \
            ("poly", 2, 2, False)
        assert spec.gates[-1] == "gamma" and "ATLAS" in preset.paper


@pytest.mark.parametrize("preset", ["atlas", "omeganet"])
def test_one_forward_equals_token_by_token_decoding(preset):
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset=preset, d_model=32, heads=2, n_layers=2)).double()
    ids = torch.randint(0, 256, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(ids)
        logits, states = model(ids[:, :5])
        steps = [logits]
        for t in range(5, 37):
            logits, states = model(ids[:, t:t + 1], states)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_atlas_trains():
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset="atlas", d_model=32, heads=2, n_layers=2))
    ids = torch.randint(0, 256, (4, 40), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(ids)
    first.backward()
    layer = model.blocks[0].mixer
    for p in (layer.poly_scale, layer.gates["gamma"].up.weight, layer.W0["W1"]):
        assert p.grad is not None and p.grad.abs().max() > 0
    opt.step()
    for _ in range(9):
        opt.zero_grad()
        model.loss(ids).backward()
        opt.step()
    assert torch.isfinite(first) and model.loss(ids).item() < first.item() - 0.5


def test_persistent_tokens_give_every_row_its_window():
    """A memory layer with Titans' persistent tokens (MAG / MAL blocks) computes the state after them once and
    expands it over the batch, the Omega window included: each row of a batch equals the row alone."""
    from miras.layers.memory import MemoryLayer
    torch.manual_seed(0)
    layer = MemoryLayer(get_preset("atlas").spec, d_model=16, heads=2, persistent_tokens=3).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    y, state = layer(x)
    assert state.memory.window["k"].shape == (2, 2, 3, 45)
    torch.testing.assert_close(y[1:], layer(x[1:])[0], rtol=1e-12, atol=1e-12)
