"""`miras eval RUN`: perplexity by position + S-NIAH grid in real text (text runs), S-NIAH grid in the noise
haystack (runs trained on task niah), or MQAR accuracy by length (MQAR runs)."""
from __future__ import annotations

import json
from pathlib import Path

from ..data import load_documents, open_token_file, split_documents
from ..errors import require
from .load import load_run, resolve_device
from ..data.mqar import MQAR
from ..data.niah import NeedleTask
from .mqar import mqar_accuracy
from .niah import needle_accuracy
from .perplexity import perplexity_by_position
from .plots import heatmap, line_plot


def check_length(model, length: int) -> None:
    """A sequence longer than the model's declared context (config.max_context, 0 = unbounded) is refused."""
    limit = model.config.max_context
    require(not limit or length <= limit, "length", length, f"<= max_context={limit} of this model",
            "evaluate shorter sequences; attention models keep every token, recurrent ones have no limit")


def evaluate_run(run_dir: str | Path, lengths: list[int], depths: int = 5, needles: int = 2, windows: int = 4,
                 tokenizer: str | None = None, device: str = "auto") -> dict:
    """Evaluates a run folder and writes eval/results.json and PNG plots next to its checkpoints. device: "auto"
    (cuda when there is a GPU), "cpu", "cuda", "cuda:1", ..."""
    require(len(lengths) >= 1 and all(isinstance(n, int) and n >= 2 for n in lengths), "lengths", lengths,
            "context lengths >= 2 tokens", "e.g. --lengths 1024,2048")
    for name, value in (("depths", depths), ("needles", needles), ("windows", windows)):
        require(isinstance(value, int) and value >= 1, name, value, "an integer >= 1", f"e.g. --{name} 2")
    where = resolve_device(device)
    model, tok, config = load_run(run_dir, tokenizer)
    model = model.to(where)
    for length in lengths:
        check_length(model, length)
    data = config["data"]
    if data["task"] == "mqar":
        results = {"mqar": {str(n): mqar_accuracy(model, MQAR(seq_len=n, num_kv_pairs=data["mqar_pairs"],
                                                             vocab_size=data["mqar_vocab"], seed=1), n=256)
                            for n in lengths}}
    elif data["task"] == "niah":
        results = {"niah": needle_grid(model, tok, lengths, depths, needles, haystack="noise")}
    else:
        val = open_token_file(Path(run_dir) / "data" / "val.bin").tokens
        reset = data.get("documents", "stream") == "reset"      # runs before data.documents streamed
        ppl = perplexity_by_position(model, val, max(lengths), windows=windows,
                                     document_start=tok.eos_id if reset else None)
        grid = needle_grid(model, tok, lengths, depths, needles, corpus=data["corpus"],
                           val_fraction=data["val_fraction"])
        results = {"perplexity": ppl, "niah": grid}
    out = Path(run_dir) / "eval"                      # written only once every result is in: a refused or failed
    out.mkdir(exist_ok=True)                          # evaluation leaves the run folder as it was
    if "mqar" in results:
        line_plot({"mqar": (lengths, [results["mqar"][str(n)] for n in lengths])}, out / "mqar_vs_length.png",
                  "MQAR accuracy vs length", "sequence length", "accuracy", logx=True)
    else:
        _needle_heatmap(results["niah"], out)
    if "perplexity" in results:
        ppl = results["perplexity"]
        line_plot({"loss": ([(b["lo"] + b["hi"]) / 2 for b in ppl["buckets"]], [b["loss"] for b in ppl["buckets"]])},
                  out / "loss_by_position.png", "Validation loss by position", "position", "loss (nats)", logx=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _needle_heatmap(grid: dict, out: Path) -> None:
    heatmap(grid["accuracy"], grid["depths"], grid["lengths"], out / "niah_heatmap.png", "S-NIAH accuracy",
            "context length", "needle depth")


def needle_grid(model, tokenizer, lengths: list[int], n_depths: int, per_cell: int, corpus: str | None = None,
                haystack: str = "text", val_fraction: float = 0.1) -> dict:
    """Accuracy for every (depth, length) cell: numbers in a real-text haystack from the validation documents of
    `corpus` (the run's own split: val_fraction, seed 0 as in training), or (haystack="noise") in the
    repeated-noise haystack of training task niah."""
    docs = ()
    if haystack == "text":
        _, val_docs = split_documents(load_documents(corpus), val_fraction, seed=0)
        docs = tuple(d.text for d in val_docs)
    depth_values = [i / (n_depths - 1) for i in range(n_depths)] if n_depths > 1 else [0.5]
    acc = [[needle_accuracy(model, NeedleTask("numbers", context_tokens=n, depth=dep, haystack=haystack,
                                              documents=docs), tokenizer, n=per_cell)
            for n in lengths] for dep in depth_values]
    return {"depths": depth_values, "lengths": lengths, "accuracy": acc}
