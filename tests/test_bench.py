"""`miras bench ops` in a tiny configuration: the JSON it writes has every documented field."""
import json

import pytest

from miras.bench.ops import SKIPPED, Caps, distinct_presets, main, run
from miras.cli import main as cli_main

FIELDS = ("fwd_s", "fwd_bwd_s", "fwd_tok_s", "fwd_bwd_tok_s", "speedup_fwd", "speedup_fwd_bwd", "gflop_fwd",
          "gflops_fwd", "roofline_frac_fwd")


def test_distinct_presets_drop_block_variants():
    names = distinct_presets()
    assert "transformer" in names and "titans-lmm" in names and "moneta" in names
    assert not {"titans-mac", "titans-mag", "titans-mal", "moneta-h", "yaad-h", "memora-h"} & set(names)


def test_bench_ops_json(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    assert main(["--presets", "gated-deltanet", "ttt-linear", "--seqlens", "64", "--ref-seqlen", "64",
                 "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["roofline_gflops"] > 0 and result["config"]["threads"] == 2
    assert {"cpu", "cores", "torch", "date"} <= set(result["machine"]) and "| preset |" in result["table"]
    rows = {(r["preset"], r["path"]): r for r in result["rows"]}
    assert set(rows) == {("gated-deltanet", "reference"), ("gated-deltanet", "delta"),
                         ("ttt-linear", "reference"), ("ttt-linear", "minibatch")}
    for (preset, path), r in rows.items():
        assert r["status"] == "ok" and r["T"] == 64 and r["peak_mib"] >= 0 and r["other_cores"] >= 0
        assert r["fwd_tok_s"] > 0 and r["fwd_bwd_tok_s"] > 0 and r["speedup_fwd"] > 0 and r["speedup_fwd_bwd"] > 0
        if path != "reference":
            assert all(r[f] > 0 for f in FIELDS)
            ref = rows[(preset, "reference")]
            assert r["speedup_fwd"] == pytest.approx(r["fwd_tok_s"] / ref["fwd_tok_s"])


def test_cap_skips_larger_seqlens():
    rows = run(["gated-deltanet"], seqlens=[32, 64], repeats=1, ref_seqlen=32, caps=Caps(seconds=1e-9))["rows"]
    assert [(r["path"], r["T"], r["status"]) for r in rows] == [
        ("reference", 32, "ok"), ("delta", 32, "ok"), ("delta", 64, SKIPPED)]


def test_cli_forwards_flags(tmp_path, capsys):
    out = tmp_path / "cli.json"
    cli_main(["bench", "ops", "--presets", "mamba2", "--seqlens", "32", "--ref-seqlen", "32", "--repeats", "1",
              "--out", str(out)])
    assert "| mamba2 | ssd | 32 |" in capsys.readouterr().out and out.exists()
