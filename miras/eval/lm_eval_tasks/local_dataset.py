"""The local tasks' data for lm-eval: `custom_dataset: !function local_dataset.load` in their YAML.

lm-eval imports this file by its path, next to the YAML (not as part of miras), so it needs nothing of miras and
reads the JSON-lines files from its own folder, whatever the working directory.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def load(data_files: dict[str, str], **metadata):
    """{split: file name in this folder} -> a datasets.DatasetDict of the files' rows. metadata (the task's and
    lm-eval's model arguments, which lm-eval passes to every custom_dataset) is not used."""
    import datasets

    def rows(name: str) -> list[dict]:
        lines = (FOLDER / name).read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows(name)) for split, name in data_files.items()})


class QuietLocalTasks(logging.Filter):
    """lm-eval suggests passing --metadata for every task with a custom_dataset; the local tasks take none."""

    miras_local_tasks = True

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage().startswith("miras_") and "Custom kwargs can be passed" in record.getMessage())


_LOGGER = logging.getLogger("lm_eval.api.task")
if not any(getattr(f, "miras_local_tasks", False) for f in _LOGGER.filters):   # lm-eval may run this file again
    _LOGGER.addFilter(QuietLocalTasks())
