"""Attention layer: equal to a naive softmax attention with loop RoPE (band mask for the window, persistent keys
unrotated); pieces with the KV-cache state (prefill + token-by-token decoding included) equal one call; bounded
windowed cache; config errors; gradients. With conv, the naive reference applies the convolution tap by tap."""
import math

import pytest
import torch

from miras.layers.attention import Attention
from miras.space import ConfigError

from .helpers import in_pieces, parameter_grads

CONFIGS = {"full": {}, "window": {"window": 4}, "persistent": {"persistent_tokens": 3}, "gqa": {"kv_heads": 2},
           "head_dim": {"heads": 3, "head_dim": 6}, "conv": {"conv": 4},
           "all": {"window": 3, "persistent_tokens": 2, "kv_heads": 1, "rope_theta": 500.0, "conv": 3}}
PIECES = {"decode": [5] + [1] * 7, "two-calls": [7, 5], "prefill-with-cache": [3, 9], "three-calls": [1, 6, 5],
          "empty-calls": [0, 7, 0, 5]}
T = 12


def _layer(dtype=torch.float64, seed=0, **cfg):
    torch.manual_seed(seed)
    layer = Attention(**{"d_model": 24, "heads": 4, **cfg}).to(dtype)
    with torch.no_grad():
        if layer.persistent_k is not None:                 # unit-scale persistent pairs: a visible contribution
            layer.persistent_k.normal_()
            layer.persistent_v.normal_()
        if layer.conv is not None:                         # a visible bias too
            layer.conv.bias.normal_()
    return layer


