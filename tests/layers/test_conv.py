"""ShortConv: the causal depthwise convolution against its definition, y_t = sum_i w_i x_{t-i} + b (then SiLU), and
its one-token path (T = 1, decoding: a K-tap dot product, no conv1d) against the whole-sequence call."""
import pytest
import torch
import torch.nn.functional as F

from miras.layers.conv import ShortConv
from tests.layers.helpers import in_pieces


def make(kernel: int, activation: bool, channels: int = 6) -> ShortConv:
    torch.manual_seed(0)
    conv = ShortConv(channels, kernel, activation).double()
    with torch.no_grad():
        conv.bias.normal_()
    return conv


def by_definition(conv: ShortConv, x, state):
    """y_t = sum_{i<K} w[:, K-1-i] x_{t-i} + b over [state, x], a loop over taps and tokens."""
    full = torch.cat([state, x], dim=1)
    K, T = conv.kernel, x.shape[1]
    w = conv.weight[:, 0]                                                   # [C, K]: w[:, K - 1] multiplies x_t
    y = torch.stack([sum(w[:, j] * full[:, t + j] for j in range(K)) + conv.bias for t in range(T)], dim=1)
    return F.silu(y) if conv.activation else y


@pytest.mark.parametrize("kernel, activation", [(4, True), (4, False), (2, True), (1, True)])
def test_one_token_calls_equal_the_definition_and_the_whole_sequence(kernel, activation):
    conv = make(kernel, activation)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 6, generator=gen, dtype=torch.float64)
    state = torch.randn(2, kernel - 1, 6, generator=gen, dtype=torch.float64)
    whole, whole_state = conv(x, state)
    torch.testing.assert_close(whole, by_definition(conv, x, state), rtol=1e-12, atol=1e-12)
    ys, s = [], state
    for t in range(x.shape[1]):                                             # the T = 1 path, state carried
        y, s = conv(x[:, t:t + 1], s)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), whole, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(s, whole_state, rtol=0, atol=0)
    pieces, piece_state = in_pieces(conv, x, [1, 3, 1, 1, 3])                # T = 1 between longer calls, from
    fresh, fresh_state = conv(x)                                            # no state (zeros)
    torch.testing.assert_close(pieces, fresh, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(piece_state, fresh_state, rtol=0, atol=0)


def test_one_token_call_from_no_state_and_its_gradients_equal_conv1d():
    conv = make(4, True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 6, generator=gen, dtype=torch.float64)
    state = torch.randn(3, 3, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 1, 6, generator=gen, dtype=torch.float64)
    y0, s0 = conv(x, None)                                                  # zeros before the first token
    torch.testing.assert_close(y0, by_definition(conv, x, x.new_zeros(3, 3, 6)), rtol=1e-13, atol=1e-13)
    assert s0.shape == (3, 3, 6) and torch.equal(s0[:, -1:], x)
    grads = []
    for run in (lambda a, s: conv(a, s)[0],                                 # the one-token path
                lambda a, s: conv(torch.cat([a, a.new_zeros(3, 1, 6)], dim=1), s)[0][:, :1]):   # conv1d (T = 2)
        leaves = [x.clone().requires_grad_(), state.clone().requires_grad_()]
        out = run(*leaves)
        grads.append(torch.autograd.grad((out * w).sum(), [*leaves, conv.weight, conv.bias]))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
