"""The README's main job until training exists: build every preset, run its recurrent reference."""
from __future__ import annotations

import time

import torch

from .ops import recurrent_reference
from .ops.inputs import random_inputs
from .space import get_preset, list_presets
from .errors import require


DEMO_MAX_FLOATS = 2 ** 24   # 64 MiB per tensor: sizes past it are refused before anything is allocated


def run_demo(seqlen: int = 64, heads: int = 2, d_head: int = 16) -> list[dict]:
    for name, value in (("seqlen", seqlen), ("heads", heads), ("d_head", d_head)):
        require(isinstance(value, int) and value >= 1, name, value, "an integer >= 1",
                f"e.g. --{name.replace('_', '-')} {dict(seqlen=64, heads=2, d_head=16)[name]}")
    floats = heads * (seqlen * d_head + d_head * d_head)   # per input (q, k, v: [T, H, d]) and state ([H, d, d])
    require(floats <= DEMO_MAX_FLOATS, "heads x (seqlen x d_head + d_head**2)", f"{heads} x ({seqlen} x {d_head} + "
            f"{d_head}**2) = {floats:,}", f"at most {DEMO_MAX_FLOATS:,} floats per input and state (the demo runs "
            "every preset's token-by-token reference on the CPU)", "e.g. --seqlen 64 --heads 2 --d-head 16")
    rows = []
    for name in list_presets():
        preset = get_preset(name)
        q, k, v, gates, state = random_inputs(preset.spec, batch=1, seqlen=seqlen, heads=heads, d_k=d_head,
                                              dtype=torch.float32, seed=0)
        start = time.perf_counter()
        y, final = recurrent_reference(preset.spec, q, k, v, gates, state)
        elapsed = time.perf_counter() - start
        state_size = sum(a[0, 0].numel() for a in final.A.values())
        rows.append({"preset": name, "block": preset.block, **preset.spec.axes(),
                     "chunk": preset.spec.chunk_size, "state/head": state_size,
                     "|y|": f"{y.norm().item():.3f}", "ms": f"{1e3 * elapsed:.1f}"})
    return rows


def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    line = lambda r: "  ".join(str(r[c]).ljust(widths[c]) for c in cols)  # noqa: E731
    return "\n".join([line({c: c for c in cols}), "  ".join("-" * widths[c] for c in cols), *map(line, rows)])
