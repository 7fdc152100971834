"""S-NIAH: RULER's single needle in a haystack, for any tokenizer with encode / decode / vocab_size.

Prompt (RULER's single-needle template; {kind} is the value kind, {key} an adjective-noun word):

    A special magic {kind} is hidden within the following text. Make sure to memorize it. I will quiz
    you about the {kind} afterwards.\\n<haystack with the needle>\\nWhat is the special magic {kind} for
    {key} mentioned in the provided text? The special magic {kind} for {key} mentioned in the provided text is:

needle "One of the special magic {kind} for {key} is: {value}." and answer " {value}" (leading space).
The pieces (template head, every haystack sentence + " ", needle + " ", query) are encoded separately and
their ids concatenated, so the prompt has exactly the requested number of tokens for any tokenizer (for BPE
this is a valid, not always the canonical, tokenization of the text): the haystack fills what is left, its
last sentence cut at a token, never mid-token. The needle goes at the sentence boundary nearest
depth * (haystack tokens), counted over the haystack only (depth 0: first sentence, 1: after the last whole one).
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from ..errors import require
from .rng import EVAL, TRAIN, generator_for, randint

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
HEAD = ("A special magic {kind} is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {kind} afterwards.\n")
NEEDLE = "One of the special magic {kind} for {key} is: {value}."
QUERY = ("\nWhat is the special magic {kind} for {key} mentioned in the provided text? "
         "The special magic {kind} for {key} mentioned in the provided text is:")
VALUE_KINDS = ("numbers", "words", "uuids")
_ALIASES = {"number": "numbers", "passkey": "numbers", "pass-key": "numbers", "word": "words", "uuid": "uuids"}
HAYSTACKS = ("noise", "text")
NIAH_LENGTHS = (1024, 2048, 4096, 8192, 16384)
# RULER's single-needle variants as (haystack, value_kind); RULER's "essay" haystack is "text" here.
RULER_SINGLE = {"niah_single_1": ("noise", "numbers"), "niah_single_2": ("text", "numbers"),
                "niah_single_3": ("text", "uuids")}

_ADJECTIVES = ("amber", "brave", "calm", "damp", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen",
               "lucky", "mellow", "noisy", "odd", "proud", "quiet", "rapid", "shy", "tidy", "upbeat", "vivid",
               "witty", "young")
_NOUNS = ("anchor", "badge", "candle", "dragon", "engine", "falcon", "garden", "harbor", "island", "jacket",
          "kettle", "lantern", "meadow", "needle", "orchard", "pepper", "quilt", "river", "saddle", "tiger",
          "umbrella", "violin", "wagon", "yarn")
WORDS = tuple(f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS)   # keys, and the values of kind "words"
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def depths(n: int = 10) -> list[float]:
    """n needle depths evenly spaced over [0, 1], both ends included."""
    require(n >= 2, "n", n, ">= 2")
    return [i / (n - 1) for i in range(n)]


def sentences(documents) -> list[str]:
    """Documents -> sentences (split after . ! ? followed by whitespace; whitespace runs collapsed)."""
    text = " ".join(re.sub(r"\s+", " ", doc).strip() for doc in documents)
    return [s for s in re.split(r"(?<=[.!?]) ", text) if s]


@dataclass
class NeedleTask:
    """S-NIAH examples; batch(step) (training form) is pure in (seed, step, rank) and needs `tokenizer`.

    value_kind: "numbers" (7 digits, RULER's pass-key), "words" (one of WORDS) or "uuids" (version 4).
    depth: needle depth in [0, 1], or None for a uniform random depth per example.
    haystack: "noise" (NOISE repeated, from its first sentence) or "text" (the sentences of `documents`
        read cyclically from a random sentence).
    """

    value_kind: str = "numbers"
    context_tokens: int = 4096
    depth: float | None = 0.5
    haystack: str = "noise"
    documents: tuple[str, ...] = ()
    tokenizer: object = None
    batch_size: int = 1
    seed: int = 0
    rank: int = 0
    _sentences: list[str] = field(init=False, repr=False)

    def __post_init__(self):
        self.value_kind = _ALIASES.get(self.value_kind, self.value_kind)
        require(self.value_kind in VALUE_KINDS, "value_kind", self.value_kind, f"one of {VALUE_KINDS}")
        require(self.haystack in HAYSTACKS, "haystack", self.haystack, f"one of {HAYSTACKS}")
        require(self.depth is None or 0 <= self.depth <= 1, "depth", self.depth, "in [0, 1] or None (random)")
        require(self.context_tokens >= 1, "context_tokens", self.context_tokens, ">= 1")
        self._sentences = sentences([NOISE] if self.haystack == "noise" else self.documents)
        require(bool(self._sentences), "documents", "no sentences", "text documents for haystack='text'")

    def _draw(self, g: torch.Generator) -> tuple[str, str, float, int]:
        """The random choices of one example, always in this order: key, value, depth, first sentence."""
        key = WORDS[randint(g, len(WORDS))]
        if self.value_kind == "numbers":
            value = str(10 ** 6 + randint(g, 9 * 10 ** 6))
        elif self.value_kind == "words":
            value = WORDS[randint(g, len(WORDS))]
        else:
            value = str(uuid.UUID(bytes=bytes(torch.randint(256, (16,), generator=g).tolist()), version=4))
        depth = float(torch.rand((), generator=g)) if self.depth is None else self.depth
        first = randint(g, len(self._sentences)) if self.haystack == "text" else 0
        return key, value, depth, first

    def _prompt(self, tok, key: str, value: str, depth: float, first: int, reserve: int) -> tuple[list[int], int]:
        """-> (prompt ids, exactly context_tokens - reserve of them; index of the needle's first token)."""
        kind = self.value_kind
        head, query = tok.encode(HEAD.format(kind=kind)), tok.encode(QUERY.format(kind=kind, key=key))
        needle = tok.encode(NEEDLE.format(kind=kind, key=key, value=value) + " ")
        fixed = len(head) + len(needle) + len(query) + reserve
        budget = self.context_tokens - fixed
        require(budget >= 0, "context_tokens", self.context_tokens,
                f">= {fixed} tokens (template + needle + query{' + answer' if reserve else ''}) here")
        hay, starts, i = [], [], first
        while len(hay) < budget:
            starts.append(len(hay))
            hay += tok.encode(self._sentences[i % len(self._sentences)] + " ")
            i += 1
        if len(hay) == budget:      # the last sentence is whole: the end is a boundary too
            starts.append(budget)
        cut = min(starts, key=lambda s: abs(s - depth * budget))
        return head + hay[:cut] + needle + hay[cut:budget] + query, len(head) + cut

    def build_example(self, tokenizer, generator: torch.Generator) -> tuple[list[int], list[int], int]:
        """-> (prompt_ids, answer_ids: encode(" " + value), needle_token_position). The prompt leaves room for the
        answer as in training (context_tokens - len(answer) + 1 ids, so the answer's last token is predicted at
        position context_tokens - 1), as RULER's inputs leave room for the tokens to generate: a model trained at
        context_tokens is evaluated at the positions it was trained on."""
        key, value, depth, first = self._draw(generator)
        answer = tokenizer.encode(" " + value)
        prompt, position = self._prompt(tokenizer, key, value, depth, first, reserve=len(answer) - 1)
        return prompt, answer, position

    def eval_examples(self, tokenizer, n: int, seed: int | None = None) -> list[tuple[list[int], list[int], int]]:
        """n held-out build_example outputs from a stream training never draws (seed defaults to self.seed)."""
        g = generator_for(self.seed if seed is None else seed, EVAL)
        return [self.build_example(tokenizer, g) for _ in range(n)]

    def _rows(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """batch_size rows of prompt + answer = context_tokens + 1 ids: inputs = ids[:-1], labels = ids[1:]
        on the answer tokens (so labels[t] is the answer token at t + 1), -100 elsewhere; both [B, context_tokens]."""
        require(self.tokenizer is not None, "tokenizer", None, "a tokenizer for NeedleTask batches")
        T, inputs, labels = self.context_tokens, [], []
        for _ in range(self.batch_size):
            key, value, depth, first = self._draw(g)
            answer = self.tokenizer.encode(" " + value)
            prompt, _ = self._prompt(self.tokenizer, key, value, depth, first, reserve=len(answer) - 1)
            ids = torch.tensor(prompt + answer)
            label = torch.full((T,), -100, dtype=torch.int64)
            label[len(prompt) - 1:] = ids[len(prompt):]
            inputs.append(ids[:-1])
            labels.append(label)
        return torch.stack(inputs), torch.stack(labels)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """The training batch of step ([batch_size, context_tokens] inputs and labels), pure in (seed, step, rank)."""
        return self._rows(generator_for(self.seed, TRAIN, step, self.rank))

    def eval_batch(self, index: int) -> tuple[Tensor, Tensor]:
        """Held-out batch number index in the training form (same for every rank)."""
        return self._rows(generator_for(self.seed, EVAL, index))

    def stream_example(self, tokenizer, generator: torch.Generator, piece: int
                       ) -> tuple[Iterator[list[int]], list[int], int]:
        """build_example for contexts too long to hold: (pieces, answer_ids, needle_token_position), where pieces
        yields lists of at most `piece` ids whose concatenation is build_example's prompt for the same generator
        state. The prompt is never held whole (memory independent of context_tokens): a first pass counts the
        haystack's sentence boundaries to place the needle, the iterator then re-encodes the sentences (each
        distinct sentence is encoded once and cached)."""
        require(isinstance(piece, int) and piece >= 1, "piece", piece, "an integer >= 1 (tokens per piece)")
        key, value, depth, first = self._draw(generator)
        kind = self.value_kind
        head, query = tokenizer.encode(HEAD.format(kind=kind)), tokenizer.encode(QUERY.format(kind=kind, key=key))
        needle = tokenizer.encode(NEEDLE.format(kind=kind, key=key, value=value) + " ")
        answer = tokenizer.encode(" " + value)
        fixed = len(head) + len(needle) + len(query) + len(answer) - 1
        budget = self.context_tokens - fixed
        require(budget >= 0, "context_tokens", self.context_tokens,
                f">= {fixed} tokens (template + needle + query + answer) here")
        cache: dict[int, list[int]] = {}

        def sentence(i: int) -> list[int]:
            i %= len(self._sentences)
            if i not in cache:
                cache[i] = tokenizer.encode(self._sentences[i] + " ")
            return cache[i]

        target, pos, i, cut = depth * budget, 0, first, None
        while pos < budget:                     # the boundary nearest the target (the first of equals), as _prompt
            if cut is None or abs(pos - target) < abs(cut - target):
                cut = pos
            elif pos > target:
                break
            pos += len(sentence(i))
            i += 1
        if pos == budget and (cut is None or abs(budget - target) < abs(cut - target)):
            cut = budget                        # the last sentence is whole: the end is a boundary too

        def ids() -> Iterator[list[int]]:
            yield head
            emitted, j = 0, first
            while emitted < budget:
                if emitted == cut:
                    yield needle
                s = sentence(j)[:budget - emitted]
                yield s
                emitted, j = emitted + len(s), j + 1
            if cut == budget:
                yield needle
            yield query

        def pieces() -> Iterator[list[int]]:
            buffer: list[int] = []
            for part in ids():
                buffer += part
                while len(buffer) >= piece:
                    yield buffer[:piece]
                    buffer = buffer[piece:]
            if buffer:
                yield buffer

        return pieces(), answer, len(head) + cut


@dataclass
class NeedleMix:
    """Training batches over several S-NIAH variants: each row's (haystack, value_kind) drawn uniformly from
    `variants` (default: RULER's niah_single_1/2/3), at a uniform random depth; batch(step) is pure in
    (seed, step, rank) like NeedleTask.batch. documents: the real-text haystack of the "text" variants."""

    variants: tuple[tuple[str, str], ...] = tuple(RULER_SINGLE.values())
    context_tokens: int = 1024
    documents: tuple[str, ...] = ()
    tokenizer: object = None
    batch_size: int = 1
    seed: int = 0
    rank: int = 0
    _tasks: list[NeedleTask] = field(init=False, repr=False)

    def __post_init__(self):
        require(len(self.variants) >= 1, "variants", self.variants, "one or more (haystack, value_kind) pairs")
        self._tasks = [NeedleTask(value_kind=kind, context_tokens=self.context_tokens, depth=None, haystack=hay,
                                  documents=self.documents if hay == "text" else (), tokenizer=self.tokenizer,
                                  seed=self.seed, rank=self.rank) for hay, kind in self.variants]

    def _rows(self, g: torch.Generator) -> tuple[Tensor, Tensor]:
        rows = [self._tasks[randint(g, len(self._tasks))]._rows(g) for _ in range(self.batch_size)]
        return torch.cat([x for x, _ in rows]), torch.cat([y for _, y in rows])

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        return self._rows(generator_for(self.seed, TRAIN, step, self.rank))

    def eval_batch(self, index: int) -> tuple[Tensor, Tensor]:
        return self._rows(generator_for(self.seed, EVAL, index))
