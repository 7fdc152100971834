"""Moneta's Lq map W = c(A) A, c(A) = (r / ||A||_q)^gamma: form="paper" (gamma = q - 2, MIRAS Eq. 24 with radius 1) and
form="sphere" (gamma = 1, ||W||_q = r); the radius ("init" or a number); the normalizer frozen at a chunk's start;
b = 1 against the per-token equation; the chunked engine against the recurrent reference in float64."""
import math

import pytest
import torch

from miras.ops import recurrent_reference
from miras.ops.inputs import random_inputs
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.bias import Lp
from miras.space.memory import MLPMemory
from miras.space.algorithm import GD, Momentum
from miras.space.retention import LqNormalization

from ..ops.helpers import assert_engine_equals_reference

GATES = [LqNormalization(form="sphere", radius="init"), LqNormalization(form="sphere", radius=0.7),
         LqNormalization(form="paper", radius=1.0), LqNormalization(form="paper", radius="init"),
         LqNormalization(q=3.0, form="sphere", radius="init"), LqNormalization(q=3.0, form="paper", radius=2.0)]


def _A():
    gen = torch.Generator().manual_seed(0)
    return {"W1": torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64),
            "W2": torch.randn(2, 3, 4, 6, generator=gen, dtype=torch.float64)}


def _norm(a, q, eps):
    """The smoothed ||a||_q per matrix: (sum (a^2 + eps)^(q/2))^(1/q), [..., 1, 1]."""
    return (a * a + eps).pow(q / 2).sum((-2, -1), keepdim=True).pow(1 / q)


def _r(gate, out, n_in):
    if gate.radius == "init":
        moment = {4.0: 3.0, 3.0: 2 * math.sqrt(2 / math.pi)}[gate.q]            # E|z|^q, z ~ N(0, 1)
        return (out * n_in * moment) ** (1 / gate.q) / math.sqrt(n_in)
    return gate.radius


def _map(gate, a):
    """W = (r / ||A||_q)^gamma A, written out."""
    gamma = gate.q - 2 if gate.form == "paper" else 1.0
    return (_r(gate, *a.shape[-2:]) / _norm(a, gate.q, gate.eps)) ** gamma * a


def _rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def test_the_moneta_preset_keeps_the_q_norm_at_the_initialization_radius():
    spec = get_preset("moneta").spec
    assert isinstance(spec.retention, LqNormalization)
    assert (spec.retention.q, spec.retention.form, spec.retention.radius) == (4.0, "sphere", "init")
    assert isinstance(spec.bias, Lp) and spec.bias.p == 3.0 and spec.chunk_size == 16


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.describe())
def test_boundary_is_the_scaled_accumulator(gate):
    A = _A()
    W = gate.boundary(A)
    for n, a in A.items():
        torch.testing.assert_close(W[n], _map(gate, a), rtol=1e-12, atol=1e-14)


def test_paper_form_with_radius_one_is_miras_eq_24():
    """W = A / ||A||_q^(q-2) (MIRAS Eq. 24 as printed)."""
    A = _A()
    W = LqNormalization(q=4.0, form="paper", radius=1.0, eps=1e-14).boundary(A)
    for n, a in A.items():
        torch.testing.assert_close(W[n], a / a.abs().pow(4).sum((-2, -1), keepdim=True).pow(0.25) ** 2)


def test_sphere_keeps_the_q_norm_at_the_radius_and_ignores_the_accumulators_size():
    A = _A()
    for radius in (0.7, "init"):
        gate = LqNormalization(form="sphere", radius=radius, eps=0.0)
        W, W5 = gate.boundary(A), gate.boundary({n: 5.0 * a for n, a in A.items()})
        for n, a in A.items():
            r = torch.full(a.shape[:-2] + (1, 1), _r(gate, *a.shape[-2:]), dtype=a.dtype)
            torch.testing.assert_close(_norm(W[n], 4.0, 0.0), r)
            torch.testing.assert_close(W5[n], W[n])                   # degree 0: decay of A alone leaves W as it is


def test_paper_form_shrinks_the_memory_as_the_accumulator_grows():
    """Degree 3 - q: with q = 4, W(5 A) = W(A) / 5 (the suspect behind the slow learning, kept as an option)."""
    A = _A()
    gate = LqNormalization(q=4.0, form="paper", radius=1.0, eps=0.0)
    W, W5 = gate.boundary(A), gate.boundary({n: 5.0 * a for n, a in A.items()})
    for n in A:
        torch.testing.assert_close(W5[n], W[n] / 5.0)


