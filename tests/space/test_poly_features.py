"""ATLAS's polynomial feature map (space/memory.py `poly_features`, MLPMemory(features="poly")): its kernel, its
size, and the memory layer that lifts q and k with learnable coefficients."""
import math

import pytest
import torch

from miras.layers.memory import MemoryLayer
from miras.space import ConfigError, MirasSpec
from miras.space.algorithm import GD
from miras.space.bias import DotProduct
from miras.space.memory import MLPMemory, feature_dim, matrix, poly_features, poly_scale_init
from miras.space.retention import NoRetention


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_features_give_the_polynomial_kernel(degree):
    """<phi(x), phi(y)> = sum_i c_i^2 <x, y>^i, with C(d + p, p) features (the monomials of degree <= p)."""
    gen = torch.Generator().manual_seed(degree)
    x, y = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    scale = torch.randn(degree + 1, generator=gen, dtype=torch.float64)
    px, py = poly_features(x, scale), poly_features(y, scale)
    assert px.shape == (3, 5, math.comb(7 + degree, degree)) == (3, 5, feature_dim(matrix(features="poly",
                                                                                        degree=degree), 7))
    dot = (x * y).sum(-1)
    want = sum(scale[i] ** 2 * dot ** i for i in range(degree + 1))
    torch.testing.assert_close((px * py).sum(-1), want, rtol=1e-12, atol=1e-12)


def test_the_initial_coefficients_give_the_taylor_series_of_exp():
    scale = poly_scale_init(2, torch.float64)
    torch.testing.assert_close(scale ** 2, torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64))
    x, y = torch.nn.functional.normalize(torch.randn(2, 4, 16, dtype=torch.float64), dim=-1)
    dot = (x * y).sum(-1)
    torch.testing.assert_close((poly_features(x, scale) * poly_features(y, scale)).sum(-1), 1 + dot + dot ** 2 / 2)


def test_features_are_differentiable_in_the_input_and_the_coefficients():
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    scale = poly_scale_init(3, torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(poly_features, (x, scale))


def test_memory_options_are_checked():
    assert MLPMemory(residual=False, features="poly").shapes(feature_dim(matrix(features="poly"), 8), 8) == \
        {"W1": (32, 45), "W2": (8, 32)}                 # hidden width 4 x d_v, not 4 x the 45 features
    with pytest.raises(ConfigError, match=r"^memory\.residual=True is invalid: allowed False with features='poly'"):
        MLPMemory(features="poly")
    with pytest.raises(ConfigError, match=r"^memory\.features='cubic' is invalid"):
        matrix(features="cubic")
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match=r"^memory\.degree=.* is invalid: allowed an integer >= 1"):
            matrix(features="poly", degree=bad)


def _layers(scale):
    """A linear-attention layer on polynomial features (scale set) and the same layer on the plain keys."""
    spec = MirasSpec(matrix(features="poly"), DotProduct(), NoRetention(), GD())
    torch.manual_seed(0)
    poly = MemoryLayer(spec, d_model=16, heads=2).double()
    plain = MemoryLayer(MirasSpec(matrix(), DotProduct(), NoRetention(), GD()), d_model=16, heads=2).double()
    shared = {n: p for n, p in poly.state_dict().items() if not n.startswith(("W0.", "poly_scale"))}
    plain.load_state_dict({**plain.state_dict(), **shared})
    with torch.no_grad():
        poly.poly_scale.copy_(torch.tensor(scale, dtype=torch.float64))
    return poly, plain


def test_the_layer_lifts_q_and_k():
    """With c = (0, 1, 0) the features are (0, k, 0): linear attention on them is linear attention on k. With the
    default coefficients the outputs differ, and the coefficients get a gradient."""
    poly, plain = _layers([0.0, 1.0, 0.0])
    assert poly.W0["W1"].shape == (2, 8, 45) and poly.key_dim == 45
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    torch.testing.assert_close(poly(x)[0], plain(x)[0], rtol=1e-12, atol=1e-12)
    poly, plain = _layers(poly_scale_init(2).tolist())
    y = poly(x)[0]
    assert (y - plain(x)[0]).abs().max() > 1e-3
    (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), poly.poly_scale)
    assert g.abs().min() > 0
