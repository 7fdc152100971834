import pytest
import torch

from miras.space import ConfigError
from miras.space.bias import L2, DotProduct, Huber, Lp, ValueShiftRobustL2

BIASES = [DotProduct(), L2(), Lp(p=3.0), Lp(p=1.5), Huber(form="switch"), Huber(form="norm"), Huber(form="coord"),
          ValueShiftRobustL2(shift=0.3)]


@pytest.mark.parametrize("bias", BIASES, ids=lambda b: b.describe())
def test_closed_form_grad_equals_autograd_of_loss(bias):
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    # thresholds around the residual norms so that both Huber branches are taken
    delta = (pred - v).detach().norm(dim=-1) * torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    if getattr(bias, "form", "switch") != "switch":  # thresholds in units of one coordinate of r
        delta = delta / 8 ** 0.5
    (auto,) = torch.autograd.grad(bias.loss(pred, v, {"delta": delta}).sum(), pred)
    torch.testing.assert_close(bias.grad(pred, v, {"delta": delta}), auto, rtol=1e-10, atol=1e-12)


def test_huber_switches_between_l2_and_scaled_l1():
    pred = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)  # residual norms 5 and 0.5
    v = torch.zeros_like(pred)
    delta = torch.tensor([1.0, 1.0], dtype=torch.float64)
    g = Huber(form="switch", eps=1e-12).grad(pred, v, {"delta": delta})
    torch.testing.assert_close(g[0], torch.tensor([1.0, 1.0], dtype=torch.float64))  # delta * sign(r)
    torch.testing.assert_close(g[1], torch.tensor([0.6, 0.8], dtype=torch.float64))  # 2 r


def test_continuous_huber_forms_clip_the_l2_gradient():
    pred = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)  # residual norms 5 and 0.5
    v = torch.zeros_like(pred)
    delta = torch.tensor([1.0, 1.0], dtype=torch.float64) / 2 ** 0.5      # norm threshold delta sqrt(2) = 1
    g = Huber(form="norm", eps=1e-12).grad(pred, v, {"delta": delta})
    torch.testing.assert_close(g[0], torch.tensor([1.2, 1.6], dtype=torch.float64))  # 2 * 1 * r / |r|
    torch.testing.assert_close(g[1], torch.tensor([0.6, 0.8], dtype=torch.float64))  # 2 r
    g = Huber(form="coord").grad(pred, v, {"delta": torch.tensor([1.0, 0.35], dtype=torch.float64)})
    torch.testing.assert_close(g, torch.tensor([[2.0, 2.0], [0.6, 0.7]], dtype=torch.float64))  # clamp(2r, +-2 delta)


@pytest.mark.parametrize("form", ["norm", "coord"])
def test_continuous_huber_forms_are_continuous_at_the_threshold(form):
    r = torch.tensor([0.6, 0.8], dtype=torch.float64)
    delta = torch.tensor(1.0 / 2 ** 0.5 if form == "norm" else 0.8, dtype=torch.float64)
    bias = Huber(form=form, eps=1e-14)
    below, above = (bias.grad(r * s, torch.zeros_like(r), {"delta": delta}) for s in (1 - 1e-9, 1 + 1e-9))
    torch.testing.assert_close(below, above, rtol=1e-7, atol=1e-7)
    jump = Huber(form="switch", eps=1e-14)
    one = torch.tensor(1.0, dtype=torch.float64)
    below, above = (jump.grad(r * s, torch.zeros_like(r), {"delta": one}) for s in (1 - 1e-9, 1 + 1e-9))
    assert (above - below).norm() > 0.5                                   # the literal switch jumps


def test_lp_matches_unsmoothed_away_from_zero():
    r = torch.tensor([2.0, -0.5], dtype=torch.float64)
    g = Lp(p=3.0, eps=1e-12).grad(r, torch.zeros_like(r))
    torch.testing.assert_close(g, 3.0 * torch.sign(r) * r.abs() ** 2)


def test_robust_l2_is_worst_case_over_value_shifts():
    r = torch.tensor([0.6, 0.8], dtype=torch.float64)  # norm 1
    loss = ValueShiftRobustL2(shift=0.5, eps=1e-12).loss(r, torch.zeros_like(r))
    assert loss.item() == pytest.approx(2.25)  # the shift -0.5 r/|r| is the worst: (1 + 0.5)^2


@pytest.mark.parametrize("make", [lambda: Lp(p=0.5), lambda: Lp(eps=0.0), lambda: ValueShiftRobustL2(shift=-1),
                                  lambda: Huber(form="l1")])
def test_invalid_bias_raises_with_field(make):
    with pytest.raises(ConfigError, match=r"bias\.\w+=.*allowed"):
        make()


@pytest.mark.parametrize("bias", BIASES, ids=lambda b: b.describe())
def test_grad_vjp_is_the_derivative_of_grad(bias):
    """grad_vjp (a closed form, or autograd through grad) equals autograd's vector-Jacobian product of grad, for
    pred and for the bias' gates."""
    from miras.space.bias import grad_vjp
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    delta = (pred - v).detach().norm(dim=-1) * torch.linspace(0.5, 1.5, 5, dtype=torch.float64)   # both branches
    if getattr(bias, "form", "switch") != "switch":
        delta = delta / 8 ** 0.5
    delta.requires_grad_(True)
    gates = {name: delta for name in bias.gates}
    cot = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
    d_pred, d_gates = grad_vjp(bias, pred.detach(), v, {n: g.detach() for n, g in gates.items()}, cot)
    e = bias.grad(pred, v, gates)
    auto = (torch.autograd.grad(e, (pred, *gates.values()), cot, allow_unused=True, materialize_grads=True)
            if e.requires_grad else (torch.zeros_like(pred),))             # (the dot product's -v)
    torch.testing.assert_close(d_pred, auto[0], rtol=1e-10, atol=1e-12)
    for name, want in zip(gates, auto[1:]):
        torch.testing.assert_close(d_gates[name], want, rtol=1e-10, atol=1e-12)
