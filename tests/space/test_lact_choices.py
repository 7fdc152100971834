"""LaCT's choices on their axes (arXiv 2505.23884): GD's chunk-start reads and Muon update, the RowNorm retention,
and the combinations MirasSpec refuses. The SwiGLU memory is in test_memory.py, the recurrence in
tests/ops/test_lact.py."""
import pytest
import torch

from miras.ops.dispatch import select_op
from miras.space import ConfigError, MirasSpec, get_preset
from miras.space.algorithm import GD, Momentum, newton_schulz
from miras.space.bias import DotProduct, L2
from miras.space.memory import MLPMemory, matrix
from miras.space.retention import Decay, NoRetention, RowNorm

SWIGLU = MLPMemory(depth=2, expansion=1, activation="swiglu", residual=False, norm=False)


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4)])
def test_newton_schulz_pushes_singular_values_towards_one(shape):
    g = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = newton_schulz(g)
    assert x.shape == g.shape
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.3, s                   # LaCT's 5 steps: about [0.7, 1.2], not exactly 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    d = u.mT @ x @ vh.mT                                       # g's singular vectors (x = p(g g^T) g) diagonalize x
    assert (d - torch.diag_embed(d.diagonal(dim1=-2, dim2=-1))).abs().max() < 1e-12
    assert torch.allclose(newton_schulz(g.mT), x.mT)             # a tall matrix is its wide transpose's map
    assert torch.allclose(newton_schulz(7.0 * g), x)             # scale-free (the Frobenius normalization)
    assert newton_schulz(torch.zeros(2, 3, 4)).abs().max() == 0


def test_rownorm_projects_rows_to_the_given_norms_and_starts_as_the_identity():
    gen = torch.Generator().manual_seed(1)
    W, like = ({"W1": torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)} for _ in range(2))
    out = RowNorm().project(W, like)["W1"]
    torch.testing.assert_close(out.norm(dim=-1), like["W1"].norm(dim=-1))
    torch.testing.assert_close(out / out.norm(dim=-1, keepdim=True), W["W1"] / W["W1"].norm(dim=-1, keepdim=True))
    assert RowNorm().boundary(W) is W and RowNorm().identity_boundary


def test_gd_read_and_end_weights():
    lact = GD(reads="chunk-start")
    assert lact.read_weights(None, 3, 5) == 0.0 and lact.end_weight(None, 8) == 1.0
    tau = GD(token_weights=True).read_weights(None, 0, 4, torch.float64)
    torch.testing.assert_close(tau, 1.0 / torch.arange(1, 5, dtype=torch.float64))
    torch.testing.assert_close(GD(token_weights=True).end_weight(None, 4, torch.float64), tau[-1:])
    assert GD(reads="chunk-start").weighted and GD(token_weights=True).weighted and not GD().weighted
    step = {"W1": torch.randn(2, 3, 4, dtype=torch.float64)}
    assert GD(reads="chunk-start").update(step) is step
    torch.testing.assert_close(GD(reads="chunk-start", muon=True).update(step)["W1"], newton_schulz(step["W1"]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(reads="chunk"), "algorithm.reads"),
    (dict(muon=True), "algorithm.muon"),
    (dict(token_weights=True, muon=True), "algorithm.muon"),
    (dict(token_weights=True, reads="chunk-start"), "algorithm.reads"),
])
def test_bad_gd_options_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        GD(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(memory=SWIGLU, retention=RowNorm(), algorithm=GD()), r"retention=.*rownorm.*chunk-start"),
    (dict(memory=SWIGLU, retention=RowNorm(), algorithm=Momentum()), r"retention=.*rownorm"),
    (dict(memory=matrix(), retention=RowNorm(), algorithm=GD(reads="chunk-start")), r"memory=.*deep memory"),
    (dict(memory=SWIGLU, retention=Decay(), algorithm=GD(reads="chunk-start")), r"algorithm\.reads=.*'decay'"),
])
def test_bad_combinations_name_field_value_and_fix(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MirasSpec(bias=DotProduct(), chunk_size=4, **kwargs)


def test_chunk_start_reads_change_the_function_and_take_the_minibatch_engine():
    lact = get_preset("lact").spec
    assert lact.chunk_size == 2048 and lact.algorithm == GD(reads="chunk-start", muon=True)
    assert lact.memory == SWIGLU and lact.bias == DotProduct() and lact.retention == RowNorm()
    assert not lact.chunk_invariant and select_op(lact) == "minibatch"
    linear = MirasSpec(matrix(), DotProduct(), NoRetention(), GD(reads="chunk-start"), chunk_size=4)
    assert not linear.chunk_invariant and select_op(linear) == "minibatch"       # not the SSD kernel
    assert MirasSpec(SWIGLU, L2(), NoRetention(), GD(token_weights=True), chunk_size=4).gates == ("lr",)
