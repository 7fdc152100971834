"""benchmarks/bench_gpu.py and benchmarks/gpu.sh stay runnable without a GPU: the tiny CPU run writes the table
and JSON with every target, fla's Triton peers report "needs CUDA", a missing peer "not installed", and a spent
time budget skips cells instead of running them."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                            # (dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_every_target(tmp_path):
    bench = _bench()
    assert bench.main(["--device", "cpu", "--tiny", "--seqlens", "24", "40", "--out-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "bench_gpu.json").read_text())
    table = (tmp_path / "bench_gpu.md").read_text()
    assert res["table"] + "\n" == table and "| target | T | dtype |" in table
    assert res["config"]["seqlens"] == [24, 40] and res["config"]["dtypes"] == ["float32", "bfloat16"]
    cells = {(c["label"], c["T"], c["dtype"]): c for c in res["cells"]}
    ours = [c for c in res["cells"] if c["side"] == "ours"]
    assert {c["target"] for c in ours} == {"gdr", "gla", "titans", "ttt"}
    assert len(ours) == 5 * 2 * 2                               # 5 of ours x 2 T x 2 dtypes, all measured
    for c in ours:
        assert c["status"] == "ok", c
        assert c["fwd_tok_s"] == pytest.approx(1 * c["T"] / c["fwd_s"]) and c["fwd_bwd_tok_s"] > 0
        assert len(c["fwd_times"]) == len(c["fwd_bwd_times"]) == 1
    for label in ("fla chunk_gated_delta_rule (Triton)", "fla chunk_simple_gla (Triton)"):
        assert cells[(label, 24, "float32")]["status"] == "needs CUDA"
    titans = cells[("titans-pytorch NeuralMemory", 24, "float32")]
    installed = importlib.util.find_spec("titans_pytorch") is not None
    assert titans["status"] == ("ok" if installed else "not installed")
    assert len(res["rows"]) == len(ours)
    for row in res["rows"]:
        peer_ok = row["peer"] is not None and cells[(row["peer"], row["T"], row["dtype"])]["status"] == "ok"
        assert (row["ratio_fwd_bwd"] is not None) == peer_ok
    assert "not installed" in table or installed


def test_a_spent_budget_skips_cells(tmp_path):
    bench = _bench()
    res = bench.run(bench.TINY, torch.device("cpu"), ["float32"], ["gdr", "ttt"], repeats=1, cell_s=1.0,
                    budget_s=0.0)
    assert {c["status"] for c in res["cells"]} == {"skipped (time budget)"}
    assert len(res["cells"]) == 2 * 3 and "skipped (time budget)" in res["table"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what gpu.sh does without a GPU")
def test_gpu_script_stops_cleanly_without_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")]).returncode == 0
    env = {**os.environ, "OUT": str(tmp_path / "gpu"), "PY": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "torch sees no GPU" in done.stdout
    assert not (tmp_path / "gpu").exists()                      # nothing written


def test_ratio_and_output_difference_against_a_peer(monkeypatch):
    """A stand-in peer (our own op under another label) gives an output difference of 0 and a ratio."""
    bench = _bench()
    twin = bench.Target("gdr", [bench.Side("ours", bench.ours_gdr)], bench.Side("twin", bench.ours_gdr), True, "op")
    monkeypatch.setattr(bench, "TARGETS", [twin])
    res = bench.run(bench.TINY, torch.device("cpu"), ["float32"], ["gdr"], repeats=2, cell_s=10.0, budget_s=60.0)
    (row,) = [r for r in res["rows"] if r["T"] == bench.TINY.seqlens[0]]
    assert row["output_rel_diff"] == 0.0 and row["ratio_fwd"] > 0 and row["ratio_fwd_bwd"] > 0
    ours, twin_cell = (c for c in res["cells"] if c["T"] == row["T"])
    assert row["ratio_fwd"] == pytest.approx(ours["fwd_tok_s"] / twin_cell["fwd_tok_s"])
    assert len(ours["fwd_times"]) == 2 and "| gdr (op) |" in res["table"]
