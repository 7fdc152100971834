"""Retention toward the initial state (`toward="init"`): A_t = alpha_t (A_{t-1} - W0) + W0 + S_t, W0 carried as the
state's prior. The closed form with no steps, the moneta preset's use of it through a model, and the refusals."""
import dataclasses

import pytest
import torch

from miras.models import MirasConfig, MirasLM
from miras.ops import initial_state, recurrent_reference
from miras.ops.dispatch import memory_op
from miras.ops.inputs import random_inputs
from miras.ops.minibatch import chunk_minibatch
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.algorithm import GD, Delta, Momentum, Muon
from miras.space.bias import L2, Lp
from miras.space.memory import MLPMemory, matrix
from miras.space.retention import Decay, KLSoftmax, LqNormalization

DEEP = MLPMemory(depth=2, expansion=2)
SPECS = {"decay": MirasSpec(DEEP, L2(), Decay(toward="init"), Momentum(), chunk_size=4),
         "lq": MirasSpec(DEEP, Lp(p=3.0), LqNormalization(toward="init"), GD(), chunk_size=4),
         "kl": MirasSpec(DEEP, L2(), KLSoftmax(scale="n_in", toward="init"), GD(), chunk_size=4)}


@pytest.mark.parametrize("fn", [recurrent_reference, chunk_minibatch], ids=["reference", "chunked"])
@pytest.mark.parametrize("name", list(SPECS))
def test_without_steps_the_accumulator_decays_to_the_prior_in_closed_form(name, fn):
    """eta = 0, no momentum: A_T = W0 + prod_t alpha_t (A_0 - W0) for both paths (toward zero: prod alpha A_0)."""
    spec = SPECS[name]
    q, k, v, gates, state = random_inputs(spec, seqlen=11)
    gates["lr"] = torch.zeros_like(gates["lr"])
    state.S = None if state.S is None else {n: torch.zeros_like(s) for n, s in state.S.items()}   # no momentum
    _, final = fn(spec, q, k, v, gates, state)
    keep = gates["log_alpha"].sum(1).exp()[..., None, None]                                 # [B, H, 1, 1]
    for n, a in final.A.items():
        want = state.prior[n] + keep * (state.A[n] - state.prior[n])
        torch.testing.assert_close(a, want, rtol=1e-12, atol=1e-12)
        assert (a - keep * state.A[n]).abs().max() > 1e-3            # not the decay toward zero
        torch.testing.assert_close(final.prior[n], state.prior[n], rtol=0, atol=0)


def test_initial_state_keeps_w0_as_the_prior_only_when_the_retention_asks():
    W0 = MLPMemory(depth=2, expansion=2).init_state(2, 4, 4)
    with_prior = initial_state(SPECS["lq"], 3, W0)
    assert set(with_prior.prior) == set(W0) and torch.equal(with_prior.prior["W1"][2], W0["W1"])
    spec = dataclasses.replace(SPECS["lq"], retention=LqNormalization())
    assert initial_state(spec, 3, W0).prior is None


def test_a_state_without_its_prior_is_refused():
    spec = SPECS["decay"]
    q, k, v, gates, state = random_inputs(spec, seqlen=5)
    state.prior = None
    for fn in (recurrent_reference, chunk_minibatch, memory_op):
        with pytest.raises(ConfigError, match="state.prior"):
            fn(spec, q, k, v, gates, state)


def test_the_moneta_preset_decays_toward_w0_with_a_smaller_step_bound():
    preset = get_preset("moneta")
    assert preset.spec.retention.toward == "init" and preset.lr_max == 0.01 == get_preset("moneta-h").lr_max
    model = MirasLM(MirasConfig(preset="moneta", vocab_size=32, d_model=16, heads=2, n_layers=1))
    layer = next(m for m in model.modules() if hasattr(m, "lr_max"))
    assert layer.lr_max == 0.01
    titans = MirasLM(MirasConfig(preset="titans-lmm", vocab_size=32, d_model=16, heads=2, n_layers=1))
    assert next(m for m in titans.modules() if hasattr(m, "lr_max")).lr_max == 0.1


def test_w0_learns_through_the_prior_and_a_stream_in_pieces_equals_one_call():
    torch.manual_seed(0)
    model = MirasLM(MirasConfig(preset="moneta", vocab_size=32, d_model=16, heads=2, n_layers=1)).double()
    ids = torch.randint(0, 32, (2, 37))
    whole, _ = model(ids)
    first, states = model(ids[:, :20])
    rest, _ = model(ids[:, 20:], states)
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=1e-10, atol=1e-10)
    whole.pow(2).mean().backward()
    layer = next(m for m in model.modules() if hasattr(m, "W0"))
    assert all(w.grad is not None and w.grad.abs().max() > 0 for w in layer.W0.values())


@pytest.mark.parametrize("make, match", [
    (lambda: Decay(toward="back"), "retention.toward='back'"),
    (lambda: LqNormalization(toward=None), "retention.toward=None"),
    (lambda: KLSoftmax(toward="uniform"), "retention.toward='uniform'"),
    (lambda: Decay(per_channel=True, toward="init"), "per_channel"),
    (lambda: MirasSpec(matrix(), L2(), Decay(toward="init"), Delta()), "'delta' algorithm"),
    (lambda: MirasSpec(MLPMemory(), L2(), LqNormalization(toward="init"), Muon()), "'muon' algorithm"),
])
def test_bad_settings_name_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_the_prior_is_not_counted_as_recurrent_state():
    """The prior is W0 broadcast over the batch (a parameter), so a moneta model reports the state of a memora one
    with the same shapes, not twice it."""
    from miras.eval.compare import state_floats
    sizes = {p: state_floats(MirasLM(MirasConfig(preset=p, vocab_size=32, d_model=16, heads=2, n_layers=2)), 20, 32)
             for p in ("moneta", "memora")}
    assert sizes["moneta"] == sizes["memora"] > 0
