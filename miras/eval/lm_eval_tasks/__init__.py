"""Local lm-evaluation-harness tasks: YAML configs + small JSON-lines files in this folder, no hub download.

    miras_shakespeare_mc   multiple_choice        which line comes next (4 choices) in held-out Shakespeare
    miras_shakespeare_ppl  loglikelihood_rolling  word / byte perplexity and bits per byte of ~4 KB passages
    miras_passkey          generate_until         pass-key retrieval from a repeated-noise haystack

The held-out text is the validation side of the default split (`split_documents(load_documents("shakespeare"))`,
val_fraction 0.1, seed 0: othello, romeo_and_juliet, sonnets, troilus_and_cressida), which `miras train` on the
embedded corpus with the default data.val_fraction never trains on. The .jsonl files are shipped (~150 KB) and
rebuilt byte for byte by `python -m miras.eval.lm_eval_tasks` (a test checks that they are up to date).

A task YAML names its data as `custom_dataset: !function local_dataset.load` +
`dataset_kwargs: {data_files: {test: NAME.jsonl}}`: local_dataset.py (next to the YAMLs) reads the file from this
folder whatever the working directory, so lm-eval runs the tasks from anywhere given this folder as an include_path
(`miras.eval.lm_harness.evaluate` and `miras lm-eval` pass it; `lm_eval --include_path "$(python -c 'import
miras.eval.lm_eval_tasks as t; print(t.TASK_DIR)')"`). Building the data needs no lm_eval.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent
LOCAL_TASKS = ("miras_shakespeare_mc", "miras_shakespeare_ppl", "miras_passkey")
DATA_FILES = {"miras_shakespeare_mc": "shakespeare_mc.jsonl", "miras_shakespeare_ppl": "shakespeare_ppl.jsonl",
              "miras_passkey": "passkey.jsonl"}

PASSKEY_HEAD = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                "I will quiz you about the important information there.\n")
PASSKEY_NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUERY = "\nWhat is the pass key? The pass key is"


def local_task_names() -> list[str]:
    """The task names of every YAML in this folder (ours and any added next to them)."""
    names = []
    for path in sorted(TASK_DIR.glob("*.yaml")):
        for line in path.read_text().splitlines():
            if line.startswith("task:"):
                names.append(line.split(":", 1)[1].strip().strip("'\""))
    return names


def _held_out_documents():
    from ...data import load_documents, split_documents
    return split_documents(load_documents("shakespeare"))[1]


def _verse_line(line: str) -> bool:
    """A spoken / verse line: not a speaker name (upper case), stage direction ([...]) or heading."""
    return 15 <= len(line) <= 70 and not line.startswith(("[", " ")) and line != line.upper()


def shakespeare_mc(docs, n: int = 100, seed: int = 0, context_lines: int = 4) -> list[dict]:
    """n examples {"context", "choices", "label", "title"}: up to context_lines lines of a speech or poem, the
    line that follows it and 3 lines of similar length from elsewhere in the same work, in a random order."""
    rng = random.Random(seed)
    pools, candidates = {}, []
    for doc in docs:
        blocks = [[line.rstrip() for line in block.strip("\n").split("\n")] for block in doc.text.split("\n\n")]
        pools[doc.title] = sorted({line for block in blocks for line in block if _verse_line(line)})
        for block in blocks:
            for i in range(context_lines, len(block)):
                if _verse_line(block[i]) and all(block[i - context_lines:i]):
                    candidates.append((doc.title, block[i - context_lines:i], block[i]))
    out = []
    for title, context, gold in rng.sample(candidates, n):
        similar = [line for line in pools[title] if abs(len(line) - len(gold)) <= 8 and line != gold]
        choices = rng.sample(similar, 3)
        label = rng.randrange(4)
        choices.insert(label, gold)
        out.append({"title": title, "context": "\n".join(context), "choices": choices, "label": label})
    return out


def shakespeare_ppl(docs, n: int = 16, chars: int = 4096, seed: int = 0) -> list[dict]:
    """n passages {"title", "text"} of at most `chars` characters (whole lines, from a random line start)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        doc = docs[i % len(docs)]
        lines = doc.text.split("\n")
        start = rng.randrange(len(lines) // 2)
        text = ""
        for line in lines[start:]:
            if len(text) + len(line) + 1 > chars:
                break
            text += line + "\n"
        out.append({"title": doc.title, "text": text.strip("\n")})
    return out


def passkey(noise: str, repeats=(2, 5, 10, 20), depths=(0.0, 0.25, 0.5, 0.75, 1.0), per_cell: int = 2,
            seed: int = 0) -> list[dict]:
    """Pass-key retrieval (Mohtashami & Jaggi's prompt): a 5-digit key stated once at a depth of `repeats`
    copies of the noise text; {"prompt", "answer", "repeats", "depth"}."""
    rng = random.Random(seed)
    out = []
    for r in repeats:
        for depth in depths:
            for _ in range(per_cell):
                key = str(rng.randrange(10_000, 100_000))
                before = round(depth * r)
                prompt = (PASSKEY_HEAD + (noise + " ") * before + PASSKEY_NEEDLE.format(key=key)
                          + (noise + " ") * (r - before) + PASSKEY_QUERY)
                out.append({"prompt": prompt, "answer": key, "repeats": r, "depth": depth})
    return out


def task_data() -> dict[str, list[dict]]:
    """The examples of every local task, by file name (deterministic)."""
    from ...data.niah import NOISE
    docs = _held_out_documents()
    return {DATA_FILES["miras_shakespeare_mc"]: shakespeare_mc(docs),
            DATA_FILES["miras_shakespeare_ppl"]: shakespeare_ppl(docs),
            DATA_FILES["miras_passkey"]: passkey(NOISE)}


def write_task_data(out_dir: str | Path = TASK_DIR) -> list[Path]:
    """Writes the .jsonl files (one JSON object per line, UTF-8, "\\n" line ends); returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in task_data().items():
        path = out_dir / name
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for p in write_task_data(argv[0] if argv else TASK_DIR):
        print(f"written: {p} ({p.stat().st_size} bytes)")
