"""Every preset as a language model: streaming and decoding equal one forward; configs and sizes."""
import pytest
import torch

from miras.models import MirasConfig, MirasLM
from miras.models.sizes import config_for_size, count_parameters
from miras.space import ConfigError, list_presets

TINY = dict(d_model=32, heads=2, n_layers=2, window=8, segment=8, persistent_tokens=2, chunk_size=4, d_state=16)


def tiny_model(preset: str, **kw) -> MirasLM:
    torch.manual_seed(0)
    return MirasLM(MirasConfig(preset=preset, **{**TINY, **kw})).double()


CONV = {"transformer+conv": ("transformer", {"attention_conv": 4}), "yaad-h+conv": ("yaad-h", {"attention_conv": 2})}


@pytest.mark.parametrize("preset", list_presets() + list(CONV))
def test_decoding_and_streaming_equal_one_forward(preset):
    name, kw = CONV.get(preset, (preset, {}))
    model = tiny_model(name, **kw)
    ids = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(ids)
        empty, states = model(ids[:, :0])                   # no tokens: no logits, a state to continue from
        assert empty.shape == (2, 0, 256)
        first, states = model(ids[:, :9], states)           # prefill (window 8 < 9 < 2 segments)
        steps = []
        for t in range(9, 21):
            logits, states = model(ids[:, t:t + 1], states)
            steps.append(logits)
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("preset", ["gated-deltanet", "titans-lmm", "titans-mac"])
def test_state_dict_round_trip_gives_identical_logits(preset, tmp_path):
    model = tiny_model(preset)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    clone = tiny_model(preset)
    for p in clone.parameters():
        torch.nn.init.normal_(p)
    clone.load_state_dict(torch.load(tmp_path / "m.pt"))
    ids = torch.randint(0, 256, (1, 13))
    torch.testing.assert_close(clone(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_rows_of_a_batch_do_not_interact():
    model = tiny_model("titans-lmm")
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(2))
    alone, _ = model(ids[:1])
    together, _ = model(ids)
    torch.testing.assert_close(together[:1], alone, rtol=1e-12, atol=1e-12)


def test_loss_is_next_token_cross_entropy_and_trains():
    model = tiny_model("gated-deltanet").float()
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    loss = model.loss(ids)
    logits = model(ids)[0]
    want = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(loss, want)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        model.loss(ids).backward()
        opt.step()
    assert model.loss(ids).item() < loss.item() - 1.0


@pytest.mark.parametrize("preset", ["transformer", "mamba2", "gated-deltanet", "titans-lmm", "moneta", "titans-mac"])
@pytest.mark.parametrize("size,target", [("170M", 170e6), ("340M", 340e6), ("760M", 760e6), ("1.3B", 1.3e9)])
def test_paper_sizes_are_within_5_percent(preset, size, target):
    n = count_parameters(config_for_size(preset, size))
    assert abs(n - target) / target <= 0.05, f"{preset} {size}: {n / 1e6:.1f}M"


@pytest.mark.parametrize("kwargs,field", [
    ({"layer_pattern": ["memory", "lstm"]}, "layer_pattern"), ({"d_model": 30, "heads": 4}, "heads"),
    ({"window": 0}, "window"), ({"segment": 0}, "segment"), ({"preset": "rwkv"}, "preset"),
    ({"chunk_size": 0}, "chunk_size"), ({"lr_max": 0.0}, "lr_max"), ({"lr_max": float("inf")}, "lr_max"),
    ({"preset": "ttt-linear", "lr_max": 0.1}, "lr_max"), ({"preset": "transformer", "lr_max": 0.1}, "lr_max"),
])
def test_bad_config_names_field_and_allowed_values(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.*allowed"):
        MirasConfig(**{**TINY, **kwargs})


def test_lr_max_bounds_every_memory_layers_inner_step():
    """None: the preset's bound (0.01 for moneta, the deep memories' 0.1 for yaad); a number: that bound in every
    memory layer, saved in the config, and a different model."""
    steps = lambda model: {b.mixer.lr_max for b in model.blocks}  # noqa: E731
    assert steps(tiny_model("moneta")) == {0.01} and steps(tiny_model("yaad")) == {0.1}
    default = tiny_model("yaad")
    bounded = tiny_model("yaad", lr_max=0.01)
    assert steps(bounded) == {0.01}
    assert MirasConfig.from_dict(bounded.config.to_dict()).lr_max == 0.01
    ids = torch.randint(0, 256, (1, 40))
    assert not torch.allclose(default(ids)[0], bounded(ids)[0], atol=1e-6)


def test_token_ids_outside_the_vocab_raise():
    model = tiny_model("mamba2")
    with pytest.raises(ConfigError, match=r"input_ids=.*\[0, 256\)"):
        model(torch.tensor([[3, 256]]))


def test_a_hybrid_is_one_config_line():
    model = tiny_model("gated-deltanet", layer_pattern=["memory", "attention"], n_layers=4)
    kinds = [type(b.mixer).__name__ for b in model.blocks]
    assert kinds == ["MemoryLayer", "Attention", "MemoryLayer", "Attention"]


@pytest.mark.parametrize("preset", ["titans-lmm", "mamba2", "transformer", "titans-mac"])
def test_a_right_padded_row_equals_the_row_alone(preset):
    model = tiny_model(preset)
    ids = torch.randint(1, 256, (1, 13), generator=torch.Generator().manual_seed(4))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    batch = torch.cat([padded, torch.randint(1, 256, (1, 19))], dim=0)
    with torch.no_grad():
        alone, _ = model(ids)
        together, _ = model(batch)
    torch.testing.assert_close(together[:1, :13], alone, rtol=1e-12, atol=1e-12)
