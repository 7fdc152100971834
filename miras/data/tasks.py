"""The synthetic tasks by name: generators of pure per-step batches (scoring: miras/eval)."""
from __future__ import annotations

from ..errors import require
from .mqar import MQAR
from .niah import NeedleTask

TASKS = {"mqar": MQAR, "niah": NeedleTask}


def get_task(name: str, **kwargs):
    """TASKS[name](**kwargs); ConfigError listing the valid names for an unknown one."""
    require(name in TASKS, "task", name, f"one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)
