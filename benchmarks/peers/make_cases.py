"""Vendor small reference cases from public pure-torch implementations of our exact ops.

Run in the throwaway peer environment (never a dependency of miras; see benchmarks/peers/README.md):

    PEERS_DIR=/tmp/peers PYTHONPATH=. /tmp/peers/venv/bin/python benchmarks/peers/make_cases.py

It calls each peer on small deterministic inputs and writes inputs, outputs and final states to
tests/data/peers/<peer>.safetensors; tests/ops/test_peers.py (plain CI, no peer installed) checks that
our ops and our recurrent reference reproduce them. Nothing of the peers' code is copied: it is imported
at run time from $PEERS_DIR (mamba's ssd_minimal.py and ttt-lm-pytorch's ttt.py extracted there by
setup.sh, fla from the peer venv).

File layout: tensor "<case>/<name>" (inputs as given to OUR convention where it differs, see below;
"<case>/out" the peer's output, "<case>/final_state" the peer's final state); metadata (all str):
"peer", "package", "version" (pip version or git commit), "source" (file + sha256 of the peer file),
"functions", "mapping" (the convention map below), "torch", "cases" (JSON: case -> function, kwargs,
dtype, layout).

Convention map (peer -> miras), checked by the tests:

mamba_ssd (mamba ssd_minimal.py `ssd_minimal_discrete(X, A, B, C, block_len, initial_states)`), float64:
    the peer takes the DISCRETISED inputs: X = x * dt[..., None], A = A_h * dt (per token, [b, l, h]),
    B, C [b, l, h, n] per head (no groups), initial_states [b, 1, h, p, n], T % block_len == 0, no D.
    Ours: `ssd(x, dt, A_h, B, C, chunk_size, initial_states=[b, h, p, n], return_final_states=True)`
    with B, C [b, l, g, n] (the group case stores g = 1 and the peer gets B, C repeated over heads).
    Recurrence: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T ([p, n]), y_t = h_t C_t: miras spec mamba2
    with q = C, k = B, v = x, lr = dt, log_alpha = dt * A, W = h. block_len is the peer's chunk; ours
    runs with its own chunk 64 (the function does not depend on it), so T < 64 and T % 64 != 0 are
    real checks of our padding.

fla_delta_rule (fla.ops.delta_rule.naive), layout [B, H, T, D] (stored as the peer takes it):
    delta_rule_chunkwise(q, k, v, beta, chunk_size): float64 (the function keeps the input dtype),
    T % chunk_size == 0, no initial state, scale fixed to K ** -0.5.
    delta_rule_recurrence(q, k, v, beta, initial_state): float32 only (it calls .float()).
    fla state S [K, V] = W^T; S <- S + beta k (v - S^T k)^T, o = scale S^T q (update, then read).
    Ours: chunk_gated_delta_rule(q, k, v, g=None, beta, scale, initial_state) in [B, T, H, D]; spec
    deltanet with q * scale, lr = beta.

fla_gated_delta_rule (fla.ops.gated_delta_rule.naive), layout [B, T, H, D], float32 only (both cast):
    naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size, scale, initial_state) and
    naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale, initial_state) (note the swapped g / beta).
    g is the LOG decay ([B, T, H], <= 0): S <- exp(g_t) S first, then the delta step. Same signature as
    ours; spec gated-deltanet with q * scale, lr = beta, log_alpha = g.

fla_simple_gla (fla.ops.simple_gla.naive), [B, T, H, D], float32 only:
    naive_chunk_simple_gla(q, k, v, g, initial_state, chunk_size, scale) (pads T) and
    naive_recurrent_simple_gla(q, k, v, g, scale, initial_state). g log decay per head;
    S <- exp(g_t) S + k_t v_t^T, o = scale S^T q. Ours: chunk_gla(q, k, v, g, scale, initial_state);
    spec mamba2 with q * scale, lr = 1, log_alpha = g.

fla_gla (fla.ops.gla.naive), [B, T, H, D], float32 only:
    naive_recurrent_gla(q, k, v, gk, initial_state): per-KEY-channel log decay gk [B, T, H, K]
    (S <- exp(gk_t)[:, None] * S + k v^T), scale fixed to K ** -0.5. Ours: chunk_gla with g [B, T, H, K];
    spec matrix / dot-product / Decay(per_channel=True) / GD.

fla_linear_attn (fla.ops.linear_attn.naive), [B, T, H, D], float32 only:
    naive_recurrent_linear_attn(q, k, v, scale, initial_state, output_final_state=True, normalize=False).
    Ours: chunk_gla(q, k, v, g=None, scale, initial_state); spec linear-attention with q * scale, lr = 1.

Not vendored: fla's chunk_ttt_linear_ref is not the same function as our TTT-Linear: it carries an
inner bias hb (updated every mini-batch), returns o + LN(o) with o = q W + hb instead of q + LN(W q),
applies the mini-batch's LAST eta to the whole state update and its gradient is that of
0.5 ||.||^2. Likewise titans-pytorch takes every chunk's gradient at the initial weights (ours follows
the paper: at the chunk's start state), and ttt-lm-pytorch's TTTLinear is a full layer with an inner
bias and learned token weights 1 / (i + 1). Those are compared for speed only (bench_side_by_side.py).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

PEERS_DIR = Path(os.environ.get("PEERS_DIR", os.path.expanduser("~/.cache/miras-peers")))
EXT_DIR = PEERS_DIR / "ext"
REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "data" / "peers"


# ----------------------------------------------------------------------------- loading the peers (run time only)
def _load_by_path(modname: str, path: Path):
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


def load_ssd_minimal():
    """mamba's ssd_minimal.py from $PEERS_DIR/ext. It imports the Triton kernel
    `mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined` at top level (for its own GPU test only):
    mamba_ssm cannot be built without CUDA, so a placeholder module is registered first."""
    if "peer_ssd_minimal" in sys.modules:
        return sys.modules["peer_ssd_minimal"]
    for name in ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "mamba_ssm.ops.triton.ssd_combined"]:
        sys.modules.setdefault(name, types.ModuleType(name))

    def unavailable(*args, **kwargs):
        raise RuntimeError("mamba_chunk_scan_combined (Triton / CUDA) is not available on CPU")

    sys.modules["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = unavailable
    return _load_by_path("peer_ssd_minimal", EXT_DIR / "ssd_minimal.py")


def load_ttt():
    """ttt-lm-pytorch's ttt.py from $PEERS_DIR/ext."""
    if "peer_ttt" in sys.modules:
        return sys.modules["peer_ttt"]
    return _load_by_path("peer_ttt", EXT_DIR / "ttt.py")


