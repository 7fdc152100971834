"""Hugging Face wiring: config both ways, save_pretrained -> AutoModelForCausalLM.from_pretrained, generation
(greedy, sampling, beam search, restarting from a returned cache) with the recurrent cache equal to without it and
to a manual loop, loss, left-padded batches generating like their rows alone, the cache's batch operations."""
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from miras.models import MirasConfig  # noqa: E402
from miras.models.hf import MirasCache, MirasForCausalLM, MirasHFConfig  # noqa: E402
from miras.spec import ConfigError  # noqa: E402

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
def test_greedy_with_cache_equals_without_and_a_manual_loop(preset):
    model, ids = tiny(preset), prompt()
    fed = []
    hook = model.model.register_forward_hook(lambda module, args, out: fed.append(args[0].shape[1]))
    cached = model.generate(ids, max_new_tokens=NEW, do_sample=False, use_cache=True)
    hook.remove()
    assert fed == [5] + [1] * (NEW - 1)            # the prompt, then only the new token each step
    uncached = model.generate(ids, max_new_tokens=NEW, do_sample=False, use_cache=False)
    manual = ids
    with torch.no_grad():
        for _ in range(NEW):
            logits, _ = model.model(manual)
            manual = torch.cat([manual, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, uncached) and torch.equal(cached, manual)


@pytest.mark.parametrize("preset", ["titans-mac", "yaad-h"])
def test_generate_continues_from_a_cache_it_returned(preset):
    model, ids = tiny(preset), prompt()
    cache = MirasCache()
    first = model.generate(ids, max_new_tokens=5, do_sample=False, past_key_values=cache)
    assert cache.get_seq_length() == 5 + 5 - 1                   # the last new token is not fed yet
    more = model.generate(first, max_new_tokens=NEW - 5, do_sample=False, past_key_values=cache)
    assert torch.equal(more, model.generate(ids, max_new_tokens=NEW, do_sample=False))


@pytest.mark.parametrize("preset", PRESETS)
def test_sampling_with_a_seed_is_reproducible_and_valid(preset):
    model, ids = tiny(preset), prompt()
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        runs.append(model.generate(ids, max_new_tokens=NEW, do_sample=True, top_k=20, use_cache=use_cache))
    assert runs[0].shape == (2, 5 + NEW) and torch.equal(runs[0][:, :5], ids)
    assert 0 <= int(runs[0].min()) and int(runs[0].max()) < 256
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("preset", PRESETS)
def test_beam_search_with_cache_equals_without(preset):
    model, ids = tiny(preset), prompt(batch=1)
    runs = [model.generate(ids, max_new_tokens=NEW, num_beams=3, num_return_sequences=2, do_sample=False,
                           use_cache=use_cache) for use_cache in (True, False)]
    assert runs[0].shape == (2, 5 + NEW) and torch.equal(runs[0], runs[1])


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
    model = tiny(preset)
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
