"""Hugging Face wiring: config both ways, save_pretrained -> AutoModelForCausalLM.from_pretrained, generation
(greedy, sampling, beam search, restarting from a returned cache) with the recurrent cache giving the logits of
every step that generation without it and a manual loop give, loss, left-padded batches generating like their rows
alone, the cache's batch operations.

Generation is checked on models whose untied head has large random weights, so the generated tokens differ from
step to step and depend on the context (an untrained tied model repeats one token with or without a working cache).
"""
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from miras.models import MirasConfig  # noqa: E402
from miras.models.hf import CACHE_KEYWORD, MirasCache, MirasForCausalLM, MirasHFConfig  # noqa: E402
from miras.space import ConfigError  # noqa: E402

PRESETS = ["transformer", "gated-deltanet", "mamba2", "titans-lmm", "moneta", "titans-mac", "yaad-h"]
TINY = dict(d_model=32, heads=2, n_layers=2, window=8, segment=8, chunk_size=4, d_state=16)
NEW = 12   # prompt 5 + 12 new tokens: past the window, a Titans segment and several memory chunks


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, which spin for seconds per op on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(preset: str, **kw) -> MirasForCausalLM:
    torch.manual_seed(0)
    return MirasForCausalLM(MirasHFConfig.from_miras(MirasConfig(preset=preset, **{**TINY, **kw}))).double().eval()


def talkative(preset: str) -> MirasForCausalLM:
    """A tiny model whose greedy tokens vary: an untied head with N(0, 1) weights."""
    model = tiny(preset, tie_embeddings=False)
    with torch.no_grad():
        model.model.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(5))
    return model


def generate(model, ids, **kw):
    """generate with the logits of every step: -> (sequences, [B', V] logits per step)."""
    out = model.generate(ids, max_new_tokens=NEW, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences, out.logits


def assert_same_steps(got: tuple, want: tuple) -> None:
    """Equal logits at every step. generate returns them in float32; the float64 model's chunked and token-by-token
    passes differ by rounding only, which may flip the last float32 bit."""
    assert len(got) == len(want) == NEW
    for step, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g.float(), w.float(), rtol=1e-6, atol=1e-6, msg=lambda m: f"step {step}: {m}")


def assert_varied(sequences: torch.Tensor) -> None:
    """The test's power: tokens that differ, so a cache that forgot the context would show."""
    assert all(len(set(row[5:].tolist())) >= 3 for row in sequences), sequences


def prompt(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 5), generator=torch.Generator().manual_seed(seed))


def test_config_converts_both_ways_and_round_trips_through_auto_config(tmp_path):
    cfg = MirasConfig(preset="titans-mag", layer_pattern=["memory", "swa"], head_dim=8, tie_embeddings=False,
                      extra={"note": "x"}, **TINY)
    hf = MirasHFConfig.from_miras(cfg, eos_token_id=3)
    assert hf.to_miras() == cfg
    assert (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads) == (32, 2, 2)
    assert hf.tie_word_embeddings is False and hf.eos_token_id == 3
    hf.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MirasHFConfig and loaded.to_miras() == cfg
    assert MirasHFConfig().to_miras() == MirasConfig()
    with pytest.raises(ConfigError):
        MirasHFConfig(preset="no-such-preset")


@pytest.mark.parametrize("preset", PRESETS)
def test_save_pretrained_then_auto_from_pretrained_gives_identical_logits(preset, tmp_path):
    model = tiny(preset)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert type(loaded) is MirasForCausalLM and loaded.dtype == torch.float64
    assert loaded.model.head.weight is loaded.model.embed.weight
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    ids = prompt()
    with torch.no_grad():   # equal weights; memory-mapped ones may round differently in the last bit
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-12, atol=1e-12)


