"""A document ingested once, its memory saved to disk and restored, continues exactly."""
import pytest
import torch

from miras.models import MirasConfig, MirasLM
from miras.models.streaming import load_state, save_state
from miras.space import ConfigError

TINY = dict(d_model=32, heads=2, n_layers=2, window=8, segment=8, chunk_size=4, d_state=16)


@pytest.mark.parametrize("preset", ["titans-lmm", "gated-deltanet", "mamba2", "titans-mac", "titans-mag", "titans-mal",
                                    "memora-h", "transformer"])
def test_saved_state_continues_like_one_forward(preset, tmp_path):
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset=preset, **TINY)).double().eval()
    ids = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(ids)
        _, states = model(ids[:, :10])                    # ingest in pieces: 10 + 9 (mid-chunk, mid-segment)
        _, states = model(ids[:, 10:19], states)
        save_state(tmp_path / "doc.safetensors", model, states)
        restored = load_state(tmp_path / "doc.safetensors", model)
        later, _ = model(ids[:, 19:], restored)
    torch.testing.assert_close(later, full[:, 19:], rtol=1e-10, atol=1e-10)


def test_a_state_from_another_config_is_refused_with_the_difference(tmp_path):
    model = MirasLM(MirasConfig(preset="titans-lmm", **TINY))
    _, states = model(torch.randint(0, 256, (1, 5)))
    save_state(tmp_path / "s.safetensors", model, states)
    other = MirasLM(MirasConfig(preset="titans-lmm", **{**TINY, "d_model": 48}))
    with pytest.raises(ConfigError, match=r"another config.*'d_model': \(32, 48\)"):
        load_state(tmp_path / "s.safetensors", other)
    with pytest.raises(ConfigError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors", model)
