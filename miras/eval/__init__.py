"""Evaluation tasks: MQAR (zoology) and S-NIAH (RULER), as scored eval sets and as training data."""
from .mqar import MQAR, MQAR_SETTINGS, mqar_accuracy, score_mqar
from .niah import NIAH_LENGTHS, NeedleTask, depths, greedy_generate, needle_accuracy, score_needle
from .tasks import TASKS, get_task, task_batches

__all__ = ["MQAR", "MQAR_SETTINGS", "NIAH_LENGTHS", "NeedleTask", "TASKS", "depths", "get_task",
           "greedy_generate", "mqar_accuracy", "needle_accuracy", "score_mqar", "score_needle", "task_batches"]
