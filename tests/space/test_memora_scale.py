"""Memora's scale c (MIRAS Eq. 21: W = c Softmax(...), rows on the simplex scaled by c): the boundary, the in-chunk
map, the paper's per-token mirror descent, and the chunked engine against the recurrent reference."""
import math

import pytest
import torch

from miras.ops import recurrent_reference
from miras.ops.inputs import random_inputs
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.bias import L2
from miras.space.memory import MLPMemory
from miras.space.algorithm import GD, Momentum
from miras.space.retention import KLSoftmax

from ..ops.helpers import assert_engine_equals_reference

SCALES = [1.0, 3.0, "n_in", "sqrt_n_in"]


def _A():
    gen = torch.Generator().manual_seed(0)
    return {"W1": torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64),
            "W2": torch.randn(2, 3, 4, 6, generator=gen, dtype=torch.float64)}


def _rel_err(a, b):
    """||a - b|| / ||b||, as the engine tests measure it."""
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _c(scale, n_in):
    return {"n_in": n_in, "sqrt_n_in": math.sqrt(n_in)}.get(scale, scale)


def test_the_memora_preset_uses_c_equal_to_the_row_length():
    retention = get_preset("memora").spec.retention
    assert isinstance(retention, KLSoftmax) and retention.scale == "n_in"
    W = retention.boundary(_A())
    for w in W.values():
        torch.testing.assert_close(w.sum(-1), torch.full(w.shape[:-1], float(w.shape[-1]), dtype=w.dtype))
        torch.testing.assert_close(w.mean(), torch.tensor(1.0, dtype=w.dtype))   # entries O(1)


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_boundary_is_c_times_the_row_softmax(scale):
    A = _A()
    W = KLSoftmax(scale=scale).boundary(A)
    for n, a in A.items():
        torch.testing.assert_close(W[n], _c(scale, a.shape[-1]) * torch.softmax(a, -1))


@pytest.mark.parametrize("scale", SCALES, ids=str)
def test_jacobian_map_is_the_derivative_of_c_softmax_at_a_uniform_row_and_keeps_row_sums(scale):
    A, gen = _A(), torch.Generator().manual_seed(1)
    gate = KLSoftmax(scale=scale)
    frame = gate.frame(A)
    for n, a in A.items():
        D = torch.randn(a.shape, generator=gen, dtype=a.dtype)
        c, n_in = _c(scale, a.shape[-1]), a.shape[-1]
        torch.testing.assert_close(frame[n](a), gate.boundary(A)[n])
        torch.testing.assert_close(frame[n](a + D), gate.boundary(A)[n] + c * (D - D.mean(-1, keepdim=True)) / n_in)
        torch.testing.assert_close(frame[n](a + D).sum(-1), torch.full(a.shape[:-1], float(c), dtype=a.dtype))
        # at a uniform row it is the first-order term of c softmax
        zero = torch.zeros_like(a)
        eps = 1e-6
        exact = (_c(scale, n_in) * (torch.softmax(zero + eps * D, -1) - torch.softmax(zero, -1))) / eps
        got = (KLSoftmax(scale=scale).frame({n: zero})[n](zero + eps * D) - KLSoftmax(scale=scale).boundary({n: zero})[n]) / eps
        torch.testing.assert_close(got, exact, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", ["n_in", "sqrt_n_in", 2.5], ids=str)
def test_online_memora_is_the_papers_scaled_mirror_descent(scale):
    """b = 1: W_t = c Softmax(alpha_t log W_{t-1} - eta_t grad l(W_{t-1}; k_t, v_t)) (MIRAS Eq. 21 / 27)."""
    spec = MirasSpec(MLPMemory(depth=2), L2(), KLSoftmax(scale=scale), GD(), chunk_size=1)
    q, k, v, gates, state = random_inputs(spec, batch=1, seqlen=6, heads=1, d_k=4)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    W = {n: _c(scale, a.shape[-1]) * torch.softmax(a, -1) for n, a in state.A.items()}
    for t in range(6):
        kt = k[:, t].unsqueeze(2)
        g = spec.memory.grads(W, kt, spec.bias.grad(spec.memory(W, kt), v[:, t].unsqueeze(2)))
        a, eta = gates["log_alpha"][:, t].exp()[..., None, None], gates["lr"][:, t][..., None, None]
        W = {n: _c(scale, w.shape[-1]) * torch.softmax(a * W[n].log() - eta * g[n][:, :, 0], -1) for n, w in W.items()}
        torch.testing.assert_close(y[:, t], spec.memory(W, q[:, t].unsqueeze(2)).squeeze(2), rtol=1e-10, atol=1e-12)
    for n, w in spec.retention.boundary(final.A).items():
        torch.testing.assert_close(w.sum(-1), torch.full_like(w.sum(-1), _c(scale, w.shape[-1])))


@pytest.mark.parametrize("retention", [KLSoftmax(scale="n_in"), KLSoftmax(scale="sqrt_n_in"),
                                       KLSoftmax(scale="n_in", in_chunk="identity"),
                                       KLSoftmax(scale="n_in", boundary_at="every-token")], ids=lambda r: r.describe())
@pytest.mark.parametrize("seqlen,chunk", [(7, 4), (37, 8), (64, 16)], ids=str)
def test_chunked_engine_equals_the_reference_with_c(retention, seqlen, chunk):
    spec = MirasSpec(MLPMemory(depth=2, expansion=2), L2(), retention, Momentum(), chunk_size=chunk)
    assert_engine_equals_reference(spec, seqlen, batch=2, heads=2, d_k=4)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), "n", True], ids=str)
def test_bad_scale_is_a_config_error(scale):
    with pytest.raises(ConfigError, match="retention.scale"):
        KLSoftmax(scale=scale)
