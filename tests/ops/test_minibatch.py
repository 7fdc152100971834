"""The generic mini-batch engine against the recurrent reference: outputs, state, every gradient."""
import pytest
import torch

from miras.ops import MemoryState, recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk_minibatch
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.bias import L2, Huber, Lp, ValueShiftRobustL2
from miras.space.memory import MLPMemory, matrix
from miras.space.algorithm import GD, Momentum
from miras.space.retention import Decay, ElasticNet, KLSoftmax, LqNormalization, NoRetention

from .helpers import rel_err

SPECS = {name: get_preset(name).spec for name in ("ttt-linear", "ttt-mlp", "titans-lmm", "moneta", "yaad", "memora")}
SPECS.update({
    "robust+elastic+momentum": MirasSpec(MLPMemory(depth=2, expansion=2), ValueShiftRobustL2(0.2), ElasticNet(1e-3),
                                         Momentum()),
    "matrix+l2+decay": MirasSpec(matrix(), L2(), Decay(), GD()),
    "matrix+lp+lq": MirasSpec(matrix(), Lp(p=2.5), LqNormalization(q=3.0), Momentum()),
    "mlp3-silu+huber+kl": MirasSpec(MLPMemory(depth=3, expansion=1, activation="silu"), Huber(), KLSoftmax(), Momentum()),
    "mlp2-plain+l2+none": MirasSpec(MLPMemory(depth=2, residual=False, norm=False, activation="tanh"), L2(),
                                    NoRetention(), GD()),
    "mlp2+ln-affine+momentum": MirasSpec(MLPMemory(depth=2, expansion=2, norm_affine=True), L2(), NoRetention(),
                                         Momentum()),
    # the other options of the retention gates and Yaad's bias: boundaries mapped at every token, Memora's literal
    # (identity) in-chunk map, the literal Huber switch and the coordinate-wise Huber
    "matrix+lp+lq-every-token": MirasSpec(matrix(), Lp(p=2.5), LqNormalization(q=3.0, boundary_at="every-token"),
                                          Momentum()),
    "mlp2+huber-switch+kl-identity": MirasSpec(MLPMemory(depth=2, expansion=1), Huber(form="switch"),
                                               KLSoftmax(in_chunk="identity"), GD()),
    "mlp2+huber-coord+kl-every-token": MirasSpec(MLPMemory(depth=2, expansion=2), Huber(form="coord"),
                                                 KLSoftmax(boundary_at="every-token"), GD()),
    # decays toward the initial state W0 (MemoryState.prior): framed (Lq, chunk ends), every token, identity boundary
    "moneta-toward-init": MirasSpec(MLPMemory(depth=2, expansion=2), Lp(p=3.0), LqNormalization(toward="init"),
                                    GD(channel_lr=True)),
    "matrix+lp+lq-every-token-toward-init": MirasSpec(matrix(), Lp(p=2.5), LqNormalization(
        q=3.0, boundary_at="every-token", toward="init"), Momentum()),
    "mlp2+l2+decay-toward-init+momentum": MirasSpec(MLPMemory(depth=2, expansion=2), L2(), Decay(toward="init"),
                                                    Momentum()),
    "mlp2+l2+kl-toward-init": MirasSpec(MLPMemory(depth=2, expansion=2), L2(),
                                        KLSoftmax(scale="n_in", toward="init"), GD(channel_lr=True)),
})


def run_both(spec, seqlen, dtype=torch.float64, seed=0, grads=False, checkpoint_chunks=0, batch=2, d_k=4,
             fns=None):
    q, k, v, gates, state = random_inputs(spec, batch=batch, seqlen=seqlen, heads=2, d_k=d_k, dtype=dtype, seed=seed,
                                          requires_grad=grads)
    leaves = {"q": q, "k": k, "v": v, **gates, **{f"A.{n}": a for n, a in state.A.items()},
              **{f"S.{n}": s for n, s in (state.S or {}).items()},
              **{f"prior.{n}": p for n, p in (state.prior or {}).items()}}
    results = []
    for fn in fns or (recurrent_reference, lambda *a: chunk_minibatch(*a, checkpoint_chunks=checkpoint_chunks)):
        y, final = fn(spec, q, k, v, gates, state)
        out = {"y": y, **final.tensors()}
        if grads:
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(y.dtype)
            loss = (y * w).sum() + sum(t.sum() for n, t in final.tensors().items() if n.startswith("A."))
            out.update({f"d{n}": g for n, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values())))})
        results.append((out, final))
    return results


@pytest.mark.parametrize("seqlen,chunk", [(0, 16), (1, 16), (7, 16), (63, 16), (64, 16), (65, 16), (200, 64), (33, 1)],
                         ids=lambda x: str(x))
