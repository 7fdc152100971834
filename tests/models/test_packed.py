"""Packed documents through the model, Hugging Face and the trainer: each document equals a call on it alone.

Every preset: the logits of a batch whose rows pack several documents (resets [B, T]) equal each document's own
call, the gradient of every parameter of a loss over the packed batch equals the sum over the documents' calls,
and decoding after the packed call continues each row as its last document would (states as a RowGroups).
"""
import pytest
import torch

from miras.data.tokenizer import ByteTokenizer
from miras.models.hf import MirasForCausalLM, MirasHFConfig
from miras.models.padding import RowGroups, run_packed
from miras.space import ConfigError, list_presets
from miras.train.config import RunConfig

from .test_lm import tiny_model

T = 19
STARTS = {0: [0, 5, 6, 14], 1: [11]}       # row 1 continues the state given (none here) until token 11


def packed_batch(seed: int = 2):
    ids = torch.randint(1, 256, (2, T), generator=torch.Generator().manual_seed(seed))
    resets = torch.zeros(2, T, dtype=torch.bool)
    for row, starts in STARTS.items():
        resets[row, starts] = True
    return ids, resets


def documents(resets):
    for row in range(resets.shape[0]):
        cuts = [0] + [t for t in range(1, T) if resets[row, t]] + [T]
        yield row, list(zip(cuts[:-1], cuts[1:]))


def weights(shape, seed=3):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("preset", list_presets())
def test_each_packed_document_equals_the_document_alone(preset):
    model = tiny_model(preset)
    ids, resets = packed_batch()
    logits, states = model(ids, resets=resets)
    assert isinstance(states, RowGroups)
    w = weights(logits.shape)
    packed_grads = torch.autograd.grad((logits * w).sum(), list(model.parameters()), allow_unused=True)
    loss, last_states = 0.0, {}
    for row, docs in documents(resets):
        for a, b in docs:
            alone, last_states[row] = model(ids[row:row + 1, a:b])
            torch.testing.assert_close(logits[row, a:b], alone[0], rtol=1e-10, atol=1e-10)
            loss = loss + (alone[0] * w[row, a:b]).sum()
    alone_grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    for (name, _), g, g_ref in zip(model.named_parameters(), packed_grads, alone_grads):
        assert (g is None) == (g_ref is None), name
        if g is not None:
            assert (g - g_ref).norm() <= 1e-6 * g_ref.norm() + 1e-12, name  # RMSNorm of small reads: ill-conditioned
    nxt = torch.randint(1, 256, (2, 4), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out, _ = model(nxt, states)
        for row in range(2):
            torch.testing.assert_close(out[row], model(nxt[row:row + 1], last_states[row])[0][0], rtol=1e-10,
                                       atol=1e-10)


def test_a_reset_at_the_first_token_drops_the_state_given():
    model = tiny_model("moneta")
    ids, resets = packed_batch()
    with torch.no_grad():
        _, states = model(ids[:, :7])
        out, _ = model(ids[:, 7:], states, resets=torch.tensor([[True] + [False] * 11, [False] * 12]))
        torch.testing.assert_close(out[0], model(ids[:1, 7:])[0][0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[1], model(ids[1:, 7:], [s for s in _rows(states, 1)])[0][0],
                                   rtol=1e-10, atol=1e-10)


def _rows(states, row):
    from miras.models.padding import _take
    return _take(states, torch.tensor([row]))


def test_run_packed_takes_any_layer():
    model = tiny_model("titans-mac")
    mixer = model.blocks[0].mixer
    x = weights((2, T, model.config.d_model), seed=5)
    _, resets = packed_batch()
    with torch.no_grad():
        y, _ = run_packed(mixer, x, resets)
        for row, docs in documents(resets):
            for a, b in docs:
                torch.testing.assert_close(y[row, a:b], mixer(x[row:row + 1, a:b])[0][0], rtol=1e-10, atol=1e-10)


def test_resets_with_padding_or_a_bad_mask_are_refused():
    model = tiny_model("gated-deltanet")
    ids, resets = packed_batch()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with pytest.raises(ConfigError, match="attention_mask"):
        model(ids, attention_mask=mask, resets=resets)
    with pytest.raises(ConfigError, match="resets"):
        model(ids, resets=resets.long())
    with pytest.raises(ConfigError, match="resets.shape"):
        model(ids, resets=resets[:, 1:])


@pytest.mark.parametrize("preset", ["transformer", "moneta", "titans-mal"])
def test_hugging_face_packed_sequences(preset):
    """transformers' packed conventions (DataCollatorWithFlattening): position_ids restarting at 0, or
    cu_seq_lens_q; left padding's first real token (position 0 after pads) is no document start."""
    torch.manual_seed(0)
    model = MirasForCausalLM(MirasHFConfig(preset=preset, d_model=32, n_layers=2, heads=2, vocab_size=64)).double()
    ids = torch.randint(1, 64, (1, 17), generator=torch.Generator().manual_seed(1))
    position_ids = torch.cat([torch.arange(6), torch.arange(11)])[None]
    with torch.no_grad():
        want = torch.cat([model(ids[:, :6]).logits, model(ids[:, 6:]).logits], dim=1)
        got = model(ids, position_ids=position_ids, use_cache=False).logits
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        got = model(ids, cu_seq_lens_q=torch.tensor([0, 6, 17]), use_cache=False).logits
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(model(ids).logits, want)
        mask = torch.tensor([[0, 0, 0] + [1] * 14])
        left = model(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits
        torch.testing.assert_close(left[:, 3:], model(ids[:, 3:]).logits, rtol=1e-10, atol=1e-10)


def test_the_trainer_resets_at_every_document_by_default():
    from miras.train.data import RunData
    cfg = RunConfig()
    assert cfg.data.documents == "reset"
    eos = ByteTokenizer.eos_id
    data = RunData(None, None, 256, "byte", 0.0, document_start=eos)
    inputs = torch.tensor([[5, eos, 7, 8, eos]])
    assert data.resets(inputs).tolist() == [[False, True, False, False, True]]
    assert RunData(None, None, 256, "byte", 0.0).resets(inputs) is None
    with pytest.raises(ConfigError, match="data.documents"):
        RunConfig.from_dict({"data": {"documents": "merge"}})


def test_perplexity_restarts_at_every_document_like_training():
    """miras eval's perplexity (pieces with the state carried) with document starts equals the documents alone."""
    from miras.eval.perplexity import perplexity_by_position
    model = tiny_model("titans-lmm")
    eos = 0
    tokens = torch.randint(1, 256, (200,), generator=torch.Generator().manual_seed(7))
    tokens[[30, 95, 150]] = eos
    with torch.no_grad():
        packed = perplexity_by_position(model, tokens.numpy(), 128, windows=1, piece=48, document_start=eos)
        ids = tokens[:129]
        losses = []
        for a, b in [(0, 30), (30, 95), (95, 128)]:
            logits, _ = model(ids[None, a:b])
            losses.append(torch.nn.functional.cross_entropy(logits[0].float(), ids[a + 1:b + 1], reduction="none"))
    assert abs(packed["loss"] - torch.cat(losses).mean().item()) < 1e-6            # the loss is fp32
