"""Muon as the memory's learning algorithm (ATLAS, arXiv 2505.23735, Eqs. 32-33; space/algorithm.py `Muon`):

    S_t = beta_t S_{t-1} - g_t;   A_t = alpha_t A_{t-1} + eta_t NS_k(S_t)   (S = -ATLAS's S; NS per matrix and head)

The reference against the rule written out here in the paper's own signs (S^p_t = theta_t S^p_{t-1} + grad, M_t =
alpha_t M_{t-1} - eta_t NS_k(S^p_t), the gradient by autograd at the chunk's anchor, Newton-Schulz written out); the
mini-batch engine against the reference in float64 (outputs, final state with the momentum, every gradient) and
float32, T = 0, 1, T < chunk, odd lengths, other memories, biases and retentions; state carried across calls split
mid-chunk and at a boundary; packed documents; the refused combinations. The `atlas` preset's model (a training step,
decoding token by token equal to one call) is tested in tests/models/test_atlas.py."""
import pytest
import torch

from miras.ops import MemoryState, recurrent_reference
from miras.ops import dispatch
from miras.ops.dispatch import memory_op
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk, chunk_minibatch
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.algorithm import GD, Muon, newton_schulz
from miras.space.bias import L2, DotProduct, Omega
from miras.space.memory import MLPMemory, matrix
from miras.space.retention import Decay, KLSoftmax, LqNormalization, NoRetention, RowNorm
from miras.space.tables import spec_from_dict, spec_to_dict

from . import helpers
from .helpers import rel_err

DEEP = MLPMemory(depth=2, expansion=2)          # W1 [16, 8] (tall), W2 [8, 16] (wide) at d = 8
SPECS = {
    "deep-l2-decay": MirasSpec(DEEP, L2(), Decay(), Muon(), chunk_size=4),
    "omega-deep": MirasSpec(DEEP, Omega(3), Decay(), Muon(), chunk_size=4),
    "matrix-dot": MirasSpec(matrix(), DotProduct(), Decay(), Muon(), chunk_size=4),
    "matrix-l2-none": MirasSpec(matrix(), L2(), NoRetention(), Muon(ns_steps=2), chunk_size=4),
    "memora-frame": MirasSpec(DEEP, L2(), KLSoftmax(), Muon(), chunk_size=4),
    "lq-every-token": MirasSpec(DEEP, L2(), LqNormalization(q=4.0, boundary_at="every-token"), Muon(), chunk_size=4),
    "atlas": get_preset("atlas").spec.with_chunk_size(4),
}

# Muon's quintic Newton-Schulz step (Jordan et al. 2024), written out again for the literal loop
A_NS, B_NS, C_NS = 3.4445, -4.7750, 2.0315


def _ns(g, k):
    """k Newton-Schulz steps on one [o, i] matrix (the wide orientation), after Frobenius normalization."""
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (x.norm() + 1e-7)
    for _ in range(k):
        gram = x @ x.T
        x = A_NS * x + B_NS * gram @ x + C_NS * gram @ gram @ x
    return x.T if tall else x


def paper_loop(spec, q, k, v, gates, state):
    """ATLAS's Eqs. 32-33 for every batch row and head, token by token, in the paper's signs: at token t the loss
    l_t (L2 ||M(k) - v||^2; Omega: sum over the last c tokens of gamma_i ||M(k_i) - v_i||^2) differentiated by
    autograd at the memory the chunk started from, S^p_t = theta_t S^p_{t-1} + grad, M_t = alpha_t M_{t-1} - eta_t
    NS_k(S^p_t) per weight matrix, y_t = M_t(q_t). Decay retention (or none) only. Returns y and the final (M, S^p)."""
    memory, b, steps = spec.memory, spec.chunk_size, spec.algorithm.ns_steps
    c = getattr(spec.bias, "window", 1)
    Bn, T, H, _ = q.shape
    ys = torch.zeros(Bn, T, H, v.shape[-1], dtype=q.dtype)
    M_out, S_out = ({n: torch.zeros_like(a) for n, a in state.A.items()} for _ in range(2))
    for row in range(Bn):
        for h in range(H):
            M = {n: a[row, h].detach() for n, a in state.A.items()}
            Sp = {n: -s[row, h].detach() for n, s in state.S.items()}
            if c > 1:
                wk, wv, wg = (state.window[n][row, h].detach() for n in ("k", "v", "gamma"))
                keys, values = torch.cat([wk, k[row, :, h]]), torch.cat([wv, v[row, :, h]])
                gamma = torch.cat([wg, gates["gamma"][row, :, h]])
            for t in range(T):
                if t % b == 0:
                    anchor = {n: m.clone().requires_grad_(True) for n, m in M.items()}
                W = {n: a[None, None] for n, a in anchor.items()}
                if c > 1:
                    pred = memory(W, keys[None, None, t:t + c])[0, 0]
                    loss = (gamma[t:t + c] * (pred - values[t:t + c]).pow(2).sum(-1)).sum()
                elif isinstance(spec.bias, DotProduct):
                    loss = -(memory(W, k[row, t, h][None, None, None])[0, 0, 0] * v[row, t, h]).sum()
                else:
                    loss = (memory(W, k[row, t, h][None, None, None])[0, 0, 0] - v[row, t, h]).pow(2).sum()
                grad = dict(zip(anchor, torch.autograd.grad(loss, list(anchor.values()))))
                theta, eta = gates["beta"][row, t, h], gates["lr"][row, t, h]
                alpha = gates["log_alpha"][row, t, h].exp() if "log_alpha" in gates else 1.0
                Sp = {n: theta * Sp[n] + grad[n] for n in M}
                M = {n: alpha * M[n] - eta * _ns(Sp[n], steps) for n in M}
                read = memory({n: a[None, None] for n, a in M.items()}, q[row, t, h][None, None, None])
                ys[row, t, h] = read[0, 0, 0]
            for n in M:
                M_out[n][row, h], S_out[n][row, h] = M[n], Sp[n]
    return ys, M_out, S_out