def load_fla_naive(op: str):
    """fla.ops.<op>.naive (importing fla.ops needs the `triton` package; its kernels never run here)."""
    return importlib.import_module(f"fla.ops.{op}.naive")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _commit(name: str) -> str:
    path = EXT_DIR / f"{name}.commit"
    return path.read_text().strip() if path.exists() else "unknown"


def fla_provenance(op: str) -> dict:
    mod = load_fla_naive(op)
    root = Path(importlib.util.find_spec("fla").origin).parent
    rel = Path(mod.__file__).relative_to(root.parent)
    return {"package": "flash-linear-attention / fla-core",
            "version": f"flash-linear-attention=={md.version('flash-linear-attention')} "
                       f"fla-core=={md.version('fla-core')}",
            "source": f"{rel} sha256={_sha256(mod.__file__)}"}


# ----------------------------------------------------------------------------- inputs
class Gen:
    """Deterministic inputs: one generator per case (seeded from the case name)."""

    def __init__(self, name: str, dtype: torch.dtype):
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        self.g, self.dtype = torch.Generator().manual_seed(seed), dtype

    def randn(self, *shape):
        return torch.randn(*shape, generator=self.g, dtype=self.dtype)

    def rand(self, *shape):
        return torch.rand(*shape, generator=self.g, dtype=self.dtype)

    def unit(self, *shape):
        return F.normalize(self.randn(*shape), dim=-1)

    def log_decay(self, *shape, shift=2.0):
        return F.logsigmoid(self.randn(*shape) + shift)   # in (-inf, 0), mostly retention 0.6 .. 0.99

    def beta(self, *shape):
        return torch.sigmoid(self.randn(*shape))


