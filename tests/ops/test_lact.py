"""LaCT (arXiv 2505.23884, "Test-Time Training Done Right"), the `lact` preset: SwiGLU fast weights, the negative
dot-product loss, one update per chunk read before it (GD(reads="chunk-start")), the Muon update and the row-norm
weight normalization (RowNorm).

The recurrent reference against LaCT's chunk loop written out here (its block_causal_lact_swiglu: apply with W_s,
then update, Muon, row norms back to W0's), with outputs, final state and gradients; the mini-batch engine against
the reference in float64 and float32 (outputs, final state, every gradient) at T = 0, 1, T < chunk, odd lengths;
state carried across calls split mid-chunk and at a boundary; packed documents; the preset at its chunk of 2048;
and a model that trains a step and decodes token by token as one call."""
import pytest
import torch
import torch.nn.functional as F

from miras import memory_op
from miras.models import MirasConfig, MirasLM
from miras.ops import MemoryState, recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk_minibatch
from miras.space import MirasSpec, get_preset
from miras.space.algorithm import GD
from miras.space.bias import L2, DotProduct
from miras.space.retention import NoRetention, RowNorm

from .helpers import assert_same, rel_err, run_both

B = 4                      # the tests' chunk size
LACT = get_preset("lact").spec.with_chunk_size(B)
SPECS = {
    "lact": LACT,
    "lact-gd": MirasSpec(LACT.memory, DotProduct(), RowNorm(), GD(reads="chunk-start"), chunk_size=B),
    "lact-no-norm": MirasSpec(LACT.memory, DotProduct(), NoRetention(), GD(reads="chunk-start", muon=True),
                              chunk_size=B),
    "chunk-start-titans-memory-l2": MirasSpec(get_preset("titans-lmm").spec.memory, L2(), NoRetention(),
                                              GD(reads="chunk-start"), chunk_size=B),
    "ttt-token-weights-rownorm": MirasSpec(LACT.memory, L2(), RowNorm(), GD(token_weights=True), chunk_size=B),
}

# LaCT's Newton-Schulz steps (its zeropower_via_newtonschulz5), written out again for the literal loop
STEPS = [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
         (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)]


def _muon(g):
    """One [o, i] matrix orthogonalized as LaCT's code does (without its bfloat16 cast)."""
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (x.norm() + 1e-7)
    for a, b, c in STEPS:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def _f(W, x):
    return (F.silu(x @ W["W1"].T) * (x @ W["W3"].T)) @ W["W2"].T


def _lact_loop(W0, q, k, v, lr, b, muon=True, rownorm=True):
    """LaCT's shifted block-causal loop for one batch row and head (q, k [T, d_k], v [T, d_v], lr [T], W0 name ->
    [out, in]): for every chunk, apply (o_i = f_W(q_i) with the chunk-start W), then, for a full chunk, update
    W <- W + Muon(grad_W sum_i lr_i <f_W(k_i), v_i>) and rescale every row of every matrix to its norm in W0.
    Returns (o [T, d_v], W after the last full chunk)."""
    W, norms, out = dict(W0), {n: w.norm(dim=1, keepdim=True) for n, w in W0.items()}, []
    for s in range(0, q.shape[0], b):
        e = min(s + b, q.shape[0])
        out.append(_f(W, q[s:e]))
        if e - s < b:
            break
        goal = (lr[s:e, None] * _f(W, k[s:e]) * v[s:e]).sum()
        grads = torch.autograd.grad(goal, list(W.values()), create_graph=True)
        W = {n: W[n] + (_muon(g) if muon else g) for n, g in zip(W, grads)}
        if rownorm:
            W = {n: w / w.norm(dim=1, keepdim=True) * norms[n] for n, w in W.items()}
    return (torch.cat(out) if out else v.new_zeros(0, v.shape[-1])), W


def _inputs(spec, seqlen, dtype=torch.float64, seed=0):
    """random_inputs with the start state as leaves (its own W0 per batch row)."""
    q, k, v, gates, state = random_inputs(spec, seqlen=seqlen, dtype=dtype, seed=seed, requires_grad=True)
    state = MemoryState({n: a.detach().clone().requires_grad_(True) for n, a in state.A.items()})
    return q, k, v, gates, state