def inputs(spec, seqlen, dtype=torch.float64, seed=0, grads=False, zero_momentum=False):
    """random_inputs (a random start momentum, or zeros) with a random Omega window before the first token, drawn in
    float64 and cast to dtype (torch.randn draws other numbers in float32), so runs in both dtypes see one input."""
    q, k, v, gates, state = random_inputs(spec, seqlen=seqlen, dtype=torch.float64, seed=seed)
    if zero_momentum:
        state.S = {n: torch.zeros_like(s) for n, s in state.S.items()}
    if state.window is not None:
        gen = torch.Generator().manual_seed(seed + 1)
        state.window = {n: (torch.rand if n == "gamma" else torch.randn)(w.shape, generator=gen, dtype=torch.float64)
                        for n, w in state.window.items()}
    q, k, v = (x.to(dtype) for x in (q, k, v))
    gates = {n: g.to(dtype) for n, g in gates.items()}
    state = MemoryState(**{name: None if group is None else {n: t.to(dtype) for n, t in group.items()}
                           for name, group in state.groups().items()}, offset=state.offset)
    if grads:
        for t in [q, k, v, *gates.values(), *state.tensors().values()]:
            t.requires_grad_(True)
    return q, k, v, gates, state


@pytest.mark.parametrize("name,chunk", [("deep-l2-decay", 3), ("deep-l2-decay", 1), ("omega-deep", 3),
                                        ("matrix-dot", 4), ("matrix-l2-none", 2)], ids=str)
def test_the_reference_is_atlas_rule_written_out(name, chunk):
    spec = SPECS[name].with_chunk_size(chunk)
    q, k, v, gates, state = inputs(spec, 9)
    y, M, Sp = paper_loop(spec, q, k, v, gates, state)
    y_ref, final = recurrent_reference(spec, q, k, v, gates, state)
    assert rel_err(y_ref, y) <= 1e-12
    for n in M:
        assert rel_err(final.A[n], M[n]) <= 1e-12, n
        assert rel_err(final.S[n], -Sp[n]) <= 1e-12, n           # the library's S is -ATLAS's


def test_muon_is_momentum_with_the_step_orthogonalized():
    """One step from S_0 = 0 by hand: A_1 = alpha A_0 + eta NS(-g); and NS is odd (the sign convention is free)."""
    spec = SPECS["deep-l2-decay"].with_chunk_size(1)
    q, k, v, gates, state = inputs(spec, 1, zero_momentum=True)
    _, final = recurrent_reference(spec, q, k, v, gates, state)
    grads = spec.memory.grads(state.A, k.transpose(1, 2), spec.bias.grad(spec.memory(state.A, k.transpose(1, 2)),
                                                                         v.transpose(1, 2), {}))
    for n, g in grads.items():
        g = g[:, :, 0]
        eta, alpha = gates["lr"][:, 0, :, None, None], gates["log_alpha"][:, 0, :, None, None].exp()
        assert rel_err(final.S[n], -g) <= 1e-14
        assert rel_err(final.A[n], alpha * state.A[n] + eta * newton_schulz(-g, coefficients=[(A_NS, B_NS, C_NS)] * 5)
                       ) <= 1e-14
        assert torch.equal(newton_schulz(-g), -newton_schulz(g))


def run_both(spec, seqlen, dtype=torch.float64, grads=True, zero_momentum=False):
    """The reference and the engine on this file's inputs (helpers.run_both)."""
    q, k, v, gates, state = inputs(spec, seqlen, dtype=dtype, grads=grads, zero_momentum=zero_momentum)
    return helpers.run_both(spec, q, k, v, gates, state, grads=grads)


