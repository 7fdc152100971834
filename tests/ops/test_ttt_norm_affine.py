"""TTT's inner LayerNorm with a learned per-head gain and shift (MLPMemory(norm_affine=True), the TTT presets):
f(k) = k + gamma * LN(W k) + beta, gamma and beta outer parameters the inner loop never moves.

The recurrent reference against the loss written out here with torch's own layer_norm, and the mini-batch engine
against the reference with a gain and shift away from their init (outputs, state, every gradient)."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from miras.layers.memory import MemoryLayer
from miras.ops import recurrent_reference
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk_minibatch
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.bias import L2
from miras.space.memory import MLPMemory
from miras.space.algorithm import GD, Momentum
from miras.space.retention import Decay, NoRetention

from .helpers import rel_err


def _moved(state, seed=3):
    """The state with gain and shift away from 1 and 0."""
    gen = torch.Generator().manual_seed(seed)
    A = dict(state.A)
    for name in ("ln_weight", "ln_bias"):
        A[name] = A[name] + 0.5 * torch.randn(A[name].shape, generator=gen, dtype=A[name].dtype)
    state.A = A
    return state


def _ttt(W, x, eps):
    """TTT's f(x) = x + gamma LN(body(x)) + beta per head, with torch's layer_norm. x [B, H, n, d]."""
    h = x
    layers = sorted(n for n in W if n.startswith("W"))
    for i, name in enumerate(layers):
        h = h @ W[name].transpose(-1, -2)
        if i < len(layers) - 1:
            h = F.gelu(h)
    gamma, beta = W["ln_weight"][..., 0], W["ln_bias"][..., 0]                       # [B, H, d]
    out = torch.stack([torch.stack([F.layer_norm(h[b, j], h.shape[-1:], gamma[b, j], beta[b, j], eps)
                                    for j in range(h.shape[1])]) for b in range(h.shape[0])])
    return x + out


@pytest.mark.parametrize("name", ["ttt-linear", "ttt-mlp"])
def test_reference_steps_on_ttts_loss_and_keeps_gain_and_shift(name):
    spec = replace(get_preset(name).spec, algorithm=GD())        # the plain step (token weights: their own tests)
    assert spec.memory.norm_affine
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=3, heads=2, d_k=4)
    state = _moved(state)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    W = dict(state.A)                                          # b = 16: every token steps from the start memory
    ys, A = [], dict(state.A)
    for t in range(3):
        Wg = {n: w.clone().requires_grad_() for n, w in W.items()}
        loss = (_ttt(Wg, k[:, t, :, None], spec.memory.norm_eps) - v[:, t, :, None]).pow(2).sum()
        g = dict(zip(Wg, torch.autograd.grad(loss, list(Wg.values()))))
        eta = gates["lr"][:, t, :, None, None]
        A = {n: A[n] - eta * g[n] if n.startswith("W") else A[n] for n in A}
        ys.append(_ttt(A, q[:, t, :, None], spec.memory.norm_eps)[:, :, 0])
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=1e-10, atol=1e-12)
    for n in A:
        torch.testing.assert_close(final.A[n], A[n], rtol=1e-10, atol=1e-12, msg=n)
    assert torch.equal(final.A["ln_weight"], state.A["ln_weight"])


@pytest.mark.parametrize("spec", [get_preset("ttt-linear").spec.with_chunk_size(4),
                                  MirasSpec(MLPMemory(depth=2, expansion=2, norm_affine=True), L2(), NoRetention(),
                                            Momentum(), chunk_size=4)], ids=["ttt-linear", "mlp2+momentum"])
@pytest.mark.parametrize("seqlen", [7, 13])
def test_engine_equals_reference_with_a_learned_gain_and_shift(spec, seqlen):
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=seqlen, heads=2, d_k=4, requires_grad=True)
    state = _moved(state)
    leaves = {"q": q, "k": k, "v": v, **gates, **{f"A.{n}": a for n, a in state.A.items()}}
    for leaf in leaves.values():
        if not leaf.requires_grad:
            leaf.requires_grad_()
    results = []
    for fn in (recurrent_reference, chunk_minibatch):
        y, final = fn(spec, q, k, v, gates, state)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
        loss = (y * w).sum() + sum(a.sum() for a in final.A.values())
        grads = torch.autograd.grad(loss, list(leaves.values()))
        results.append({"y": y, **final.tensors(), **{f"d{n}": g for n, g in zip(leaves, grads)}})
    ref, fast = results
    assert ref["dA.ln_weight"].abs().max() > 0 and ref["dA.ln_bias"].abs().max() > 0
    for key in ref:
        assert rel_err(fast[key], ref[key]) <= 1e-9, key


def test_gain_and_shift_need_a_norm_and_no_retention():
    with pytest.raises(ConfigError, match="norm_affine"):
        MLPMemory(depth=1, norm=False, norm_affine=True)
    with pytest.raises(ConfigError, match="norm_affine"):
        MirasSpec(MLPMemory(norm_affine=True), L2(), Decay(), GD())


def test_a_ttt_layer_learns_gain_and_shift_from_one():
    layer = MemoryLayer(get_preset("ttt-linear").spec, 16, 2)
    assert torch.equal(layer.W0["ln_weight"], torch.ones(2, 8, 1))
    assert torch.equal(layer.W0["ln_bias"], torch.zeros(2, 8, 1))
    layer(torch.randn(2, 5, 16))[0].pow(2).sum().backward()
    assert layer.W0["ln_weight"].grad.abs().max() > 0 and layer.W0["ln_bias"].grad.abs().max() > 0