def test_untied_head_is_saved_and_loaded(tmp_path):
    model = tiny("gated-deltanet", tie_embeddings=False)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.model.head.weight is not loaded.model.embed.weight
    assert torch.equal(loaded.model.head.weight, model.model.head.weight)


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_logits_with_cache_equal_without_and_a_manual_loop_at_every_step(preset):
    model, ids = talkative(preset), prompt()
    fed = []
    hook = model.model.register_forward_hook(lambda module, args, out: fed.append(args[0].shape[1]))
    cached, cached_logits = generate(model, ids, do_sample=False, use_cache=True)
    hook.remove()
    assert fed == [5] + [1] * (NEW - 1)            # the prompt, then only the new token each step
    assert_varied(cached)
    uncached, uncached_logits = generate(model, ids, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    assert_same_steps(cached_logits, uncached_logits)
    manual, manual_logits = ids, []
    with torch.no_grad():
        for _ in range(NEW):
            logits, _ = model.model(manual)
            manual_logits.append(logits[:, -1])
            manual = torch.cat([manual, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, manual)
    assert_same_steps(cached_logits, tuple(manual_logits))


@pytest.mark.parametrize("preset", ["titans-mac", "yaad-h", "gated-deltanet"])
def test_generate_continues_from_a_cache_it_returned(preset):
    model, ids = talkative(preset), prompt()
    cache = MirasCache()
    first = model.generate(ids, max_new_tokens=5, do_sample=False, **{CACHE_KEYWORD: cache})
    assert cache.get_seq_length() == 5 + 5 - 1                   # the last new token is not fed yet
    out = model.generate(first, max_new_tokens=NEW - 5, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, **{CACHE_KEYWORD: cache})
    whole, whole_logits = generate(model, ids, do_sample=False)
    assert_varied(whole)
    assert torch.equal(out.sequences, whole)
    for step, (got, want) in enumerate(zip(out.logits, whole_logits[5:])):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=lambda m: f"step {5 + step}: {m}")


def test_generate_from_a_cache_with_only_the_new_tokens_is_refused():
    model, ids = talkative("gated-deltanet"), prompt()
    cache = MirasCache()
    model.generate(ids, max_new_tokens=3, do_sample=False, **{CACHE_KEYWORD: cache})
    with pytest.raises(ValueError, match="pass the whole sequence"):
        model.generate(ids[:, :2], max_new_tokens=3, do_sample=False, **{CACHE_KEYWORD: cache})


@pytest.mark.parametrize("preset", PRESETS)
def test_seeded_sampling_logits_with_cache_equal_without_at_every_step(preset):
    model, ids = talkative(preset), prompt()
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        runs.append(generate(model, ids, do_sample=True, top_k=20, use_cache=use_cache))
    (cached, cached_logits), (uncached, uncached_logits) = runs
    assert cached.shape == (2, 5 + NEW) and torch.equal(cached[:, :5], ids)
    assert 0 <= int(cached.min()) and int(cached.max()) < 256
    assert_varied(cached)
    assert torch.equal(cached, uncached)
    assert_same_steps(cached_logits, uncached_logits)


@pytest.mark.parametrize("preset", PRESETS)
def test_beam_search_logits_with_cache_equal_without_at_every_step(preset):
    model, ids = talkative(preset), prompt(batch=1)
    (cached, cached_logits), (uncached, uncached_logits) = [
        generate(model, ids, num_beams=3, num_return_sequences=2, do_sample=False, use_cache=use_cache)
        for use_cache in (True, False)]
    assert cached.shape == (2, 5 + NEW) and torch.equal(cached, uncached)
    assert_varied(cached)
    assert cached_logits[0].shape[0] == 3             # every beam's logits at every step
    assert_same_steps(cached_logits, uncached_logits)


@pytest.mark.parametrize("preset", PRESETS)
def test_loss_with_labels_equals_miras_loss(preset):
    model, ids = tiny(preset), prompt(seed=2)
    labels = ids.clone()
    labels[0, 2] = -100
    out = model(ids, labels=labels)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(out.loss, model.model.loss(ids, shifted), rtol=1e-12, atol=1e-12)
    loss, logits = model(ids, labels=labels, use_cache=False, return_dict=False)
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)


def left_padded(lengths=(5, 3, 4, 3), seed: int = 4):
    """Rows of `lengths` tokens (ids >= 1), left-padded with 0 to the longest; -> (ids, mask, rows)."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 256, (1, n), generator=g) for n in lengths]
    T = max(lengths)
    ids = torch.cat([torch.nn.functional.pad(r, (T - r.shape[1], 0)) for r in rows])
    mask = torch.cat([torch.nn.functional.pad(torch.ones_like(r), (T - r.shape[1], 0)) for r in rows])
    return ids, mask, rows


def test_an_all_ones_mask_changes_nothing():
    model, ids = tiny("gated-deltanet"), prompt()
    mask = torch.ones_like(ids)
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_left_padded_batch_generates_what_each_row_generates_alone(preset):
    model = talkative(preset)
    ids, mask, rows = left_padded()
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_beams=2, do_sample=False)
    for i, row in enumerate(rows):
        alone = model.generate(row, max_new_tokens=NEW, do_sample=False)
        assert torch.equal(greedy[i, ids.shape[1] - row.shape[1]:], alone[0]), f"row {i}"
        alone = model.generate(row, max_new_tokens=NEW, num_beams=2, do_sample=False)
        assert torch.equal(beams[i, ids.shape[1] - row.shape[1]:], alone[0]), f"row {i} (beams)"


def test_a_mask_with_a_hole_is_refused():
    model, ids = tiny("gated-deltanet"), prompt()
    mask = torch.ones_like(ids)
    mask[0, 2] = 0
    with pytest.raises(ConfigError, match="attention_mask=.*contiguous"):
        model(ids, attention_mask=mask)


@pytest.mark.parametrize("preset", ["titans-mac", "yaad-h"])
def test_cache_batch_operations_move_whole_rows(preset):
    """Continuing from a reordered / repeated cache equals continuing the original rows in that order."""
    model, ids = tiny(preset), prompt(batch=3)
    nxt = torch.randint(0, 256, (3, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        want = model(nxt, past_key_values=cache).logits
        order = torch.tensor([2, 0, 2])
        cache = model(ids, use_cache=True).past_key_values
        cache.reorder_cache(order)
        got = model(nxt[order], past_key_values=cache).logits
        torch.testing.assert_close(got, want[order], rtol=1e-12, atol=1e-12)
        assert cache.get_seq_length() == 5 + 2
        cache = model(ids, use_cache=True).past_key_values
        cache.batch_repeat_interleave(2)
        got = model(nxt.repeat_interleave(2, 0), past_key_values=cache).logits
        torch.testing.assert_close(got, want.repeat_interleave(2, 0), rtol=1e-12, atol=1e-12)
    assert isinstance(cache, MirasCache)
