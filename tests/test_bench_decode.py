"""`miras bench decode` in a tiny configuration: the JSON has every documented field, recurrent state is constant
across contexts, the KV cache grows, the time cap skips larger contexts and the CLI forwards its flags."""
import json

from miras.bench.decode import SKIPPED, main, run
from miras.cli import main as cli_main

FIELDS = ("prefill_s", "prefill_tok_s", "decode_ms", "decode_ms_mean", "decode_ms_min", "state_bytes", "state_mib")


def test_bench_decode_json(tmp_path):
    out = tmp_path / "sub" / "decode.json"
    assert main(["--quick", "--presets", "gated-deltanet", "transformer", "--contexts", "32,64", "--steps", "2",
                 "--warmup", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cfg = result["config"]
    assert cfg["contexts"] == [32, 64] and cfg["steps"] == 2 and cfg["threads"] == 2 and cfg["d_model"] == 256
    assert {"cpu", "cores", "torch", "date", "loadavg_start"} <= set(result["machine"])
    assert "| preset |" in result["table"] and "| gated-deltanet | fixed |" in result["table"]
    presets = {p["preset"]: p for p in result["presets"]}
    assert set(presets) == {"gated-deltanet", "transformer"}
    for p in presets.values():
        assert [r["context"] for r in p["contexts"]] == [32, 64] and p["params"] > 0
        for r in p["contexts"]:
            assert r["status"] == "ok" and all(r[f] > 0 for f in FIELDS) and r["peak_rss_mib"] is not None
        assert p["decode_ratio"] > 0 and p["decode_ratio_contexts"] == [32, 64]
    rec, att = presets["gated-deltanet"], presets["transformer"]
    assert rec["recurrent"] and not att["recurrent"] and att["meets_target"] is None
    assert len({r["state_bytes"] for r in rec["contexts"]}) == 1                 # constant recurrent state
    small, large = (r["state_bytes"] for r in att["contexts"])
    assert large > small                                                          # the KV cache grows
    # 2 layers x (k, v) x [1, 4 heads, L, 64] fp32 + 2 positions: exactly linear in L
    assert large - small == 2 * 2 * 4 * (64 - 32) * 64 * 4


def test_cap_skips_larger_contexts():
    p = run(["mamba2"], contexts=[64, 32, 128], steps=1, warmup=0, max_seconds=1e-9)["presets"][0]
    assert [(r["context"], r["status"]) for r in p["contexts"]] == [(32, "ok"), (64, SKIPPED), (128, SKIPPED)]
    assert p["decode_ratio"] is None and p["meets_target"] is None


def test_cli_forwards_flags(tmp_path, capsys):
    out = tmp_path / "cli.json"
    cli_main(["bench", "decode", "--presets", "mamba2", "--contexts", "16", "--steps", "1", "--out", str(out)])
    assert "| mamba2 | fixed |" in capsys.readouterr().out and out.exists()


def test_dispatch_calls_split_by_package():
    """The per-token call count is split by the miras package that issued each call, and is the same every time."""
    import torch

    from miras.bench.decode import build_model, dispatch_calls
    model = build_model("gated-deltanet")
    token = torch.zeros(1, 1, dtype=torch.long)
    with torch.no_grad():
        _, states = model(torch.zeros(1, 8, dtype=torch.long))
        calls = dispatch_calls(model, states, token, steps=2)
        again = dispatch_calls(model, states, token, steps=2)
    assert calls == again
    assert calls["total"] == calls["op"] + calls["layer"] + calls["block"] + calls["other"]
    # the memory step, the layer around it, the blocks; "other" is the benchmark's own slice and argmax of the logits
    assert calls["op"] > 20 and calls["layer"] > 50 and calls["block"] > 20 and calls["other"] == 2
