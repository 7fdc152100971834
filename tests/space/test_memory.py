import pytest
import torch

from miras.space import ConfigError
from miras.space.memory import MLPMemory, matrix

MEMORIES = [matrix(), MLPMemory(depth=1), MLPMemory(depth=2), MLPMemory(depth=3, expansion=2, activation="silu"),
            MLPMemory(depth=2, residual=False, norm=False, activation="tanh"),
            MLPMemory(depth=2, expansion=2, activation="swiglu", residual=False, norm=False),
            MLPMemory(depth=2, expansion=1, activation="swiglu")]


def _weights(memory, d_k, d_v, gen):
    return {n: torch.randn(2, 3, o, i, generator=gen, dtype=torch.float64) / i ** 0.5
            for n, (o, i) in memory.shapes(d_k, d_v).items()}


@pytest.mark.parametrize("memory", MEMORIES, ids=lambda m: m.describe())
def test_closed_form_inner_backward_equals_autograd(memory):
    gen = torch.Generator().manual_seed(1)
    d_k = 6
    d_v = 6 if memory.residual else 4
    W = {n: w.requires_grad_() for n, w in _weights(memory, d_k, d_v, gen).items()}
    x = torch.randn(2, 3, 5, d_k, generator=gen, dtype=torch.float64)
    dpred = torch.randn(2, 3, 5, d_v, generator=gen, dtype=torch.float64)
    per_token = memory.grads(W, x, dpred)
    for n in range(5):  # gradient of token n alone
        auto = torch.autograd.grad((memory(W, x[:, :, n:n + 1]) * dpred[:, :, n:n + 1]).sum(), list(W.values()))
        for (name, g), a in zip(per_token.items(), auto):
            torch.testing.assert_close(g[:, :, n], a, rtol=1e-10, atol=1e-12, msg=f"{name} token {n}")


def test_matrix_memory_is_a_linear_map():
    gen = torch.Generator().manual_seed(2)
    W = {"W1": torch.randn(1, 1, 3, 4, generator=gen)}
    x = torch.randn(1, 1, 2, 4, generator=gen)
    torch.testing.assert_close(matrix()(W, x), x @ W["W1"][0, 0].T)
    assert matrix().state_size(4, 3) == 12
    assert MLPMemory(depth=2, expansion=4).state_size(8, 8) == 2 * 8 * 32


@pytest.mark.parametrize("kwargs,field", [({"depth": 0}, "memory.depth"), ({"expansion": 0}, "memory.expansion"),
                                          ({"activation": "relu6"}, "memory.activation"),
                                          ({"activation": "swiglu", "depth": 3}, "memory.depth")])
def test_invalid_memory_raises_with_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        MLPMemory(**kwargs)


def test_residual_needs_equal_dims():
    with pytest.raises(ConfigError, match=r"memory\.residual.*d_k \(4\) != d_v \(3\)"):
        MLPMemory().shapes(4, 3)


def test_swiglu_memory_is_lacts_fast_weight_function():
    """f(x) = W2 (silu(W1 x) * (W3 x)), W1 / W3 [h, d_k], W2 [d_v, h] (arXiv 2505.23884)."""
    memory = MLPMemory(depth=2, expansion=2, activation="swiglu", residual=False, norm=False)
    assert memory.shapes(4, 3) == {"W1": (8, 4), "W2": (3, 8), "W3": (8, 4)} and memory.state_size(4, 3) == 88
    gen = torch.Generator().manual_seed(3)
    W = _weights(memory, 4, 3, gen)
    x = torch.randn(2, 3, 5, 4, generator=gen, dtype=torch.float64)
    want = (torch.nn.functional.silu(x @ W["W1"].mT) * (x @ W["W3"].mT)) @ W["W2"].mT
    torch.testing.assert_close(memory(W, x), want, rtol=1e-12, atol=1e-12)
