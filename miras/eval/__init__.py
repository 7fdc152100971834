"""Evaluation: scoring MQAR (zoology) and S-NIAH (RULER) answers, perplexity, compare, search, plots (the tasks'
generators are in miras.data)."""
from .mqar import mqar_accuracy, score_mqar
from .niah import greedy_generate, needle_accuracy, score_needle

__all__ = ["greedy_generate", "mqar_accuracy", "needle_accuracy", "score_mqar", "score_needle"]
