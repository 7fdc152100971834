"""Test session settings: one torch thread per process (pytest -n 2 runs one worker per core; more threads
than cores make torch's spinning workers crawl on a loaded 2-core machine)."""
import torch

torch.set_num_threads(1)
