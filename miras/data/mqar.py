"""MQAR: multi-query associative recall (Arora, Eyuboglu et al., "Zoology", 2023), as pure per-step batches.

One sample (length T = seq_len, P = num_kv_pairs pairs, vocabulary V):

    positions 0 .. 2P-1   k1 v1 k2 v2 ... kP vP; keys distinct in [1, V//2), values distinct in [V//2, V)
                          (id 0 is kept out of the keys: it is the filler when random_fill=False)
    positions 2P .. T-1   every key once more, as a query, at position 2P + 2*g with distinct slots
                          g in [0, (T-2P)//2) drawn with P(g) proportional to (g+1)^(power_a-1): with
                          zoology's power_a=0.01 about 1/(g+1), so most queries sit close to the kv section;
                          every other position is filler: a uniform random id of [0, V) (zoology's
                          random_non_queries=True; it may repeat a key id, as in zoology) or 0 (random_fill=False)

    labels[b, t] = v_i  exactly where inputs[b, t] is the query of k_i, else -100. This is the usual
                        next-token convention: logits[b, t] must predict v_i, the token that follows k_i in
                        the kv section; the input at t+1 is filler, never the value. P labels per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import require
from .rng import EVAL, TRAIN, generator_for

# Zoology's standard (seq_len, num_kv_pairs) grid (its original MQAR sweep, vocab 8192): train on the mixture
# "train", report accuracy on every point of "test"; "figure2" is the ICLR'24 Figure 2 grid. With the
# default vocab_size=256 at most 127 pairs fit (127 key ids), so (512, 128) and (1024, 256) need V >= 514.
MQAR_SETTINGS = {
    "train": ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64)),
    "test": ((64, 4), (64, 8), (64, 16), (128, 32), (256, 64), (512, 128), (1024, 256)),
    "figure2": ((64, 4), (128, 8), (256, 16), (512, 64)),
}


@dataclass(frozen=True)
class MQAR:
    """The MQAR generator; batch(step) is a pure function of (seed, step, rank)."""

    seq_len: int = 256
    num_kv_pairs: int = 16
    vocab_size: int = 256
    power_a: float = 0.01
    random_fill: bool = True
    batch_size: int = 16
    seed: int = 0
    rank: int = 0

    def __post_init__(self):
        P, T, V = self.num_kv_pairs, self.seq_len, self.vocab_size
        require(P >= 1, "num_kv_pairs", P, ">= 1")
        require(4 * P <= T, "seq_len", T, f">= 4 * num_kv_pairs = {4 * P} (pairs plus one query slot pair each)")
        require(P <= V // 2 - 1 and P <= V - V // 2, "vocab_size", V,
                f">= {2 * P + 2} for {P} distinct keys in [1, V//2) and values in [V//2, V)")
        require(self.power_a > 0, "power_a", self.power_a, "> 0 (1.0 = uniform query positions)")
        require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")

    def sample(self, generator: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
        """-> (input_ids [batch, seq_len] int64, labels [batch, seq_len] int64, -100 off the queries)."""
        P, T, V, half = self.num_kv_pairs, self.seq_len, self.vocab_size, self.vocab_size // 2
        keys = torch.rand(batch, half - 1, generator=generator).argsort(1)[:, :P] + 1
        values = torch.rand(batch, V - half, generator=generator).argsort(1)[:, :P] + half
        slots = (T - 2 * P) // 2
        weights = torch.arange(1, slots + 1, dtype=torch.float64) ** (self.power_a - 1)
        gaps = torch.multinomial(weights.expand(batch, slots), P, replacement=False, generator=generator)
        if self.random_fill:
            inputs = torch.randint(V, (batch, T), generator=generator)
        else:
            inputs = torch.zeros(batch, T, dtype=torch.int64)
        inputs[:, 0:2 * P:2], inputs[:, 1:2 * P:2] = keys, values
        queries = 2 * P + 2 * gaps
        inputs.scatter_(1, queries, keys)
        labels = torch.full((batch, T), -100, dtype=torch.int64).scatter_(1, queries, values)
        return inputs, labels

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The training batch of step: [batch_size, seq_len] inputs and labels, pure in (seed, step, rank)."""
        return self.sample(generator_for(self.seed, TRAIN, step, self.rank), self.batch_size)

    def eval_set(self, n: int, seed: int | None = None) -> tuple[Tensor, Tensor]:
        """n held-out samples [n, seq_len] from a stream training never draws (seed defaults to self.seed)."""
        return self.sample(generator_for(self.seed if seed is None else seed, EVAL), n)

    @property
    def chance_loss(self) -> float:
        """Cross-entropy (nats) of guessing uniformly among the V - V//2 value ids at every labeled position."""
        return math.log(self.vocab_size - self.vocab_size // 2)
