"""S-NIAH scoring: RULER's string match of a model's greedy generation (the task itself: miras/data/niah.py)."""
from __future__ import annotations

import torch

from ..data.niah import NeedleTask
from ..errors import require


def score_needle(generated_text: str, answer: str) -> bool:
    """RULER's rule (string_match_all with one reference): the answer, stripped, occurs in the generation, case
    ignored. The generation is len(answer) + 2 tokens, so " 1234567." and " 12345678" both hold "1234567": a model
    trained only on the answer has never seen what follows it and need not stop there."""
    reference = answer.strip().lower()
    require(bool(reference), "answer", repr(answer), "a non-empty answer")
    return reference in generated_text.lower()


@torch.no_grad()
def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation of one prompt, feeding one token at a time with the model's states."""
    device = next(model.parameters()).device
    logits, states = model(torch.tensor([prompt_ids], device=device))
    out = []
    while True:
        out.append(int(logits[0, -1].argmax()))
        if len(out) == max_new_tokens:
            return out
        logits, states = model(torch.tensor([out[-1:]], device=device), states)


@torch.no_grad()
def greedy_generate_batch(model, prompts: list[list[int]], max_new_tokens: int, piece: int = 0) -> list[list[int]]:
    """Greedy continuations of equal-length prompts as one batch. piece > 0 reads the prompts `piece` tokens at a
    time, the states carried between calls (the same result; bounds attention's score matrices at long lengths)."""
    require(len(prompts) >= 1 and len({len(p) for p in prompts}) == 1, "prompts", f"{len(prompts)} prompts",
            "one or more prompts of one length")
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)
    states, step = None, piece if piece > 0 else ids.shape[1]
    for start in range(0, ids.shape[1], step):
        logits, states = model(ids[:, start:start + step], states)
    out = [logits[:, -1].argmax(-1)]
    while len(out) < max_new_tokens:
        logits, states = model(out[-1][:, None], states)
        out.append(logits[:, -1].argmax(-1))
    return torch.stack(out, dim=1).tolist()


def needle_accuracy(model, task: NeedleTask, tokenizer, n: int = 20, seed: int | None = None, batch_size: int = 1,
                    piece: int = 0) -> float:
    """Fraction of n held-out examples answered (greedy, len(answer) + 2 new tokens, scored by score_needle).
    batch_size > 1 generates up to that many examples at once (greedy_generate_batch, the prompts of one length
    together: a prompt leaves room for its answer, NeedleTask.build_example), piece > 0 reads each prompt in pieces
    of that many tokens."""
    require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    training = model.training
    model.eval()
    hits = 0
    examples = task.eval_examples(tokenizer, n, seed)
    if batch_size == 1 and piece == 0:
        for prompt, answer, _ in examples:
            generated = tokenizer.decode(greedy_generate(model, prompt, len(answer) + 2))
            hits += score_needle(generated, tokenizer.decode(answer))
    else:
        for start in range(0, n, batch_size):
            by_length: dict[int, list] = {}
            for example in examples[start:start + batch_size]:
                by_length.setdefault(len(example[0]), []).append(example)
            for group in by_length.values():
                new = max(len(answer) for _, answer, _ in group) + 2
                outs = greedy_generate_batch(model, [prompt for prompt, _, _ in group], new, piece)
                hits += sum(score_needle(tokenizer.decode(out[:len(answer) + 2]), tokenizer.decode(answer))
                            for out, (_, answer, _) in zip(outs, group))
    model.train(training)
    return hits / n
