"""Titans MAG / MAL with their default persistent tokens: Hugging Face generation with the cache gives the logits of
a full forward at every step (only the first call of a stream reads the persistent prefix)."""
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from miras.models import MirasConfig  # noqa: E402
from miras.models.hf import MirasForCausalLM, MirasHFConfig  # noqa: E402

TINY = dict(d_model=32, heads=2, n_layers=2, window=8, segment=8, chunk_size=4, d_state=16, tie_embeddings=False)
NEW = 10


@pytest.mark.parametrize("preset", ["titans-mag", "titans-mal"])
def test_cached_generation_equals_the_full_forward_at_every_step(preset):
    torch.manual_seed(0)
    model = MirasForCausalLM(MirasHFConfig.from_miras(MirasConfig(preset=preset, **TINY))).double().eval()
    assert model.config.persistent_tokens == 4
    with torch.no_grad():
        model.model.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(5))   # varied tokens
        for name, p in model.named_parameters():     # gates that depend on their input, P included
            if name.endswith("up.weight"):
                p.normal_(0, 0.3)
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    out = model.generate(ids, max_new_tokens=NEW, do_sample=False, use_cache=True, output_logits=True,
                         return_dict_in_generate=True)
    seq = out.sequences
    assert all(len(set(row[5:].tolist())) >= 3 for row in seq), seq
    with torch.no_grad():
        full, _ = model.model(seq[:, :-1])
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits.float(), full[:, 4 + step].float(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"step {step}: {m}")