class Writer:
    """Collects the cases of one peer file and writes it with its metadata."""

    def __init__(self, peer: str, provenance: dict, functions: str, mapping: str):
        self.peer, self.meta = peer, {"peer": peer, **provenance, "functions": functions, "mapping": mapping}
        self.tensors, self.cases = {}, {}

    def add(self, case: str, info: dict, **tensors):
        assert case not in self.cases, case
        self.cases[case] = info
        for name, t in tensors.items():
            if t is not None:
                self.tensors[f"{case}/{name}"] = t.detach().contiguous().clone()

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {**self.meta, "torch": torch.__version__, "cases": json.dumps(self.cases, sort_keys=True)}
        path = out_dir / f"{self.peer}.safetensors"
        save_file(self.tensors, str(path), metadata={k: str(v) for k, v in meta.items()})
        return path


# ----------------------------------------------------------------------------- the peers
def mamba_ssd() -> Writer:
    mod = load_ssd_minimal()
    w = Writer("mamba_ssd", {"package": "state-spaces/mamba (mamba_ssm/modules/ssd_minimal.py)",
                             "version": _commit("ssd_minimal.py"),
                             "source": f"mamba_ssm/modules/ssd_minimal.py sha256={_sha256(EXT_DIR / 'ssd_minimal.py')}"},
               "ssd_minimal_discrete",
               "X = x * dt[..., None]; A = A_h * dt; B, C repeated over heads when g < h; initial_states[:, None]; "
               "ours: ssd(x, dt, A_h, B, C, initial_states, return_final_states=True); spec mamba2: q=C, k=B, v=x, "
               "lr=dt, log_alpha=dt*A_h, W=h [p, n]")
    dtype = torch.float64
    # (case, b, T, h, p, n, groups, block_len, initial state)
    for case, b, T, h, p, n, groups, block, init in [
            ("t15_block5", 2, 15, 2, 8, 4, 2, 5, False),
            ("t7_block7_init", 1, 7, 2, 6, 5, 2, 7, True),
            ("t96_block32_g1_init", 1, 96, 3, 8, 16, 1, 32, True),
            ("t130_block26_init", 1, 130, 2, 8, 8, 2, 26, True)]:
        r = Gen("mamba_ssd/" + case, dtype)
        x = r.randn(b, T, h, p)
        dt = F.softplus(r.randn(b, T, h) - 1.0)
        A = -torch.exp(r.rand(h))
        B, C = r.randn(b, T, groups, n), r.randn(b, T, groups, n)
        h0 = r.randn(b, h, p, n) if init else None
        rep = h // groups
        Y, final = mod.ssd_minimal_discrete(x * dt[..., None], A * dt, B.repeat_interleave(rep, dim=2),
                                            C.repeat_interleave(rep, dim=2), block,
                                            initial_states=None if h0 is None else h0[:, None])
        w.add(case, {"function": "ssd_minimal_discrete", "block_len": block, "dtype": str(dtype), "layout": "BTHD"},
              x=x, dt=dt, A=A, B=B, C=C, initial_states=h0, out=Y, final_state=final)
    return w


def fla_delta_rule() -> Writer:
    mod = load_fla_naive("delta_rule")
    w = Writer("fla_delta_rule", fla_provenance("delta_rule"), "delta_rule_chunkwise, delta_rule_recurrence",
               "layout [B, H, T, D]; scale K**-0.5; S [K, V] = W^T; ours: chunk_gated_delta_rule(g=None, beta); "
               "spec deltanet: q*scale, lr=beta")
    for case, fn, dtype, b, h, T, dk, dv, chunk, init in [
            ("chunkwise_t48_c16", "delta_rule_chunkwise", torch.float64, 2, 2, 48, 16, 16, 16, False),
            ("chunkwise_t21_c7", "delta_rule_chunkwise", torch.float64, 1, 2, 21, 8, 12, 7, False),
            ("recurrence_t37_init", "delta_rule_recurrence", torch.float32, 2, 2, 37, 16, 16, None, True),
            ("recurrence_t70_init", "delta_rule_recurrence", torch.float32, 1, 3, 70, 8, 16, None, True)]:
        r = Gen("fla_delta_rule/" + case, dtype)
        q, k, v = r.randn(b, h, T, dk), r.unit(b, h, T, dk), r.randn(b, h, T, dv)
        beta = r.beta(b, h, T)
        S0 = 0.5 * r.randn(b, h, dk, dv) if init else None
        if fn == "delta_rule_chunkwise":
            o, S = mod.delta_rule_chunkwise(q, k, v, beta, chunk_size=chunk)
        else:
            o, S = mod.delta_rule_recurrence(q, k, v, beta, initial_state=S0, output_final_state=True)
        assert o.dtype == dtype and S.dtype == dtype, (case, o.dtype, S.dtype)
        w.add(case, {"function": fn, "chunk_size": chunk, "scale": dk ** -0.5, "dtype": str(dtype), "layout": "BHTD"},
              q=q, k=k, v=v, beta=beta, initial_state=S0, out=o, final_state=S)
    return w


