"""Padded batches: every preset gives each row of a left- or right-padded batch exactly what it gives the row alone,
in the prefill and in the decoding that continues from the returned states; RowGroups' row bookkeeping."""
import pytest
import torch
import torch.nn.functional as F

from miras.models.padding import RowGroups, token_spans
from miras.space import ConfigError, list_presets

from .test_lm import tiny_model

LENGTHS = (13, 6, 9, 6)     # two rows of one length share a group; 13 spans several chunks and Titans segments
STEPS = 5                   # decoding steps after the prefill


def padded_batch(side: str, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, 256, (n,), generator=g) for n in LENGTHS]
    T = max(LENGTHS)
    pad = (lambda r: (T - len(r), 0)) if side == "left" else (lambda r: (0, T - len(r)))
    ids = torch.stack([F.pad(r, pad(r)) for r in rows])
    mask = torch.stack([F.pad(torch.ones_like(r), pad(r)) for r in rows])
    return ids, mask, rows


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("preset", list_presets())
def test_each_row_of_a_padded_batch_equals_the_row_alone(preset, side):
    model = tiny_model(preset)
    ids, mask, rows = padded_batch(side)
    nxt = torch.randint(1, 256, (len(rows), STEPS), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits, states = model(ids, attention_mask=mask)
        steps = []
        for t in range(STEPS):
            out, states = model(nxt[:, t:t + 1], states)
            steps.append(out)
        for i, row in enumerate(rows):
            alone, alone_states = model(row[None])
            cols = mask[i].bool()
            torch.testing.assert_close(logits[i, cols], alone[0], rtol=1e-9, atol=1e-9)
            assert torch.equal(logits[i, ~cols], torch.zeros_like(logits[i, ~cols]))   # pads: 0
            for t in range(STEPS):
                out, alone_states = model(nxt[i:i + 1, t:t + 1], alone_states)
                torch.testing.assert_close(steps[t][i], out[0], rtol=1e-9, atol=1e-9)


def test_row_groups_select_reorders_repeats_and_drops_rows():
    model = tiny_model("titans-lmm")
    ids, mask, rows = padded_batch("left")
    nxt = torch.randint(1, 256, (len(rows), 2), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        _, states = model(ids, attention_mask=mask)
        want, _ = model(nxt, states)
        for order in (torch.tensor([3, 0, 0, 2, 1]), torch.tensor([True, False, True, True])):
            got, _ = model(nxt[order], states.select(order))
            torch.testing.assert_close(got, want[order], rtol=1e-12, atol=1e-12)
        got, _ = model(nxt.repeat_interleave(2, 0), states.repeat_interleave(2))
        torch.testing.assert_close(got, want.repeat_interleave(2, 0), rtol=1e-12, atol=1e-12)
    assert isinstance(states, RowGroups) and sorted(len(r) for r in states.rows) == [1, 1, 2]


def test_token_spans_and_bad_masks():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    start, length = token_spans(mask)
    assert start.tolist() == [2, 0, 0, 0] and length.tolist() == [2, 3, 0, 4]
    with pytest.raises(ConfigError, match=r"attention_mask='rows \[1\] .*contiguous"):
        token_spans(torch.tensor([[0, 1, 1], [1, 0, 1]]))
