"""Mamba-2 block: its SSD part equals a per-token loop of the recurrence (inputs taken from the module by hooks);
pieces with the state (prefill + token-by-token decoding included) equal one call; Mamba-2's initialization;
fp32 states; config errors; gradients."""
import pytest
import torch
import torch.nn.functional as F

from miras.layers.mamba2 import Mamba2
from miras.space import ConfigError

from .helpers import in_pieces, parameter_grads

CONFIGS = {"groups1": {}, "groups2": {"ngroups": 2}, "kernel2-chunk3": {"conv_kernel": 2, "chunk_size": 3}}
PIECES = {"decode": [6] + [1] * 7, "two-calls": [5, 8], "three-calls": [1, 9, 3]}
T = 13


def _layer(dtype=torch.float64, seed=0, **cfg):
    """A small block with larger steps and slower decays than the defaults, so that the state is far from 0."""
    torch.manual_seed(seed)
    return Mamba2(**{"d_model": 16, "d_state": 8, "headdim": 8, "chunk_size": 4, "dt_min": 0.05, "dt_max": 0.5,
                     "A_init_range": (0.5, 2.0), **cfg}).to(dtype)


def _x(dtype=torch.float64, seed=1):
    return torch.randn(2, T, 16, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _with_loop_ssd(layer, x, state):
    """Runs the layer and, from its in_proj and conv outputs (hooks), the rest of the block with the SSD as the
    per-token loop h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = C_t h_t + D x_t (head i reads group
    i // (H / G)), then RMSNorm(y * SiLU(z)) * weight and out_proj. Returns (module y, module h, loop y, loop h)."""
    seen = {}
    hooks = [layer.in_proj.register_forward_hook(lambda m, i, out: seen.update(proj=out)),
             layer.conv.register_forward_hook(lambda m, i, out: seen.update(conv=out[0]))]
    y, new_state = layer(x, state)
    for hook in hooks:
        hook.remove()
    H, P, G, N, E = layer.nheads, layer.headdim, layer.ngroups, layer.d_state, layer.d_inner
    z, dt = seen["proj"][..., :E], F.softplus(seen["proj"][..., -H:] + layer.dt_bias)
    xs, B, C = seen["conv"].split([E, G * N, G * N], dim=-1)
    xs, B, C = xs.unflatten(-1, (H, P)), B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N))
    A, group = -layer.A_log.exp(), [i // (H // G) for i in range(H)]
    h = torch.zeros(x.shape[0], H, P, N, dtype=x.dtype) if state is None else state.ssm
    ys = []
    for t in range(x.shape[1]):
        write = (dt[:, t, :, None] * xs[:, t])[..., None] * B[:, t, group, None]       # dt x B^T: [b, H, P, N]
        h = torch.exp(dt[:, t] * A)[..., None, None] * h + write
        ys.append((h * C[:, t, group, None]).sum(-1) + layer.D[:, None] * xs[:, t])
    gated = torch.stack(ys, dim=1).flatten(2) * F.silu(z)
    normed = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
    return y, new_state.ssm, layer.out_proj(normed), h


@pytest.mark.parametrize("name", CONFIGS)
def test_ssd_part_is_the_per_token_recurrence(name):
    layer, x = _layer(**CONFIGS[name]), _x()
    with torch.no_grad():
        layer.D.normal_()                                                # D != 1 so the skip is checked too
    y1, h1, y1_loop, h1_loop = _with_loop_ssd(layer, x[:, :7], None)
    _, state = layer(x[:, :7])
    y2, h2, y2_loop, h2_loop = _with_loop_ssd(layer, x[:, 7:], state)   # from a nonzero state
    for got, want in [(y1, y1_loop), (h1, h1_loop), (y2, y2_loop), (h2, h2_loop)]:
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-13)
    assert h2.abs().max() > 1e-2                                        # the state is far from 0