def fla_gated_delta_rule() -> Writer:
    mod = load_fla_naive("gated_delta_rule")
    w = Writer("fla_gated_delta_rule", fla_provenance("gated_delta_rule"),
               "naive_chunk_gated_delta_rule, naive_recurrent_gated_delta_rule",
               "layout [B, T, H, D]; g = log decay applied before the delta step; S [K, V] = W^T; ours: "
               "chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state); spec gated-deltanet: q*scale, "
               "lr=beta, log_alpha=g")
    dtype = torch.float32
    for case, fn, b, T, h, dk, dv, chunk, scale, init in [
            ("chunk_t37_c16_init", "naive_chunk_gated_delta_rule", 2, 37, 2, 16, 16, 16, None, True),
            ("chunk_t130_c64_scale", "naive_chunk_gated_delta_rule", 1, 130, 2, 16, 8, 64, 0.3, True),
            ("chunk_t64_c64", "naive_chunk_gated_delta_rule", 1, 64, 2, 8, 8, 64, None, False),
            ("recurrent_t37_init", "naive_recurrent_gated_delta_rule", 2, 37, 2, 16, 16, None, None, True),
            ("recurrent_t5_scale", "naive_recurrent_gated_delta_rule", 1, 5, 3, 8, 12, None, 0.5, True)]:
        r = Gen("fla_gated_delta_rule/" + case, dtype)
        q, k, v = r.randn(b, T, h, dk), r.unit(b, T, h, dk), r.randn(b, T, h, dv)
        g, beta = r.log_decay(b, T, h), r.beta(b, T, h)
        S0 = 0.5 * r.randn(b, h, dk, dv) if init else None
        if fn == "naive_chunk_gated_delta_rule":
            o, S = mod.naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk, scale=scale,
                                                    initial_state=S0, output_final_state=True)
        else:
            o, S = mod.naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=scale, initial_state=S0,
                                                        output_final_state=True)
        w.add(case, {"function": fn, "chunk_size": chunk, "scale": dk ** -0.5 if scale is None else scale,
                     "dtype": str(dtype), "layout": "BTHD"},
              q=q, k=k, v=v, g=g, beta=beta, initial_state=S0, out=o, final_state=S)
    return w


def fla_simple_gla() -> Writer:
    mod = load_fla_naive("simple_gla")
    w = Writer("fla_simple_gla", fla_provenance("simple_gla"), "naive_chunk_simple_gla, naive_recurrent_simple_gla",
               "layout [B, T, H, D]; g = log decay per head; S [K, V] = W^T; ours: chunk_gla(q, k, v, g, scale, "
               "initial_state); spec mamba2: q*scale, lr=1, log_alpha=g")
    dtype = torch.float32
    for case, fn, b, T, h, dk, dv, chunk, scale, init in [
            ("chunk_t37_c16_init", "naive_chunk_simple_gla", 2, 37, 2, 16, 16, 16, None, True),
            ("chunk_t100_c64_scale", "naive_chunk_simple_gla", 1, 100, 2, 8, 16, 64, 0.25, False),
            ("recurrent_t45_init", "naive_recurrent_simple_gla", 1, 45, 3, 8, 8, None, None, True)]:
        r = Gen("fla_simple_gla/" + case, dtype)
        q, k, v = r.randn(b, T, h, dk), r.randn(b, T, h, dk), r.randn(b, T, h, dv)
        g = r.log_decay(b, T, h)
        S0 = 0.5 * r.randn(b, h, dk, dv) if init else None
        if fn == "naive_chunk_simple_gla":
            o, S = mod.naive_chunk_simple_gla(q, k, v, g, initial_state=S0, output_final_state=True,
                                              chunk_size=chunk, scale=scale)
        else:
            o, S = mod.naive_recurrent_simple_gla(q, k, v, g, scale=scale, initial_state=S0, output_final_state=True)
        w.add(case, {"function": fn, "chunk_size": chunk, "scale": dk ** -0.5 if scale is None else scale,
                     "dtype": str(dtype), "layout": "BTHD"},
              q=q, k=k, v=v, g=g, initial_state=S0, out=o, final_state=S)
    return w


