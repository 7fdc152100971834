"""Every registered choice keeps its axis' interface, every gate is a complete record, and a new attentional bias
with a new gate is this file alone: registered here, it runs through the state checks, random inputs, the
recurrent reference, the chunked engine (equal, with every gradient), the memory layer and a model config.
"""
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from miras.layers.memory import MemoryLayer
from miras.models import MirasConfig, MirasLM
from miras.ops.dispatch import memory_op
from miras.ops.inputs import random_inputs
from miras.space import ConfigError, MirasSpec, get_preset, list_presets
from miras.space.registry import AXES, CHOICES, GATES, Gate, choice, gate
from miras.space.retention import Decay
from miras.space.tables import parameters

INTERFACE = {"memory": ("describe", "gates", "is_matrix"), "bias": ("describe", "gates", "loss", "grad"),
             "retention": ("describe", "gates", "boundary", "decays", "per_channel", "identity_boundary"),
             "algorithm": ("describe", "gates", "momentum")}


@pytest.mark.parametrize("axis", AXES)
def test_every_choice_keeps_its_axis_interface(axis):
    assert CHOICES[axis]
    for name, cls in CHOICES[axis].items():
        instance = cls(**{p: v for p, v in parameters(cls).items()})
        for attribute in INTERFACE[axis]:
            assert hasattr(instance, attribute), f"{axis} {name} lacks {attribute}"
        assert all(g in GATES for g in instance.gates), f"{axis} {name} reads an unregistered gate"


@pytest.mark.parametrize("name", sorted(GATES))
def test_every_gate_samples_and_activates_inside_its_range(name):
    record = GATES[name]
    noise = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for values in (record.sample(noise), record.activation(noise + record.init)):
        assert record.within(values.min().item(), values.max().item()), (name, values.min(), values.max())


# ---- a new bias with a new gate: everything it needs is below -------------------------------------------------

MARGIN = gate(Gate("margin", "a residual norm the memory tolerates", 0.0, float("inf"),
                   activation=F.softplus, init=-1.0, sample=lambda noise: 0.2 * F.softplus(noise)))


@choice("bias", "margin-l2")
@dataclass(frozen=True)
class MarginL2:
    """l = (||r|| - m_t)_+^2 (smoothed norm): residuals within the margin m_t (a gate) are not corrected."""

    eps: float = 1e-6
    name: str = field(default="margin-l2", init=False)
    gates = ("margin",)

    def describe(self) -> str:
        return "(||M(k) - v|| - m)_+^2"

    def _excess(self, r, gates):
        norm = torch.sqrt(r.pow(2).sum(-1) + self.eps)
        return norm, F.relu(norm - gates["margin"])

    def loss(self, pred, v, gates=None):
        return self._excess(pred - v, gates)[1].pow(2)

    def grad(self, pred, v, gates=None):
        r = pred - v
        norm, excess = self._excess(r, gates)
        return (2.0 * excess / norm).unsqueeze(-1) * r


def test_the_bias_gradient_is_its_loss_derivative():
    pred, v = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True), torch.randn(2, 3, 5, dtype=torch.float64)
    gates = {"margin": torch.rand(2, 3, dtype=torch.float64)}
    (auto,) = torch.autograd.grad(MarginL2().loss(pred, v, gates).sum(), pred)
    torch.testing.assert_close(MarginL2().grad(pred, v, gates), auto)


def test_a_new_bias_runs_everywhere():
    spec = MirasSpec(get_preset("titans-lmm").spec.memory, MarginL2(), Decay(), get_preset("titans-lmm").spec.algorithm,
                     chunk_size=4)
    assert spec.gates == ("lr", "log_alpha", "beta", "margin")
    q, k, v, gates, state = random_inputs(spec, seqlen=11, requires_grad=True)
    y, final = memory_op(spec, q, k, v, gates, state)
    y_ref, final_ref = memory_op(spec, q, k, v, gates, state, mode="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    leaves = [q, k, v, *gates.values(), *state.tensors().values()]
    grads = torch.autograd.grad((y * y.detach().sin()).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * y_ref.detach().sin()).sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        assert (g - g_ref).norm() <= 1e-9 * g_ref.norm() + 1e-14
    bad = dict(gates, margin=-gates["margin"])
    with pytest.raises(ConfigError, match=r"gates\.margin=.*allowed margin in \[0, inf\)"):
        memory_op(spec, q, k, v, bad, state)

    layer = MemoryLayer(spec, d_model=16, heads=2)
    assert "margin" in layer.gates and layer.gate_values(torch.randn(1, 5, 16))["margin"].shape == (1, 5, 2)
    config = MirasConfig(preset="titans-lmm", d_model=16, heads=2, n_layers=1, spec={"bias": "margin-l2"})
    assert config.memory_spec.bias == MarginL2()
    logits, _ = MirasLM(config)(torch.randint(0, 256, (1, 9)))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_presets())
def test_preset_gates_have_records(name):
    spec = get_preset(name).spec
    assert all(g in GATES for g in spec.gates)