def test_init_radius_is_the_q_norm_of_the_initialization():
    """r("init") for an [out, in] matrix is E-scale of ||N(0, 1/in)||_q: the memory's W0 maps to about itself."""
    gate = LqNormalization(radius="init")
    assert gate.r(128, 32) == pytest.approx((128 * 32 * 3.0) ** 0.25 / math.sqrt(32))
    W0 = MLPMemory(depth=2, expansion=4).init_state(8, 32, 32, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64)
    for n, w in W0.items():
        assert _norm(w, 4.0, 0.0).flatten() == pytest.approx([gate.r(*w.shape[-2:])] * 8, rel=0.05), n
        for form in ("sphere", "paper"):
            W = LqNormalization(form=form, radius="init").boundary({n: w})[n]
            assert _rel_err(W, w) < 0.05, (n, form)


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.describe())
def test_the_normalizer_is_frozen_at_the_chunk_start(gate):
    """Inside a chunk W_t = c(A_s) A_t (MIRAS section 5.4), not c(A_t) A_t."""
    A, gen = _A(), torch.Generator().manual_seed(1)
    frame = gate.frame(A)
    W_s, shared = gate.boundary_frame(A)
    for n, a in A.items():
        D = torch.randn(a.shape, generator=gen, dtype=a.dtype)
        c_s = _map(gate, a) / a
        torch.testing.assert_close(frame[n](a), W_s[n])
        torch.testing.assert_close(frame[n](a + D), c_s * (a + D))
        torch.testing.assert_close(shared[n](a + D), c_s * (a + D))
        assert _rel_err(frame[n](a + D), gate.boundary({n: a + D})[n]) > 1e-3


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.describe())
def test_the_scale_has_the_right_gradient(gate):
    a = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gate.boundary({"W1": x})["W1"], (a,))
    assert torch.autograd.gradgradcheck(lambda x: gate.boundary({"W1": x})["W1"], (a,))


@pytest.mark.parametrize("gate", GATES[:4], ids=lambda g: g.describe())
def test_online_moneta_is_the_per_token_equation(gate):
    """b = 1: A_t = alpha_t A_{t-1} - eta_t grad ||M_{W_{t-1}}(k_t) - v_t||_3^3 (autograd), W_t = c(A_t) A_t,
    y_t = M_{W_t}(q_t)."""
    spec = MirasSpec(get_preset("moneta").spec.memory, Lp(p=3.0), gate, GD(), chunk_size=1)
    q, k, v, gates, state = random_inputs(spec, batch=2, seqlen=7, heads=2, d_k=4)
    y, final = recurrent_reference(spec, q, k, v, gates, state)
    A = dict(state.A)
    for t in range(7):
        W = {n: _map(gate, a).requires_grad_() for n, a in A.items()}
        with torch.enable_grad():
            loss = spec.bias.loss(spec.memory(W, k[:, t, :, None]), v[:, t, :, None], {}).sum()
            g = dict(zip(W, torch.autograd.grad(loss, list(W.values()))))
        alpha, eta = gates["log_alpha"][:, t, :, None, None].exp(), gates["lr"][:, t, :, None, None]
        A = {n: alpha * a - eta * g[n] for n, a in A.items()}
        W = {n: _map(gate, a) for n, a in A.items()}
        torch.testing.assert_close(y[:, t], spec.memory(W, q[:, t, :, None])[:, :, 0], rtol=1e-10, atol=1e-12)
    for n, a in A.items():
        torch.testing.assert_close(final.A[n], a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gate", GATES[:4] + [LqNormalization(form="sphere", radius="init", boundary_at="every-token")],
                         ids=lambda g: g.describe())
@pytest.mark.parametrize("seqlen,chunk,algorithm", [(7, 4, GD()), (37, 8, Momentum()), (64, 16, GD())], ids=str)
def test_chunked_engine_equals_the_reference_with_every_gradient(gate, seqlen, chunk, algorithm):
    spec = MirasSpec(MLPMemory(depth=2, expansion=2, residual=True, norm=True), Lp(p=3.0), gate, algorithm,
                     chunk_size=chunk)
    assert_engine_equals_reference(spec, seqlen, batch=2, heads=2, d_k=4)


@pytest.mark.parametrize("kwargs,field", [({"form": "exact"}, "retention.form"), ({"radius": 0.0}, "retention.radius"),
                                          ({"radius": "n_in"}, "retention.radius"),
                                          ({"radius": True}, "retention.radius"),
                                          ({"q": 2.0, "form": "paper", "boundary_at": "every-token"},
                                           "retention.boundary_at")], ids=str)
def test_bad_fields_are_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.")):
        LqNormalization(**kwargs)


def test_sphere_with_q2_is_the_l2_sphere():
    A = _A()
    W = LqNormalization(q=2.0, form="sphere", radius=1.5, eps=0.0).boundary(A)
    for n, a in A.items():
        torch.testing.assert_close(W[n], 1.5 * a / a.norm(dim=(-2, -1), keepdim=True))


@pytest.mark.parametrize("gate", GATES, ids=lambda g: g.describe())
def test_scale_vjp_is_the_scales_gradient(gate):
    """scale_vjp (for hand-written backwards) equals autograd's gradient of scale."""
    a = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    c = gate.scale(a)
    dc = torch.randn(c.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (want,) = torch.autograd.grad(c, a, dc)
    torch.testing.assert_close(gate.scale_vjp(a.detach(), c.detach(), dc), want, rtol=1e-10, atol=1e-13)
