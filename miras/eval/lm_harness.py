"""lm-evaluation-harness adapter: score a trained miras run with lm-eval tasks (needs `pip install "miras[lmeval]"`).

    from miras.eval.lm_harness import evaluate
    results = evaluate("runs/small", ["miras_shakespeare_mc", "miras_shakespeare_ppl", "miras_passkey"], limit=50)

    miras lm-eval runs/small --tasks miras_shakespeare_mc,miras_passkey --limit 50 --out results.json

`MirasEvalLM` (lm-eval model name "miras", e.g. `simple_evaluate(model="miras", model_args="path=runs/small")`
after importing this module, which leaves lm-eval's own models registered too) loads a `miras train` run folder
(its newest checkpoint) or one of its step-* checkpoint folders, with the run's own tokenizer (byte or BPE).
Every request is scored as one forward pass over its tokens would score it (up to float rounding), fed in pieces
of `piece` tokens with the state carried:

- loglikelihood: log p(continuation | context), lm-eval's convention (trailing spaces of the context move to the
  continuation; the continuation is encode(context + continuation) after len(encode(context)) tokens; an
  empty context is the eos token). Batches of `batch_size` requests are right-padded (all mixers are causal).
- loglikelihood_rolling: the whole document after an eos token, in one stream (no windowing) for models
  without a context limit; with a limit (config.max_context, e.g. attention models, or max_length) lm-eval's
  rolling windows of that length, every token predicted once.
- generate_until: greedy decoding, one token at a time from the carried state, stopping at the eos token, at
  any `until` string (cut off) or after max_gen_toks tokens. Sampling is refused.

Contexts longer than the limit keep their last tokens (generation: the last limit - max_gen_toks).
"""
from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError, require
from .lm_eval_tasks import TASK_DIR, local_task_names
from .load import load_run, resolve_checkpoint

INSTALL_HINT = 'pip install "miras[lmeval]"'

try:
    # lm_eval.models first: lm-eval's get_model fills its registry with its own models (hf, vllm, ...) only while
    # the registry is empty, so a model registered before that would leave "miras" the only one.
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as err:  # tests/eval/test_lm_harness.py hides lm_eval to check this message
    raise ImportError(f"miras.eval.lm_harness needs lm-evaluation-harness (the lm_eval package), which could not be "
                      f"imported ({err}): {INSTALL_HINT}") from err