@pytest.mark.parametrize("name", list(SPECS))
def test_outputs_and_state_equal_reference_fp64(name, seqlen, chunk):
    (ref, rs), (fast, fs) = run_both(SPECS[name].with_chunk_size(chunk), seqlen)
    assert set(ref) == set(fast) and rs.offset == fs.offset
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= 1e-9, key


@pytest.mark.parametrize("seqlen,chunk", [(7, 16), (65, 16), (37, 8)], ids=lambda x: str(x))
@pytest.mark.parametrize("name", list(SPECS))
def test_every_gradient_equals_reference_fp64(name, seqlen, chunk):
    (ref, _), (fast, _) = run_both(SPECS[name].with_chunk_size(chunk), seqlen, grads=True)
    grads = [key for key in ref if key.startswith("d")]
    assert len(grads) >= 5 + len(SPECS[name].gates) - 1
    for key in grads:
        assert rel_err(fast[key], ref[key]) <= 1e-9, key


@pytest.mark.parametrize("name", ["titans-lmm", "moneta", "memora", "yaad"])
def test_fp32_is_as_accurate_as_the_fp32_reference(name):
    """Relative RMS error against the fp64 reference: the engine in fp32 within 4x the reference in fp32."""
    fp64, _ = run_both(SPECS[name], 64, grads=True, d_k=8, fns=[recurrent_reference])[0]
    (ref32, _), (fast32, _) = run_both(SPECS[name], 64, dtype=torch.float32, grads=True, d_k=8)
    for key in fp64:
        assert rel_err(fast32[key].double(), fp64[key]) <= 4 * rel_err(ref32[key].double(), fp64[key]) + 1e-6, key


@pytest.mark.parametrize("name", ["titans-lmm", "moneta", "memora"])
def test_gradient_checkpointing_changes_nothing(name):
    (_, _), (plain, _) = run_both(SPECS[name].with_chunk_size(4), 30, grads=True)
    (_, _), (ckpt, _) = run_both(SPECS[name].with_chunk_size(4), 30, grads=True, checkpoint_chunks=3)
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("group_bytes", [1, 3000], ids=["one-chunk-per-read", "a-few-chunks-per-read"])
@pytest.mark.parametrize("name", ["ttt-linear", "titans-lmm"])
def test_read_groups_of_any_size_change_nothing(name, group_bytes, monkeypatch):
    """The batched reads split into groups by READ_GROUP_BYTES (tiny here: 1 or a few chunks per group, with a
    partial last chunk) still equal the reference, outputs and every gradient."""
    from miras.ops.minibatch import chunk
    monkeypatch.setattr(chunk, "READ_GROUP_BYTES", group_bytes)
    (ref, _), (fast, _) = run_both(SPECS[name].with_chunk_size(4), 39, grads=True)
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= 1e-9, key


@pytest.mark.parametrize("split", [5, 16, 23])
@pytest.mark.parametrize("name", ["titans-lmm", "memora", "moneta"])
def test_state_carried_across_calls_equals_one_call(name, split):
    spec = SPECS[name].with_chunk_size(8)
    q, k, v, gates, state = random_inputs(spec, seqlen=41)
    y, final = chunk_minibatch(spec, q, k, v, gates, state)
    part = lambda x, s: x[:, s]  # noqa: E731
    first, rest = slice(0, split), slice(split, None)
    y1, mid = chunk_minibatch(spec, part(q, first), part(k, first), part(v, first),
                              {n: part(g, first) for n, g in gates.items()}, state)
    y2, end = chunk_minibatch(spec, part(q, rest), part(k, rest), part(v, rest),
                              {n: part(g, rest) for n, g in gates.items()}, mid)
    assert rel_err(torch.cat([y1, y2], 1), y) <= 1e-10
    for key, t in final.tensors().items():
        assert rel_err(end.tensors()[key], t) <= 1e-10, key