# fp64 engine against reference: measured worst 7e-14 (d lr, from S_0 = 0 over 10 chunks), 2e-14 in the other cases
# below; NS (its Frobenius normalization, its slope 3.4445^5 ~ 490 at small singular values) amplifies rounding, but
# 1e-10 holds with a margin above 1000
TOL = 1e-10


@pytest.mark.parametrize("seqlen,chunk", [(0, 4), (1, 4), (3, 4), (11, 4), (9, 2), (7, 1)], ids=str)
@pytest.mark.parametrize("name", ["deep-l2-decay", "omega-deep"])
def test_engine_equals_reference_fp64(name, seqlen, chunk):
    ref, fast = run_both(SPECS[name].with_chunk_size(chunk), seqlen)
    assert ref.keys() == fast.keys()
    assert {"S.W1", "S.W2", "dS.W1", "dS.W2", "dA.W1", "dgates.lr", "dgates.beta", "dgates.log_alpha", "dq", "dk",
            "dv"} <= set(ref)
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= TOL, key


@pytest.mark.parametrize("name", ["matrix-dot", "matrix-l2-none", "memora-frame", "lq-every-token", "atlas"])
def test_engine_equals_reference_for_other_memories_biases_and_retentions(name):
    ref, fast = run_both(SPECS[name], 13)
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= TOL, key


def test_engine_equals_reference_from_zero_momentum_over_many_chunks():
    """A fresh stream (S_0 = 0): the first momenta are rank-deficient, where NS's slope at 0 magnifies rounding."""
    ref, fast = run_both(SPECS["deep-l2-decay"], 40, zero_momentum=True)
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= TOL, key


def test_checkpointed_pieces_give_the_same_values_and_gradients(monkeypatch):
    """Backward recomputes the momenta and NS in pieces (chunk.NS_PIECE_BYTES); one matrix per piece: unchanged."""
    spec = SPECS["omega-deep"]
    ref, whole = run_both(spec, 11)
    monkeypatch.setattr(chunk, "NS_PIECE_BYTES", 1)
    _, pieces = run_both(spec, 11)
    for key in ref:
        assert rel_err(pieces[key], whole[key]) <= 1e-14, key
        assert rel_err(pieces[key], ref[key]) <= TOL, key


def test_chunk_checkpointing_changes_nothing():
    """checkpoint_chunks (groups of chunks recomputed in backward) around the pieces' own checkpoints: bit for bit."""
    spec = SPECS["omega-deep"]
    out = []
    for groups in (0, 2):
        q, k, v, gates, state = inputs(spec, 13, grads=True)
        y, final = chunk_minibatch(spec, q, k, v, gates, state, checkpoint_chunks=groups)
        loss = (y * y.detach().cos()).sum() + sum(s.sum() for s in final.S.values())
        out.append([y, *torch.autograd.grad(loss, [q, k, v, *gates.values(), *state.A.values(), *state.S.values()])])
    for plain, ckpt in zip(*out):
        assert torch.equal(plain, ckpt)


def test_engine_fp32_is_as_accurate_as_the_fp32_reference():
    """Against the fp64 reference on the same inputs: both fp32 runs 2e-6 to 2e-5 (NS magnifies fp32 rounding about
    100-fold), the engine within 1.5x the reference's error for every tensor (measured)."""
    spec = SPECS["omega-deep"]
    fp64, _ = run_both(spec, 24)
    ref32, fast32 = run_both(spec, 24, dtype=torch.float32)
    assert fast32["y"].dtype == torch.float32
    for key in fp64:
        assert rel_err(fast32[key], fp64[key]) <= min(4 * rel_err(ref32[key], fp64[key]) + 1e-6, 1e-4), key