__all__ = ["INSTALL_HINT", "MirasEvalLM", "evaluate", "format_results", "resolve_checkpoint", "task_manager"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@register_model("miras")
class MirasEvalLM(LM):
    """A miras run as an lm-eval LM.

    path (alias pretrained): run folder or step-* checkpoint. device: "cpu", "cuda", "cuda:1", ...
    batch_size: loglikelihood requests per forward (right-padded); generation runs one request at a time.
    max_length: longest context fed (None: the model's config.max_context, or unbounded when that is 0).
    piece: tokens per forward call while streaming a long input (bounds memory; results do not depend on it).
    tokenizer: a tokenizer folder or "byte" instead of the run's own. dtype: float32 | bfloat16 | float16.
    max_gen_toks: generation length when a task gives none.
    """

    def __init__(self, path: str | None = None, pretrained: str | None = None, device: str = "cpu",
                 batch_size: int | str = 1, max_length: int | None = None, piece: int = 1024,
                 tokenizer: str | None = None, dtype: str = "float32", max_gen_toks: int = 256,
                 max_batch_size: int | None = None, **unknown):
        super().__init__()
        require(not unknown, "model_args", sorted(unknown), "path, device, batch_size, max_length, piece, "
                "tokenizer, dtype, max_gen_toks")
        require((path is None) != (pretrained is None), "path", path if path is not None else pretrained,
                "exactly one of path= / pretrained= (a run folder or a step-* checkpoint)")
        require(str(batch_size).isdigit() and int(batch_size) >= 1, "batch_size", batch_size, "an integer >= 1",
                "batch_size='auto' is not supported")
        require(dtype in _DTYPES, "dtype", dtype, f"one of {list(_DTYPES)}")
        self.run_dir, self.checkpoint = resolve_checkpoint(path if path is not None else pretrained)
        model, tok, config = load_run(self.run_dir, tokenizer, str(self.checkpoint) if self.checkpoint else None)
        if tok is None:
            raise ConfigError(f"run {self.run_dir} was trained on the synthetic task {config['data']['task']!r}: "
                              "it has no text tokenizer to read lm-eval's text with")
        require(tok.vocab_size <= model.config.vocab_size, "tokenizer", f"vocab_size={tok.vocab_size}",
                f"<= the model's vocab_size={model.config.vocab_size}", "pass the tokenizer the run was trained with")
        self._device = torch.device(device)
        self.model = model.to(self._device, _DTYPES[dtype]).eval()
        self.tok = tok
        self.batch_size = int(batch_size)
        self.piece = int(piece)
        require(self.piece >= 1, "piece", piece, ">= 1")
        self.max_gen_toks = int(max_gen_toks)
        limit = model.config.max_context
        if max_length is not None:
            max_length = int(max_length)
            require(max_length >= 2, "max_length", max_length, ">= 2")
            require(not limit or max_length <= limit, "max_length", max_length,
                    f"<= max_context={limit} of this model")
        self.window: int | None = max_length or limit or None

    # ---------------------------------------------------------------- properties lm-eval reads
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def max_length(self) -> int | None:
        """The longest context fed to the model (None: unbounded, the state is carried)."""
        return self.window

    @property
    def tokenizer_name(self) -> str:
        return f"miras-{self.tok.name}-{self.tok.vocab_size}"

    def get_model_info(self) -> dict:
        c = self.model.config
        return {"miras_run": str(self.run_dir), "miras_checkpoint": str(self.checkpoint or "newest"),
                "preset": c.preset, "pattern": c.pattern, "parameters": self.model.num_parameters(),
                "tokenizer": self.tokenizer_name, "max_length": self.window}

    # ---------------------------------------------------------------- tokenization
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's causal convention: (context ids, continuation ids)."""
        if not context:
            return [self.eot_token_id], self.tok.encode(continuation)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, ctx = self.tok.encode(context + continuation), self.tok.encode(context)
        return ctx, whole[len(ctx):]

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """rows: (tokens, first >= 1) -> (sum of log p(tokens[i] | tokens[:i]) for i >= first, whether every one
        of those tokens is the argmax). Rows are batched longest first, right-padded, streamed in pieces."""
        for tokens, first in rows:
            require(1 <= first <= len(tokens), "score row", f"first={first} of {len(tokens)} tokens",
                    "1 <= first <= len(tokens)")
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list = [None] * len(rows)
        for b in range(0, len(order), self.batch_size):
            chunk = order[b:b + self.batch_size]
            for i, result in zip(chunk, self._score_batch([rows[i] for i in chunk])):
                out[i] = result
        return out

    def _score_batch(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        n = max(len(tokens) for tokens, _ in rows) - 1
        if n <= 0:
            return [(0.0, True)] * len(rows)
        inputs = torch.full((len(rows), n), self.eot_token_id, dtype=torch.long)
        targets = torch.full((len(rows), n), -1, dtype=torch.long)
        for r, (tokens, first) in enumerate(rows):
            ids = torch.tensor(tokens, dtype=torch.long)
            inputs[r, :len(ids) - 1] = ids[:-1]
            targets[r, first - 1:len(ids) - 1] = ids[first:]
        inputs, targets = inputs.to(self._device), targets.to(self._device)
        total = torch.zeros(len(rows), dtype=torch.float64, device=self._device)
        greedy = torch.ones(len(rows), dtype=torch.bool, device=self._device)
        states = None
        vocab = self.tok.vocab_size
        for a in range(0, n, self.piece):
            logits, states = self.model(inputs[:, a:a + self.piece], states)
            logp = F.log_softmax(logits.float(), dim=-1)
            tgt = targets[:, a:a + self.piece]
            mask = tgt >= 0
            picked = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            total += torch.where(mask, picked, torch.zeros_like(picked)).double().sum(1)
            greedy &= (logp[..., :vocab].argmax(-1).eq(tgt) | ~mask).all(1)
        return list(zip(total.tolist(), greedy.tolist()))

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        rows = []
        for context, continuation in (req.args for req in requests):
            ctx, cont = self.encode_pair(context, continuation)
            tokens, first = ctx + cont, len(ctx)
            if self.window and len(tokens) - 1 > self.window:
                require(len(cont) <= self.window, "continuation", f"{len(cont)} tokens",
                        f"<= the context limit {self.window} of this model")
                cut = len(tokens) - 1 - self.window
                tokens, first = tokens[cut:], first - cut
            rows.append((tokens, first))
        results = self.score(rows)
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def rolling_rows(self, text: str) -> list[tuple[list[int], int]]:
        """The score rows of one document: [eos] + all its tokens (unbounded), or lm-eval's disjoint rolling
        windows of self.window tokens."""
        tokens = self.tok.encode(text)
        if not tokens:
            return []
        if not self.window:
            return [([self.eot_token_id] + tokens, 1)]
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        windows = get_rolling_token_windows(tokens, prefix_token=self.eot_token_id, max_seq_len=self.window,
                                            context_len=1)
        return [(ctx + pred, len(ctx)) for ctx, pred in map(make_disjoint_window, windows)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owner = [], []
        for k, (text,) in enumerate(req.args for req in requests):
            doc_rows = self.rolling_rows(text)
            rows += doc_rows
            owner += [k] * len(doc_rows)
        totals = [0.0] * len(requests)
        for k, (logp, _) in zip(owner, self.score(rows)):
            totals[k] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def greedy(self, prompt: list[int], max_new_tokens: int, until: list[str] = ()) -> str:
        """Greedy continuation text of prompt ids: stops at eos, at the first `until` string (cut off there) or
        after max_new_tokens tokens."""
        stops = [s for s in until if s]
        vocab = self.tok.vocab_size
        ids = torch.tensor([prompt or [self.eot_token_id]], dtype=torch.long, device=self._device)
        states = None
        for a in range(0, ids.shape[1], self.piece):
            logits, states = self.model(ids[:, a:a + self.piece], states)
        out, text = [], ""
        while len(out) < max_new_tokens:
            token = int(logits[0, -1, :vocab].argmax())
            if token == self.eot_token_id:
                break
            out.append(token)
            text = self.tok.decode(out)
            if any(s in text for s in stops) or len(out) == max_new_tokens:
                break
            logits, states = self.model(torch.tensor([[token]], device=self._device), states)
        for s in stops:
            text = text.split(s)[0]
        return text

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            sampling = kwargs.pop("do_sample", False) or float(kwargs.get("temperature", 0.0) or 0.0) > 0
            require(not sampling, "generation_kwargs", gen_kwargs, "greedy decoding (do_sample false, temperature 0)",
                    "MirasEvalLM only decodes greedily")
            prompt = self.tok.encode(context) if context else [self.eot_token_id]
            if self.window:
                keep = self.window - max_new
                require(keep >= 1, "max_gen_toks", max_new, f"< the context limit {self.window} of this model")
                prompt = prompt[-keep:]
            text = self.greedy(prompt, max_new, until)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results


def evaluate(checkpoint: str | Path, tasks: list[str] | str, limit: int | float | None = None, *,
             batch_size: int = 1, device: str = "cpu", max_length: int | None = None, piece: int = 1024,
             tokenizer: str | None = None, num_fewshot: int | None = None, bootstrap_iters: int = 100000,
             log_samples: bool = False, out: str | Path | None = None, **simple_evaluate_kwargs) -> dict:
    """Runs lm_eval.simple_evaluate on a run folder / checkpoint with the local tasks (miras/eval/lm_eval_tasks)
    available next to lm-eval's own; returns lm-eval's results dict (and writes it as JSON to `out`).

    tasks: names or a comma-separated string; lm-eval's built-in tasks are indexed only when one is asked for, and
    an unknown name is a ConfigError (before the model loads). limit: examples per task (a float < 1: a fraction).
    Other keywords go to simple_evaluate.
    """
    from lm_eval.evaluator import simple_evaluate

    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [t for t in names if t]
    require(bool(names), "tasks", tasks, "at least one task name", f"local tasks: {', '.join(local_task_names())}")
    manager = task_manager(names)
    lm = MirasEvalLM(path=str(checkpoint), device=device, batch_size=batch_size, max_length=max_length,
                     piece=piece, tokenizer=tokenizer)
    results = simple_evaluate(model=lm, tasks=names, limit=limit, num_fewshot=num_fewshot, task_manager=manager,
                              bootstrap_iters=bootstrap_iters, log_samples=log_samples, **simple_evaluate_kwargs)
    if out:
        from lm_eval.utils import handle_non_serializable
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    return results


def task_manager(names: list[str]):
    """An lm-eval TaskManager that knows the local tasks (and lm-eval's own when a name is not local); ConfigError
    naming every unknown task."""
    local = local_task_names()
    manager = _task_manager(include_defaults=not set(names) <= set(local))
    unknown = [n for n in names if n not in manager.all_tasks and not Path(n).is_file()]
    close = sorted({m for n in unknown for m in difflib.get_close_matches(n, manager.all_tasks, 3)})
    require(not unknown, "tasks", ",".join(unknown),
            f"the local tasks ({', '.join(local)}) or lm-eval's tasks, groups and tags",
            (f"did you mean {', '.join(close)}? " if close else "") + "`lm-eval ls tasks` lists lm-eval's")
    return manager


@functools.lru_cache(maxsize=2)
def _task_manager(include_defaults: bool):
    """The local tasks' TaskManager, with lm-eval's own tasks or not (indexing those takes seconds: done once)."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(TASK_DIR), include_defaults=include_defaults)


def format_results(results: dict) -> str:
    """lm-eval's markdown results table (and its groups table when there are groups)."""
    from lm_eval.utils import make_table
    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table
