"""Focused re-check of one preset's decode latency vs context (what `miras bench decode` measures, without
the other presets), plus the two things that could make a fixed-size state slower at long context:
denormal floats in the state (checked by counting them and by timing with flush-to-zero) and state growth.

    python benchmarks/decode_recheck.py ttt-linear

MirasLM d_model 256, 4 heads, 2 layers, vocab 256, fp32, batch 1, one thread; prefill in pieces of 2048 up
to 1K, 8K, 32K; median of 20 single-token steps from the state at each context.
"""
import sys
import time

import torch

from miras.models import MirasConfig, MirasLM
from miras.models.state_tree import flatten_tensors


def main(preset: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset=preset, d_model=256, heads=4, n_layers=2)).eval()
    ids = torch.randint(0, 256, (1, 32768))
    state, pos = None, 0
    with torch.no_grad():
        for context in (1024, 8192, 32768):
            while pos < context:
                _, state = model(ids[:, pos:pos + 2048], state)
                pos += 2048
            floats = [t for t in flatten_tensors(state).values() if t.is_floating_point() and t.numel()]
            denormal = sum(int(((t.abs() < torch.finfo(t.dtype).tiny) & (t != 0)).sum()) for t in floats)
            size = sum(t.numel() for t in floats)
            for flush in (False, True):
                torch.set_flush_denormal(flush)
                times, s = [], state
                for _ in range(20):
                    start = time.perf_counter()
                    _, s = model(ids[:, :1], s)
                    times.append(time.perf_counter() - start)
                torch.set_flush_denormal(False)
                print(f"{preset} context {context}: decode {1000 * sorted(times)[10]:.2f} ms/token "
                      f"(flush-to-zero {flush}), state floats {size}, denormals {denormal}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ttt-linear")