def _x(dtype=torch.float64, seed=1, length=T):
    return torch.randn(2, length, 24, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _naive_rope(x, theta):
    """x: [B, H, T, d] with channels (i, i + d/2) rotated by angle t * theta^(-2i/d), one (t, i) at a time."""
    out, d = x.clone(), x.shape[-1]
    for t in range(x.shape[2]):
        for i in range(d // 2):
            c, s = math.cos(t * theta ** (-2 * i / d)), math.sin(t * theta ** (-2 * i / d))
            out[..., t, i] = x[..., t, i] * c - x[..., t, i + d // 2] * s
            out[..., t, i + d // 2] = x[..., t, i] * s + x[..., t, i + d // 2] * c
    return out


def _naive_conv(layer, y):
    """y_t = bias + sum_{i < K} w_(K-1-i) y_(t-i) per channel, zeros before the first token."""
    w, K = layer.conv.weight[:, 0], layer.conv.kernel
    out = torch.zeros_like(y) + layer.conv.bias
    for t in range(y.shape[1]):
        for i in range(min(K, t + 1)):
            out[:, t] += w[:, K - 1 - i] * y[:, t - i]
    return out


def _naive(layer, x):
    """softmax(q k^T / sqrt(d) masked to s <= t (and t - s < window), persistent keys always seen) v, per head;
    q, k, v through the convolution first when the layer has one."""
    B, L, _ = x.shape
    H, d, G, theta = layer.heads, layer.head_dim, layer.kv_heads, layer.rope_theta
    split = lambda y, heads: y.view(B, L, heads, d).transpose(1, 2)  # noqa: E731
    q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
    if layer.conv is not None:
        q, k, v = _naive_conv(layer, torch.cat([q, k, v], -1)).split([H * d, G * d, G * d], -1)
    q, k, v = _naive_rope(split(q, H), theta), _naive_rope(split(k, G), theta), split(v, G)
    t, s = torch.arange(L)[:, None], torch.arange(L)
    band = (s <= t) & (t - s < (layer.window or L))
    heads = []
    for h in range(H):
        g = h // (H // G)
        scores = (q[:, h] @ k[:, g].mT / math.sqrt(d)).masked_fill(~band, -math.inf)
        values = v[:, g]
        if layer.persistent_k is not None:
            scores = torch.cat([q[:, h] @ layer.persistent_k[g].mT / math.sqrt(d), scores], dim=-1)
            values = torch.cat([layer.persistent_v[g].expand(B, -1, -1), values], dim=1)
        heads.append(scores.softmax(-1) @ values)
    return layer.o_proj(torch.stack(heads, dim=2).flatten(2))


@pytest.mark.parametrize("name", CONFIGS)
def test_equals_naive_softmax_attention(name):
    layer, x = _layer(**CONFIGS[name]), _x()
    torch.testing.assert_close(layer(x)[0], _naive(layer, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("pieces", PIECES)
@pytest.mark.parametrize("name", CONFIGS)
def test_pieces_with_state_equal_one_call(name, pieces):
    layer, x = _layer(**CONFIGS[name]), _x()
    y, state = layer(x)
    y_pieces, state_pieces = in_pieces(layer, x, PIECES[pieces])
    torch.testing.assert_close(y_pieces, y, rtol=0, atol=1e-12)
    assert state_pieces.pos.item() == state.pos.item() == T
    torch.testing.assert_close(state_pieces.k, state.k, rtol=0, atol=1e-12)
    if layer.conv is not None:
        assert state.conv.shape == (2, layer.conv.kernel - 1, layer.conv.weight.shape[0])
        torch.testing.assert_close(state_pieces.conv, state.conv, rtol=0, atol=1e-12)


def test_float32_by_default_and_pieces_close():
    layer, x = _layer(torch.float32, **CONFIGS["all"]), _x(torch.float32)
    y, state = layer(x)
    assert y.dtype == state.k.dtype == torch.float32
    torch.testing.assert_close(in_pieces(layer, x, PIECES["decode"])[0], y, rtol=0, atol=1e-5)
    torch.testing.assert_close(y.double(), _naive(layer.double(), x.double()), rtol=0, atol=1e-5)


def test_windowed_decoding_cache_stays_bounded():
    layer, x = _layer(window=4, persistent_tokens=2), _x(length=60)
    y, state = layer(x[:, :10])
    assert state.k.shape[2] == state.v.shape[2] == 3
    ys = [y]
    for t in range(10, 60):
        y, state = layer(x[:, t:t + 1], state)
        ys.append(y)
        assert state.k.shape == state.v.shape == (2, 4, 3, 6)
    assert state.pos.item() == 60
    torch.testing.assert_close(torch.cat(ys, dim=1), layer(x)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat(ys, dim=1), _naive(layer, x), rtol=0, atol=1e-12)


def test_window_one_sees_only_the_token_itself():
    layer, x = _layer(window=1), _x()
    y, state = in_pieces(layer, x, PIECES["two-calls"])
    torch.testing.assert_close(y, layer.o_proj(layer.v_proj(x)), rtol=0, atol=1e-12)
    assert state.k.shape[2] == 0


def test_full_attention_cache_keeps_every_token():
    layer, x = _layer(), _x()
    _, state = in_pieces(layer, x, PIECES["decode"])
    assert state.k.shape == (2, 4, T, 6)


@pytest.mark.parametrize("cfg,field", [
    ({"d_model": 30, "heads": 4}, "heads"), ({"window": 0}, "window"), ({"persistent_tokens": -1}, "persistent_tokens"),
    ({"kv_heads": 3}, "kv_heads"), ({"head_dim": 5}, "head_dim"), ({"rope_theta": 0.0}, "rope_theta"),
    ({"conv": -1}, "conv"), ({"conv": 2.5}, "conv"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: allowed "):
        Attention(**{"d_model": 24, "heads": 4, **cfg})


def test_gradients_reach_every_parameter_and_match_across_pieces():
    layer, x = _layer(**CONFIGS["all"]), _x()
    weights = torch.randn(2, T, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    whole = parameter_grads(layer, lambda: layer(x)[0], weights)
    pieces = parameter_grads(layer, lambda: in_pieces(layer, x, PIECES["decode"])[0], weights)
    assert set(whole) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "persistent_k",
                          "persistent_v", "conv.weight", "conv.bias"}
    for n, g in whole.items():
        assert g is not None and g.isfinite().all() and g.norm() > 0, n
        torch.testing.assert_close(pieces[n], g, rtol=0, atol=1e-11)
