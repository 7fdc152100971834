"""The public surface: what `from miras import ...` offers, each name importable and documented."""
import miras

PUBLIC = {"ConfigError", "MemoryState", "MirasConfig", "MirasLM", "MirasSpec", "Preset", "get_preset", "initial_state",
          "list_presets", "memory_op", "recurrent_reference", "spec_from_dict", "spec_to_dict"}


def test_public_names():
    assert set(miras.__all__) == PUBLIC
    for name in PUBLIC:
        obj = getattr(miras, name)
        assert obj.__doc__, f"miras.{name} has no docstring"


def test_the_readme_example_runs():
    import torch
    from miras import MirasConfig, MirasLM, get_preset, memory_op
    from miras.ops.inputs import random_inputs
    spec = get_preset("moneta").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=5)
    y, _ = memory_op(spec, q, k, v, gates, state)
    assert y.shape == v.shape and torch.isfinite(y).all()
    model = MirasLM(MirasConfig(preset="moneta", spec={"bias": "huber"}, d_model=32, n_layers=1))
    assert model(torch.randint(0, 256, (1, 7)))[0].shape == (1, 7, 256)
