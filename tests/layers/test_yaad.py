"""Yaad's memory write carries outer gradients at the layer's default init (the Huber bias does not cut them)."""
import pytest
import torch
import torch.nn.functional as F

from miras.layers.memory import MemoryLayer
from miras.space import get_preset
from miras.space.bias import L2, Huber


def write_signal_sensitivity(bias) -> dict[str, float]:
    """Median |d <e, R> / d k| and |d <e, R> / d v| of the write's error signal e = bias.grad(M_W0(k), v, delta)
    (what the memory steps on), with q, k, v, delta and W0 as a default-initialized Yaad layer produces them."""
    torch.manual_seed(0)
    spec = get_preset("yaad").spec
    layer = MemoryLayer(spec, d_model=64, heads=2)
    x = torch.randn(2, 32, 64)
    with torch.no_grad():
        k, v = (layer.conv[n](layer.proj[n](x))[0].view(2, 32, 2, 32).transpose(1, 2) for n in "kv")
        delta = layer.gate_values(x)["delta"].transpose(1, 2)
        W0 = {n: w.expand(2, *w.shape) for n, w in layer.initial_state(2).A.items()}
    k, v = F.normalize(k, dim=-1).requires_grad_(), v.clone().requires_grad_()
    e = bias.grad(spec.memory(W0, k), v, {"delta": delta})
    R = torch.randn(e.shape, generator=torch.Generator().manual_seed(1))
    dk, dv = torch.autograd.grad((e * R).sum(), [k, v])
    return {"k": dk.abs().median().item(), "v": dv.abs().median().item()}


@pytest.mark.parametrize("form", ["norm", "coord"])
def test_yaad_write_keeps_gradients_wrt_k_and_v_at_default_init(form):
    """The literal switch (delta * sign(r) above the threshold, where a default init puts nearly every token) gives
    ~1e-6 of L2's sensitivity: outer gradients through the write vanish and Yaad does not learn MQAR. The
    continuous forms with the threshold in per-coordinate units keep a sizeable fraction."""
    l2 = write_signal_sensitivity(L2())
    got = write_signal_sensitivity(Huber(form=form))
    for name in ("k", "v"):
        assert got[name] > 0.25 * l2[name], (name, got[name], l2[name])


def test_yaad_preset_uses_the_measured_huber_form():
    """docs/design-space.md records the MQAR comparison that picked it."""
    assert get_preset("yaad").spec.bias == Huber(form="norm")