@pytest.mark.parametrize("name", ["moneta", "memora", "robust+elastic+momentum", "matrix+lp+lq-every-token"])
def test_continuing_a_reference_state_left_mid_chunk_equals_the_reference(name):
    """A state the reference leaves inside a chunk (open anchor, start accumulator, offset) continued by the engine
    and by the reference: outputs, final state and the gradients to the carried state agree (fp64)."""
    spec = SPECS[name].with_chunk_size(8)
    q, k, v, gates, state = random_inputs(spec, seqlen=24)
    head = {n: g[:, :5] for n, g in gates.items()}
    _, mid = recurrent_reference(spec, q[:, :5], k[:, :5], v[:, :5], head, state)
    assert mid.offset == 5 and mid.anchor is not None
    assert (mid.start is not None) == (spec.retention.boundary_at == "chunk-end")
    carried = {key: t.clone().requires_grad_() for key, t in mid.tensors().items()}
    def group(prefix):
        return {n.split(".", 1)[1]: t for n, t in carried.items() if n.startswith(prefix)} or None
    start = MemoryState(group("A."), group("S."), group("anchor."), mid.offset, group("start."), prior=group("prior."))
    tail = {n: g[:, 5:] for n, g in gates.items()}
    results = []
    for fn in (recurrent_reference, chunk_minibatch):
        y, final = fn(spec, q[:, 5:], k[:, 5:], v[:, 5:], tail, start)
        loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)).sum()
        results.append({"y": y, **final.tensors(),
                        **{f"d{n}": g for n, g in zip(carried, torch.autograd.grad(loss, list(carried.values())))}})
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        assert rel_err(results[1][key], results[0][key]) <= 1e-9, key


@pytest.mark.parametrize("name", ["moneta", "memora", "robust+elastic+momentum"])
def test_chunk_end_boundaries_never_form_per_token_weights(name, monkeypatch):
    """The presets' rule reads in the dual form; only boundary_at="every-token" forms the chunk's per-token weights."""
    from miras.ops.minibatch import chunk

    def refuse(*args):
        raise AssertionError("per-token weights formed")
    monkeypatch.setattr(chunk, "_token_linear", refuse)
    q, k, v, gates, state = random_inputs(SPECS[name].with_chunk_size(4), seqlen=10)
    chunk_minibatch(SPECS[name].with_chunk_size(4), q, k, v, gates, state)
    with pytest.raises(AssertionError, match="per-token weights formed"):
        chunk_minibatch(SPECS["matrix+lp+lq-every-token"], *random_inputs(SPECS["matrix+lp+lq-every-token"], seqlen=3))


def test_a_mid_chunk_state_without_its_start_is_refused():
    spec = SPECS["moneta"].with_chunk_size(8)
    q, k, v, gates, state = random_inputs(spec, seqlen=12)
    _, mid = recurrent_reference(spec, q[:, :5], k[:, :5], v[:, :5], {n: g[:, :5] for n, g in gates.items()}, state)
    lost = MemoryState(mid.A, mid.S, mid.anchor, mid.offset)
    for fn in (recurrent_reference, chunk_minibatch):
        with pytest.raises(ConfigError, match=r"^state\.start=None is invalid: .*; fix: continue from the MemoryState"):
            fn(spec, q[:, 5:], k[:, 5:], v[:, 5:], {n: g[:, 5:] for n, g in gates.items()}, lost)


def test_batch_rows_are_independent():
    spec = SPECS["yaad"]
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=40)
    y, _ = chunk_minibatch(spec, q, k, v, gates, state)
    v2 = v.clone()
    v2[1] += 5.0
    gates2 = {n: g.clone() for n, g in gates.items()}
    gates2["lr"][1] *= 0.1
    y2, _ = chunk_minibatch(spec, q, k, v2, gates2, state)
    torch.testing.assert_close(y2[0], y[0], rtol=0, atol=0)
    assert (y2[1] - y[1]).abs().max() > 1e-3


def test_momentum_with_zero_beta_is_plain_gd_and_its_beta_gradient_is_the_references():
    gd = MirasSpec(MLPMemory(depth=2), L2(), Decay(), GD(), chunk_size=4)
    mom = MirasSpec(MLPMemory(depth=2), L2(), Decay(), Momentum(), chunk_size=4)
    q, k, v, gates, state = random_inputs(mom, seqlen=10, requires_grad=True)
    zero = torch.zeros_like(gates["beta"], requires_grad=True)
    zero_state = MemoryState(state.A, {n: torch.zeros_like(s) for n, s in state.S.items()})
    y_mom, _ = chunk_minibatch(mom, q, k, v, {**gates, "beta": zero}, zero_state)
    y_gd, _ = chunk_minibatch(gd, q, k, v, {n: gates[n] for n in gd.gates}, MemoryState(state.A))
    torch.testing.assert_close(y_mom, y_gd, rtol=1e-12, atol=1e-12)
    w = torch.randn(y_mom.shape, dtype=y_mom.dtype, generator=torch.Generator().manual_seed(1))  # not y.sum():
    (g_beta,) = torch.autograd.grad((y_mom * w).sum(), zero)                        # LN outputs sum to 0
    y_ref, _ = recurrent_reference(mom, q, k, v, {**gates, "beta": zero}, zero_state)
    (want,) = torch.autograd.grad((y_ref * w).sum(), zero)
    assert want.abs().max() > 1e-3                       # beta = 0 has a gradient: the momentum it would let in
    torch.testing.assert_close(g_beta, want, rtol=1e-9, atol=1e-12)
