"""TTT's inner step (arXiv 2407.04620 section 2.7): eta(x) = eta_base sigmoid(theta_lr . x) / head_dim on the half
loss 1/2 ||f(k) - v||^2 for its unnormalized keys (||k||^2 ~ head_dim); for this library's L2-normalized keys the same
move of the memory is eta_base sigmoid(theta_lr . x); eta_base = 1 (TTT-Linear) / 0.1 (TTT-MLP), the gate starting
at sigmoid(0).

Checked against the paper's update written with autograd: one token of the recurrent reference with the layer's
gates moves the memory to W0 - eta grad_W 1/2 ||f_W0(k) - v||^2."""
import pytest
import torch
import torch.nn.functional as F

from miras.layers.memory import MemoryLayer
from miras.models import MirasConfig
from miras.models.mixers import build_mixer
from miras.ops.reference import recurrent_reference
from miras.ops.state import initial_state
from miras.space import ConfigError, get_preset

D, H = 16, 2
HD = D // H


@pytest.mark.parametrize("preset, base", [("ttt-linear", 1.0), ("ttt-mlp", 0.1)])
def test_one_step_is_the_papers_update(preset, base):
    torch.manual_seed(0)
    spec = get_preset(preset).spec
    layer = MemoryLayer(spec, D, H, gate_rank=4, ttt_base_lr=base).double()
    with torch.no_grad():
        layer.gates["lr"].up.weight.normal_(0, 1.0)       # a data-dependent rate
    x = torch.randn(2, 1, D, dtype=torch.float64)
    k, v = (torch.randn(2, 1, H, HD, dtype=torch.float64) for _ in "kv")
    k = F.normalize(k, dim=-1)
    W0 = {n: w.detach().double() for n, w in layer.W0.items()}
    _, state = recurrent_reference(spec, k, k, v, layer.gate_values(x), initial_state(spec, 2, W0))

    eta = base * torch.sigmoid(layer.gates["lr"](x).detach())         # [2, 1, H], the paper's eta for unit keys
    W = {n: w.expand(2, *w.shape).clone().requires_grad_() for n, w in W0.items()}
    loss = 0.5 * (spec.memory(W, k.transpose(1, 2)) - v.transpose(1, 2)).pow(2).sum(-1)   # [2, H, 1]
    grads = torch.autograd.grad(loss.sum(), list(W.values()))   # rows and heads are independent
    for (name, w), g in zip(W.items(), grads):
        if name.startswith("ln_"):                           # TTT's LayerNorm gain and shift: outer parameters
            torch.testing.assert_close(state.A[name], w.detach(), rtol=0, atol=0, msg=name)
            continue
        want = w.detach() - eta[:, 0, :, None, None] * g
        torch.testing.assert_close(state.A[name], want, rtol=1e-6, atol=1e-7, msg=name)
        assert (state.A[name] - w).abs().max() > 1e-4        # the step is visible


def test_the_gate_starts_at_half_the_base_rate():
    layer = MemoryLayer(get_preset("ttt-linear").spec, D, H, ttt_base_lr=1.0)
    lr = layer.gate_values(torch.randn(1, 3, D))["lr"]
    torch.testing.assert_close(lr, torch.full_like(lr, 0.5 / 2))                  # up.weight starts at 0
    assert layer.lr_max == 1.0 / 2
    with pytest.raises(ConfigError, match="ttt_base_lr"):
        MemoryLayer(get_preset("ttt-linear").spec, D, H, ttt_base_lr=1.0, lr_max=0.1)
    with pytest.raises(ConfigError, match="ttt_base_lr"):
        MemoryLayer(get_preset("ttt-linear").spec, D, H, ttt_base_lr=0.0)


def test_ttt_presets_carry_the_papers_base_rates():
    got = {p: build_mixer(MirasConfig(preset=p, d_model=D, heads=H), "ttt").ttt_base_lr
           for p in ("ttt-linear", "ttt-mlp", "titans-lmm", "gated-deltanet")}
    assert got == {"ttt-linear": 1.0, "ttt-mlp": 0.1, "titans-lmm": None, "gated-deltanet": None}
    assert build_mixer(MirasConfig(preset="titans-lmm", d_model=D, heads=H), "memory").lr_max == 0.1