@pytest.mark.parametrize("fn", [recurrent_reference, chunk_minibatch], ids=["reference", "engine"])
@pytest.mark.parametrize("split", [6, 8], ids=["mid-chunk", "chunk-boundary"])
@pytest.mark.parametrize("name", ["omega-deep", "memora-frame"])
def test_state_carried_across_two_calls_equals_one_call(name, fn, split):
    spec = SPECS[name]
    q, k, v, gates, state = inputs(spec, 13)
    y, final = fn(spec, q, k, v, gates, state)
    first, rest = slice(0, split), slice(split, None)
    y1, mid = fn(spec, q[:, first], k[:, first], v[:, first], {n: g[:, first] for n, g in gates.items()}, state)
    assert mid.offset == split % spec.chunk_size and mid.S is not None
    y2, end = fn(spec, q[:, rest], k[:, rest], v[:, rest], {n: g[:, rest] for n, g in gates.items()}, mid)
    assert rel_err(torch.cat([y1, y2], 1), y) <= 1e-12
    assert end.tensors().keys() == final.tensors().keys()
    for key, t in final.tensors().items():
        assert rel_err(end.tensors()[key], t) <= 1e-12, key


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_packed_documents_equal_one_call_per_document(mode):
    spec = SPECS["omega-deep"]
    q, k, v, gates, state = inputs(spec, 14)
    W0 = {n: a[0] for n, a in state.A.items()}
    resets = torch.zeros(2, 14, dtype=torch.bool)
    resets[0, [5, 6]] = True
    resets[1, [0, 9]] = True
    y, final = memory_op(spec, q, k, v, gates, state, mode=mode, resets=resets, W0=W0)
    for row, cuts in ((0, [0, 5, 6, 14]), (1, [0, 9, 14])):
        s = MemoryState(**{name: None if group is None else {n: t[:1] for n, t in group.items()}
                           for name, group in state.groups().items()}, offset=state.offset)
        for a, b in zip(cuts[:-1], cuts[1:]):
            if a > 0 or row == 1:                        # a document start: W0, zero momentum, an empty window
                s = MemoryState({n: w[None].clone() for n, w in W0.items()}, {n: torch.zeros_like(w[None]) for n, w
                                                                               in W0.items()},
                                window={n: torch.zeros_like(w[:1]) for n, w in state.window.items()})
            part = slice(a, b)
            y_doc, s = memory_op(spec, q[row:row + 1, part], k[row:row + 1, part], v[row:row + 1, part],
                                 {n: g[row:row + 1, part] for n, g in gates.items()}, s, mode=mode)
            assert rel_err(y[row:row + 1, part], y_doc) <= 1e-12, (row, a)
        got = final.rows(torch.tensor([row])).tensors()
        assert got.keys() == s.tensors().keys()
        for key, t in s.tensors().items():
            assert rel_err(got[key], t) <= 1e-12, (row, key)


def test_dispatch_runs_muon_on_the_minibatch_engine():
    """A matrix memory with the dot-product bias would take the SSD path as GD; with Muon its steps are not linear in
    v k^T, so it runs on the mini-batch engine (auto equals the reference)."""
    spec = SPECS["matrix-dot"]
    assert dispatch.select_op(spec) == "minibatch" and spec.chunk_invariant
    q, k, v, gates, state = inputs(spec, 10)
    y, final = memory_op(spec, q, k, v, gates, state)
    y_ref, final_ref = memory_op(spec, q, k, v, gates, state, mode="reference")
    assert rel_err(y, y_ref) <= 1e-12 and rel_err(final.S["W1"], final_ref.S["W1"]) <= 1e-12
    y_b1, _ = memory_op(spec.with_chunk_size(1), q, k, v, gates, state)     # dot product: any chunk size
    assert rel_err(y_b1, y_ref) <= 1e-12


def test_the_spec_table_writes_and_reads_muon():
    spec = get_preset("atlas").spec
    table = spec_to_dict(spec)
    assert table["algorithm"] == {"name": "muon", "ns_steps": 5}
    assert spec_from_dict(table) == spec
    assert spec_from_dict({**table, "algorithm": {"name": "muon", "ns_steps": 3}}).algorithm == Muon(ns_steps=3)


def test_invalid_muon_configurations_are_refused():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match=r"^algorithm\.ns_steps=.* is invalid: allowed an integer >= 1"):
            Muon(ns_steps=bad)
    with pytest.raises(ConfigError, match=r"^memory\.norm_affine=True is invalid: allowed False with Muon"):
        MirasSpec(MLPMemory(depth=1, residual=True, norm=True, norm_affine=True), L2(), NoRetention(), Muon())
    with pytest.raises(ConfigError, match=r"^retention='rownorm' is invalid"):            # no weighted reads
        MirasSpec(get_preset("lact").spec.memory, DotProduct(), RowNorm(), Muon())
    table = spec_to_dict(SPECS["deep-l2-decay"])
    for extra in ({"channel_lr": True}, {"token_weights": True}, {"reads": "chunk-start"}, {"steps": 2}):
        with pytest.raises(ConfigError, match=r"^spec\.algorithm=.* is invalid: allowed the parameters of algorithm "
                                              r"'muon': \['ns_steps'\]"):
            spec_from_dict({**table, "algorithm": {"name": "muon", **extra}})
    from miras.space.algorithm import NonParametric as Attention
    from miras.space.memory import NonParametric
    with pytest.raises(ConfigError, match=r"^algorithm='muon' is invalid"):              # a KV cache is no matrix
        MirasSpec(NonParametric(), L2(), NoRetention(), Muon())
    assert GD() != Muon() and not hasattr(Muon(), "weighted")
    assert Attention().name == "attention"