def _leaves(q, k, v, gates, state):
    return [q, k, v, *gates.values(), *state.A.values()]


@pytest.mark.parametrize("muon, rownorm", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("seqlen", [0, 1, 3, 8, 11])
def test_reference_equals_lacts_chunk_loop(seqlen, muon, rownorm):
    spec = MirasSpec(LACT.memory, DotProduct(), RowNorm() if rownorm else NoRetention(),
                     GD(reads="chunk-start", muon=muon), chunk_size=B)
    q, k, v, gates, state = _inputs(spec, seqlen)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    outs, finals = [], []
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            o, W = _lact_loop({n: a[b, h] for n, a in state.A.items()}, q[b, :, h], k[b, :, h], v[b, :, h],
                              gates["lr"][b, :, h], B, muon, rownorm)
            outs.append(o)
            finals.append(W)
    want = torch.stack(outs).unflatten(0, q.shape[:1] + q.shape[2:3]).transpose(1, 2)      # [B, T, H, d_v]
    assert rel_err(y, want) < 1e-10 or seqlen == 0          # (Muon's 5 steps amplify rounding: ~1e-12)
    if seqlen % B == 0:                       # no open chunk: the state is LaCT's fast weights
        assert final.offset == 0 and final.anchor is None and final.start is None
        for n in final.A:
            assert rel_err(final.A[n], torch.stack([W[n] for W in finals]).view_as(final.A[n])) < 1e-10, n
    if seqlen > B:                            # every gradient, the start state's (through the target norms) included
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
        leaves = _leaves(q, k, v, gates, state)
        got = torch.autograd.grad((y * w).sum(), leaves)
        expected = torch.autograd.grad((want * w).sum(), leaves)
        for i, (a, b) in enumerate(zip(got, expected)):
            assert rel_err(a, b) < 1e-10, i


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("seqlen", [0, 1, 3, 4, 8, 11])
def test_engine_equals_reference_every_gradient(name, seqlen):
    spec = SPECS[name]
    q, k, v, gates, state = _inputs(spec, seqlen)
    outs = run_both(spec, q, k, v, gates, state)
    assert outs[0]["offset"] == seqlen % B
    assert_same(outs)


def test_fp32_engine_close_to_fp64_reference():
    """b = 16 >= the head dim 8, as in the paper (b = 2048): with b < d a chunk's update has rank < d and Muon's
    Newton-Schulz steps magnify the rounding in its null space (about 500x per chunk), so fp32 and fp64 runs part
    (docs/design-space.md)."""
    spec = LACT.with_chunk_size(16)
    q, k, v, gates, state = random_inputs(spec, seqlen=45)
    y64, final64 = recurrent_reference(spec, q, k, v, gates, state)
    s32 = MemoryState({n: a.float() for n, a in state.A.items()})
    y32, final32 = memory_op(spec, q.float(), k.float(), v.float(), {n: g.float() for n, g in gates.items()}, s32)
    assert y32.dtype == torch.float32 and rel_err(y32, y64) < 1e-4
    for n in final64.A:
        assert rel_err(final32.A[n], final64.A[n]) < 1e-4, n


@pytest.mark.parametrize("split", [1, 3, 4, 6, 8])
@pytest.mark.parametrize("fn", [recurrent_reference, chunk_minibatch])
def test_state_carried_across_calls(fn, split):
    """Split mid-chunk (the open chunk keeps its start weights and partial step) and at a chunk boundary."""
    q, k, v, gates, state = random_inputs(LACT, seqlen=11)
    y, final = recurrent_reference(LACT, q, k, v, gates, state)
    y1, mid = fn(LACT, q[:, :split], k[:, :split], v[:, :split], {n: g[:, :split] for n, g in gates.items()}, state)
    assert (mid.start is not None) == (mid.anchor is not None) == (split % B != 0)
    y2, end = fn(LACT, q[:, split:], k[:, split:], v[:, split:], {n: g[:, split:] for n, g in gates.items()}, mid)
    assert rel_err(torch.cat([y1, y2], 1), y) < 1e-10
    for n in final.A:
        assert rel_err(end.A[n], final.A[n]) < 1e-10, n


def test_packed_documents_equal_one_call_per_document():
    q, k, v, gates, state = _inputs(LACT, 13)
    W0 = {n: (a[0] + 0.01 * torch.randn_like(a[0])).detach().requires_grad_(True) for n, a in state.A.items()}
    starts = {0: [0, 5, 6], 1: [0, 9]}                  # documents of 5, 1 and 7 tokens; 9 and 4
    resets = torch.zeros(2, 13, dtype=torch.bool)
    for row, firsts in starts.items():
        resets[row, firsts] = True
    y, _ = memory_op(LACT, q, k, v, gates, None, resets=resets, W0=W0)
    pieces = []
    for row, firsts in starts.items():
        for a, b in zip(firsts, firsts[1:] + [13]):
            piece, _ = memory_op(LACT, q[row:row + 1, a:b], k[row:row + 1, a:b], v[row:row + 1, a:b],
                                 {n: g[row:row + 1, a:b] for n, g in gates.items()}, W0=W0)
            pieces.append(piece)
    want = torch.cat([torch.cat(pieces[:3], 1), torch.cat(pieces[3:], 1)])
    assert rel_err(y, want) < 1e-12
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    leaves = [q, k, v, gates["lr"], *W0.values()]
    for a, b in zip(torch.autograd.grad((y * w).sum(), leaves), torch.autograd.grad((want * w).sum(), leaves)):
        assert rel_err(a, b) < 1e-10


def test_the_preset_reads_its_initial_weights_for_a_whole_short_sequence():
    """At the paper's chunk of 2048 a 64-token sequence gets no update: every token reads f_{W0}(q)."""
    spec = get_preset("lact").spec
    q, k, v, gates, state = random_inputs(spec, seqlen=64)
    y, final = memory_op(spec, q, k, v, gates, state)
    W0 = {n: a.transpose(0, 1) for n, a in state.A.items()}                 # [H, B, out, in]
    assert rel_err(y, _f_heads(W0, q)) < 1e-12
    assert final.offset == 64 and all(torch.equal(final.anchor[n], state.A[n]) for n in state.A)


def _f_heads(W, q):
    """f_W(q) with W name -> [H, B, out, in] and q [B, T, H, d] -> [B, T, H, d_v]."""
    x = q.permute(2, 0, 1, 3)
    return ((F.silu(x @ W["W1"].mT) * (x @ W["W3"].mT)) @ W["W2"].mT).permute(1, 2, 0, 3)


def _decode(model, ids, prefill=6):
    with torch.no_grad():
        first, states = model(ids[:, :prefill])
        steps = []
        for t in range(prefill, ids.shape[1]):
            logits, states = model(ids[:, t:t + 1], states)
            steps.append(logits)
        return torch.cat([first, *steps], 1), model(ids)[0]


@pytest.mark.parametrize("chunk_size", [4, None])
def test_model_trains_a_step_and_decodes_as_one_call(chunk_size):
    """Decoding token by token equals one call (float64). After a training step the tolerance is wider: Muon's
    update direction is ill-conditioned in k and v (an input perturbation grows about 1e3-fold through one memory
    layer, measured), so the decode path's rounding (~1e-11 per layer) reaches ~1e-7 in the logits."""
    torch.manual_seed(0)
    config = MirasConfig(preset="lact", d_model=32, heads=2, n_layers=2, window=8, chunk_size=chunk_size)
    assert config.memory_spec.chunk_size == (chunk_size or 2048)
    model = MirasLM(config).double()
    ids = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(1))
    steps, full = _decode(model, ids)
    torch.testing.assert_close(steps, full, rtol=1e-9, atol=1e-9)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.loss(ids)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "W0" in n or "gates.lr.up.bias" in n}
    assert len(grads) == 2 * 4
    for name, g in grads.items():         # the step sizes reach the outputs only through an update
        ok = g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
        assert ok or (chunk_size is None and "lr" in name), name
    opt.step()
    assert model.loss(ids) < loss
    steps, full = _decode(model, ids)
    torch.testing.assert_close(steps, full, rtol=1e-6, atol=1e-6)
