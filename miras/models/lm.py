"""The language model: embedding -> blocks (pre-norm mixer + pre-norm SwiGLU) -> RMSNorm -> tied head.

Initialization (T5's, for tied embeddings): embedding N(0, 1), and the tied head's logits scaled by d_model^-1/2
so they start at unit scale. The token's identity then stands out in the residual stream next to the blocks'
outputs. With the GPT-2 style N(0, 0.02) embedding, attention and Mamba-2 sat at 1/4 accuracy on MQAR
(64 tokens, 4 pairs) for 5000 steps; with this one they solve it in about 1000 (docs/results.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.documents import check_resets
from ..errors import require
from .config import MirasConfig
from .mixers import build_mixer
from .padding import RowGroups, grouped_forward, run_packed


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean token cross-entropy in fp32; logits [B, T, V], labels [B, T] (-100 ignored)."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, ratio: float):
        super().__init__()
        hidden = 8 * max(1, round(ratio * d_model / 8))
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: MirasConfig, mixer: str):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = build_mixer(config, mixer)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_ratio)

    def forward(self, x: Tensor, state=None):
        h, state = self.mixer(self.mixer_norm(x), state)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), state


class MirasLM(nn.Module):
    """input_ids [B, T] (+ per-layer states) -> logits [B, T, vocab] and the new states.

    Feeding a sequence in pieces with the returned states equals one call; decoding one token at a
    time costs the same at any context length for recurrent mixers.
    """

    def __init__(self, config: MirasConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, mixer) for mixer in config.pattern)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=1.0)
        self.logit_scale = 1.0
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
            self.logit_scale = config.d_model ** -0.5

    def forward(self, input_ids: Tensor, states: list | RowGroups | None = None,
                attention_mask: Tensor | None = None, resets: Tensor | None = None) -> tuple[Tensor, list | RowGroups]:
        """attention_mask [B, T] (1 = token, 0 = pad; left or right padding): rows then run as groups of equal
        length (see padding.py) and the states come back as a RowGroups, which later calls continue.
        resets [B, T] bool (packed documents, True at a document's first token, e.g. input_ids == eos_id): each
        document's logits equal a call on it alone (padding.run_packed); the states come back as a RowGroups."""
        if resets is not None:
            padded = attention_mask is not None and not bool(attention_mask.all())
            require(not padded, "attention_mask", "padding together with resets",
                    "one of them: pads (attention_mask) or packed documents (resets)", "pack the rows without pads")
            r = check_resets(resets, *input_ids.shape)
            if isinstance(states, RowGroups) or (r.numel() and (bool(r[:, 1:].any()) or (
                    states is not None and bool(r[:, 0].any())))):
                return run_packed(self, input_ids, r, states)
        if isinstance(states, RowGroups) or (attention_mask is not None and not bool(attention_mask.all())):
            if not isinstance(states, RowGroups):
                states = RowGroups.whole(input_ids.shape[0], states, input_ids.device)
            return grouped_forward(self, input_ids, attention_mask, states)
        if input_ids.numel():
            lo, hi = torch.stack([input_ids.min(), input_ids.max()]).cpu().tolist()   # (one device sync)
            require(lo >= 0 and hi < self.config.vocab_size, "input_ids", f"range [{lo}, {hi}]",
                    f"ids in [0, {self.config.vocab_size})", "check the tokenizer matches the model's vocab_size")
        states = states or [None] * len(self.blocks)
        x = self.embed(input_ids)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, state)
            new_states.append(state)
        return self.head(self.norm(x)) * self.logit_scale, new_states

    def loss(self, input_ids: Tensor, labels: Tensor | None = None, resets: Tensor | None = None) -> Tensor:
        """Next-token cross-entropy; labels default to input_ids shifted left (-100 is ignored)."""
        if labels is None:
            labels = F.pad(input_ids[:, 1:], (0, 1), value=-100)
        return cross_entropy(self(input_ids, resets=resets)[0], labels)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
