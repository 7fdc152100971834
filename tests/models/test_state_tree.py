"""State trees: map_tensors keeps the structure; flatten_tensors / load_tensors round-trip, through safetensors
too, so that a model continues from a reloaded state exactly."""
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file, save_file

from miras.models import MirasConfig, MirasLM
from miras.models.state_tree import flatten_tensors, load_tensors, map_tensors

Pair = namedtuple("Pair", "a b")


@dataclass
class Leafy:
    x: torch.Tensor
    n: int
    inner: dict | None = None


def tree():
    return [Leafy(torch.arange(3.0), 2, {"k": torch.ones(2, 2), "none": None}), (Pair(torch.zeros(1), 5), None), []]


def test_map_tensors_keeps_the_structure_and_the_other_leaves():
    out = map_tensors(lambda t: t + 1, tree())
    assert isinstance(out[0], Leafy) and out[0].n == 2 and out[0].inner["none"] is None
    assert isinstance(out[1], tuple) and isinstance(out[1][0], Pair) and out[1][0].b == 5 and out[1][1] is None
    assert torch.equal(out[0].x, torch.arange(1.0, 4.0)) and torch.equal(out[1][0].a, torch.ones(1))
    assert out[2] == []


def test_flatten_then_load_is_the_identity():
    flat = flatten_tensors(tree(), "s")
    assert sorted(flat) == ["s.0.inner.k", "s.0.n", "s.0.x", "s.1.0.a", "s.1.0.b"]
    like = map_tensors(torch.zeros_like, tree())
    like[0].n, like[1] = 0, (Pair(torch.zeros(1), 0), None)
    back = load_tensors(like, flat, "s")
    assert back[0].n == 2 and back[1][0].b == 5 and isinstance(back[1][0].b, int)
    assert torch.equal(back[0].inner["k"], torch.ones(2, 2)) and torch.equal(back[0].x, torch.arange(3.0))


def test_load_refuses_a_different_structure():
    flat = flatten_tensors(tree())
    with pytest.raises(ValueError, match="no entry"):
        load_tensors([*tree(), torch.ones(1)], flat)
    with pytest.raises(ValueError, match="no place"):
        load_tensors(tree()[:1], flat)


@pytest.mark.parametrize("preset", ["titans-lmm", "titans-mac", "yaad-h", "mamba2", "transformer"])
def test_model_states_survive_safetensors(preset, tmp_path):
    """Mid-chunk and mid-segment states (anchor, offset, segment position) saved and reloaded continue exactly."""
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset=preset, d_model=32, heads=2, n_layers=2, window=8, segment=8, chunk_size=4,
                                d_state=16)).double()
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, states = model(ids[:, :7])
        want, _ = model(ids[:, 7:], states)
        save_file({k: v.contiguous().clone() for k, v in flatten_tensors(states, "layers").items()},
                  tmp_path / "state.safetensors")
        like = map_tensors(torch.zeros_like, model(ids[:, :7] * 0)[1])    # same structure, other values
        loaded = load_tensors(like, load_file(tmp_path / "state.safetensors"), "layers")
        got, _ = model(ids[:, 7:], loaded)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)   # equal values; a new layout may round differently
