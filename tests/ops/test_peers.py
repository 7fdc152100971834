"""Our exact ops against public pure-torch references of the same math, from vendored outputs.

tests/data/peers/<peer>.safetensors holds small deterministic cases (inputs, the peer's output and final
state) written by benchmarks/peers/make_cases.py in a throwaway peer environment: mamba's
`ssd_minimal_discrete` and flash-linear-attention's naive (gated) delta rule, simple GLA, GLA and linear
attention. No peer is installed here. Every case is checked three ways:

  - the op itself (`ssd`, `chunk_gla`, `chunk_gated_delta_rule`) at chunk 64 and at chunk 7 (the
    function must not depend on the chunk; T < 64 and T % 64 != 0 occur among the cases),
  - `memory_op(spec, ..., mode="auto")` (the dispatch a layer uses, with its gate mapping),
  - `memory_op(spec, ..., mode="reference")` (our token-by-token recurrence),

against the peer's output and final state: float64 cases to 1e-10 relative RMS, float32 cases (the fla
references cast to float32 themselves) to 1e-5. The convention map (scale, log decay, dt / A
discretisation, S = W^T, [B, H, T, D] layouts) is documented in make_cases.py and in each file's metadata.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open

from miras.ops import MemoryState
from miras.ops.delta import chunk_gated_delta_rule
from miras.ops.dispatch import memory_op
from miras.ops.ssd import chunk_gla, ssd
from miras.space import MirasSpec, get_preset
from miras.space.bias import DotProduct
from miras.space.memory import matrix
from miras.space.algorithm import GD
from miras.space.retention import Decay

from .helpers import rel_err

DATA = Path(__file__).resolve().parents[1] / "data" / "peers"
# peer file -> number of cases make_cases.py writes (a missing file or case fails, never skips)
EXPECTED = {"mamba_ssd": 4, "fla_delta_rule": 4, "fla_gated_delta_rule": 5, "fla_simple_gla": 3, "fla_gla": 2,
            "fla_linear_attn": 2}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
GLA_SPEC = MirasSpec(matrix(), DotProduct(), Decay(per_channel=True), GD(), chunk_size=64)


@functools.lru_cache(maxsize=None)
def load(peer: str) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """(metadata with "cases" parsed, case -> name -> tensor) of one vendored file."""
    with safe_open(str(DATA / f"{peer}.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        cases: dict[str, dict[str, torch.Tensor]] = {}
        for key in f.keys():
            case, name = key.split("/", 1)
            cases.setdefault(case, {})[name] = f.get_tensor(key)
    meta["cases"] = json.loads(meta["cases"])
    return meta, cases


@dataclass
class Problem:
    """One case in miras terms: the memory_op inputs, the expected y [B, T, H, V] and final W [B, H, V, K],
    and the direct op as chunk_size -> (y, W) in the same layouts."""

    spec: MirasSpec
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    gates: dict
    W0: torch.Tensor
    y: torch.Tensor
    W: torch.Tensor
    direct: Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _zeros_state(k, v):
    B, _, H, K = k.shape
    return k.new_zeros(B, H, K, v.shape[-1])


def problem(peer: str, case: str) -> Problem:
    meta, cases = load(peer)
    info, t = meta["cases"][case], cases[case]
    if peer == "mamba_ssd":
        x, dt, A, Bm, Cm, h0 = t["x"], t["dt"], t["A"], t["B"], t["C"], t.get("initial_states")
        rep = x.shape[2] // Bm.shape[2]

        def direct(chunk):
            return ssd(x, dt, A, Bm, Cm, chunk_size=chunk, initial_states=h0, return_final_states=True)

        h0 = x.new_zeros(*x.shape[:1], x.shape[2], x.shape[3], Bm.shape[3]) if h0 is None else h0
        return Problem(get_preset("mamba2").spec, Cm.repeat_interleave(rep, 2), Bm.repeat_interleave(rep, 2), x,
                       {"lr": dt, "log_alpha": dt * A}, h0, t["out"], t["final_state"], direct)

    bhtd = info["layout"] == "BHTD"
    q, k, v = (t[n].transpose(1, 2) if bhtd else t[n] for n in "qkv")
    o = t["out"].transpose(1, 2) if bhtd else t["out"]
    S0, scale = t.get("initial_state"), info["scale"]
    g = t.get("g")
    beta = t.get("beta")
    if beta is not None and bhtd:
        beta = beta.transpose(1, 2)
    if peer in ("fla_delta_rule", "fla_gated_delta_rule"):
        spec = get_preset("gated-deltanet" if g is not None else "deltanet").spec

        def direct(chunk):
            y, S = chunk_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0, output_final_state=True,
                                          chunk_size=chunk)
            return y, S.mT

        gates = {"lr": beta, **({"log_alpha": g} if g is not None else {})}
    else:
        spec = {"fla_simple_gla": get_preset("mamba2").spec, "fla_gla": GLA_SPEC,
                "fla_linear_attn": get_preset("linear-attention").spec}[peer]

        def direct(chunk):
            y, S = chunk_gla(q, k, v, g, scale=scale, initial_state=S0, output_final_state=True, chunk_size=chunk)
            return y, S.mT

        gates = {"lr": torch.ones_like(q[..., 0]), **({"log_alpha": g} if g is not None else {})}
    S0 = _zeros_state(k, v) if S0 is None else S0
    return Problem(spec, q * scale, k, v, gates, S0.mT, o, t["final_state"].mT, direct)


CASES = [pytest.param(peer, case, id=f"{peer}/{case}")
         for peer in EXPECTED if (DATA / f"{peer}.safetensors").exists() for case in sorted(load(peer)[1])]


def _check(got_y, got_W, p: Problem, what: str):
    tol = TOL[p.y.dtype]
    assert got_y.dtype == p.y.dtype, (what, got_y.dtype, p.y.dtype)
    errs = {"y": rel_err(got_y, p.y), "final state": rel_err(got_W, p.W)}
    assert max(errs.values()) < tol, f"{what}: relative RMS errors {errs} (tolerance {tol:g})"


def test_vendored_files():
    """Every peer file is present with all its cases, provenance metadata and non-trivial outputs; small."""
    total = 0
    for peer, n in EXPECTED.items():
        path = DATA / f"{peer}.safetensors"
        assert path.exists(), f"{path} missing: run benchmarks/peers/make_cases.py (README there)"
        total += path.stat().st_size
        meta, cases = load(peer)
        assert len(cases) == n and set(cases) == set(meta["cases"]), (peer, sorted(cases))
        for key in ("peer", "package", "version", "source", "functions", "mapping", "torch"):
            assert meta.get(key), (peer, key)
        for case, t in cases.items():
            assert t["out"].abs().max() > 0.1 and t["final_state"].abs().max() > 0.1, (peer, case)
            assert t["out"].dtype in TOL, (peer, case, t["out"].dtype)
    assert total < 2 ** 20, f"vendored peer data is {total} bytes; keep it under 1 MiB"


@pytest.mark.parametrize("chunk", [64, 7])
@pytest.mark.parametrize("peer, case", CASES)
def test_op_matches_peer(peer, case, chunk):
    p = problem(peer, case)
    y, W = p.direct(chunk)
    _check(y, W, p, f"op at chunk {chunk}")


@pytest.mark.parametrize("mode", ["auto", "reference"])
@pytest.mark.parametrize("peer, case", CASES)
def test_memory_op_matches_peer(peer, case, mode):
    p = problem(peer, case)
    y, final = memory_op(p.spec, p.q, p.k, p.v, p.gates, MemoryState({"W1": p.W0}), mode=mode)
    _check(y, final.A["W1"], p, f"memory_op(mode={mode!r})")