@pytest.mark.parametrize("pieces", PIECES)
@pytest.mark.parametrize("name", CONFIGS)
def test_pieces_with_state_equal_one_call(name, pieces):
    layer, x = _layer(**CONFIGS[name]), _x()
    y, state = layer(x)
    y_pieces, state_pieces = in_pieces(layer, x, PIECES[pieces])
    torch.testing.assert_close(y_pieces, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(state_pieces.ssm, state.ssm, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(state_pieces.conv, state.conv, rtol=0, atol=1e-12)


def test_float32_by_default_with_fp32_state_and_pieces_close():
    layer, x = _layer(torch.float32), _x(torch.float32)
    y, state = layer(x)
    assert y.dtype == state.ssm.dtype == torch.float32 and state.ssm.shape == (2, 4, 8, 8)
    assert state.conv.shape == (2, 3, 32 + 2 * 8)
    torch.testing.assert_close(in_pieces(layer, x, PIECES["decode"])[0], y, rtol=0, atol=1e-5)


def test_bfloat16_activations_keep_an_fp32_ssm_state():
    layer, x = _layer(torch.bfloat16), _x(torch.bfloat16)
    y, state = in_pieces(layer, x, PIECES["decode"])
    assert y.dtype == torch.bfloat16 and state.ssm.dtype == torch.float32
    want = _layer(torch.float64)(x.double())[0]
    assert ((y.double() - want).norm() / want.norm()).item() < 5e-2


def test_mamba2_initialization():
    layer = Mamba2(64, headdim=8, dt_min=0.002, dt_max=0.05, A_init_range=(2, 8)).double()
    dt, A = F.softplus(layer.dt_bias), -layer.A_log.exp()
    assert layer.nheads == 16 and dt.min() >= 0.002 - 1e-12 and dt.max() <= 0.05 + 1e-12
    assert dt.log().std() > 0.3                                          # log-uniform, not a constant
    assert A.min() >= -8 - 1e-12 and A.max() <= -2 + 1e-12
    assert torch.equal(layer.D, torch.ones(16, dtype=torch.float64))
    assert torch.equal(layer.norm.weight, torch.ones(128, dtype=torch.float64))
    no_decay = {n for n, p in layer.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert no_decay == {"dt_bias", "A_log", "D"}
    assert layer.in_proj.weight.shape == (2 * 128 + 2 * 128 + 16, 64) and layer.out_proj.weight.shape == (64, 128)


@pytest.mark.parametrize("cfg,field", [
    ({"headdim": 12}, "headdim"), ({"ngroups": 3}, "ngroups"), ({"d_state": 0}, "d_state"),
    ({"conv_kernel": 0}, "conv_kernel"), ({"chunk_size": 0}, "chunk_size"), ({"dt_min": 0.0}, "dt_min, dt_max"),
    ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min, dt_max"), ({"A_init_range": (0, 4)}, "A_init_range"),
    ({"expand": 0}, "expand"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_config_errors_name_the_field(cfg, field):
    with pytest.raises(ConfigError, match=rf"^{field}=.* is invalid: allowed "):
        Mamba2(**{"d_model": 16, "d_state": 8, "headdim": 8, **cfg})


def test_gradients_reach_every_parameter_and_match_across_pieces():
    layer, x = _layer(ngroups=2), _x()
    weights = torch.randn(2, T, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    whole = parameter_grads(layer, lambda: layer(x)[0], weights)
    pieces = parameter_grads(layer, lambda: in_pieces(layer, x, PIECES["decode"])[0], weights)
    assert set(whole) == {"in_proj.weight", "conv.weight", "conv.bias", "dt_bias", "A_log", "D", "norm.weight",
                          "out_proj.weight"}
    for n, g in whole.items():
        assert g is not None and g.isfinite().all() and g.norm() > 0, n
        torch.testing.assert_close(pieces[n], g, rtol=0, atol=1e-11)