def fla_gla() -> Writer:
    mod = load_fla_naive("gla")
    w = Writer("fla_gla", fla_provenance("gla"), "naive_recurrent_gla",
               "layout [B, T, H, D]; gk = log decay per key channel [B, T, H, K]; scale K**-0.5; S [K, V] = W^T; "
               "ours: chunk_gla(q, k, v, gk, initial_state); spec matrix/dot/Decay(per_channel)/GD: q*scale, lr=1, "
               "log_alpha=gk")
    dtype = torch.float32
    for case, b, T, h, dk, dv, init in [("recurrent_t33_init", 2, 33, 2, 8, 16, True),
                                        ("recurrent_t70", 1, 70, 2, 16, 8, False)]:
        r = Gen("fla_gla/" + case, dtype)
        q, k, v = r.randn(b, T, h, dk), r.randn(b, T, h, dk), r.randn(b, T, h, dv)
        gk = r.log_decay(b, T, h, dk, shift=3.0)
        S0 = 0.5 * r.randn(b, h, dk, dv) if init else None
        o, S = mod.naive_recurrent_gla(q, k, v, gk, initial_state=S0, output_final_state=True)
        w.add(case, {"function": "naive_recurrent_gla", "scale": dk ** -0.5, "dtype": str(dtype), "layout": "BTHD"},
              q=q, k=k, v=v, g=gk, initial_state=S0, out=o, final_state=S)
    return w


def fla_linear_attn() -> Writer:
    mod = load_fla_naive("linear_attn")
    w = Writer("fla_linear_attn", fla_provenance("linear_attn"), "naive_recurrent_linear_attn",
               "layout [B, T, H, D]; no decay, normalize=False; S [K, V] = W^T; ours: chunk_gla(q, k, v, None, "
               "scale, initial_state); spec linear-attention: q*scale, lr=1")
    dtype = torch.float32
    for case, b, T, h, dk, dv, scale, init in [("recurrent_t29_init", 2, 29, 2, 8, 8, None, True),
                                               ("recurrent_t80_scale", 1, 80, 2, 16, 8, 0.1, False)]:
        r = Gen("fla_linear_attn/" + case, dtype)
        q, k, v = r.randn(b, T, h, dk), r.randn(b, T, h, dk), r.randn(b, T, h, dv)
        S0 = 0.5 * r.randn(b, h, dk, dv) if init else None
        o, S = mod.naive_recurrent_linear_attn(q, k, v, scale=scale, initial_state=S0, output_final_state=True)
        w.add(case, {"function": "naive_recurrent_linear_attn", "scale": dk ** -0.5 if scale is None else scale,
                     "dtype": str(dtype), "layout": "BTHD"},
              q=q, k=k, v=v, initial_state=S0, out=o, final_state=S)
    return w


PEERS = {"mamba_ssd": mamba_ssd, "fla_delta_rule": fla_delta_rule, "fla_gated_delta_rule": fla_gated_delta_rule,
         "fla_simple_gla": fla_simple_gla, "fla_gla": fla_gla, "fla_linear_attn": fla_linear_attn}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    total = 0
    for name in args.peers:
        path = PEERS[name]().write(args.out)
        size = path.stat().st_size
        total += size
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({size / 1024:.1f} KiB)")
    print(f"total {total / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
