import pytest
import torch

from miras.space import ConfigError
from miras.space.retention import Decay, ElasticNet, KLSoftmax, LqNormalization, NoRetention


def _A():
    return {"W1": torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)}


def test_decay_gates_are_identity_boundaries():
    A = _A()
    for gate in (NoRetention(), Decay(), Decay(per_channel=True)):
        assert gate.boundary(A)["W1"] is A["W1"]


def test_lq_normalization_divides_by_norm_power():
    A = _A()
    W = LqNormalization(q=4.0, eps=1e-14, form="paper", radius=1.0).boundary(A)["W1"]
    norm4 = A["W1"].abs().pow(4).sum((-2, -1), keepdim=True).pow(0.25)
    torch.testing.assert_close(W, A["W1"] / norm4 ** 2)


def test_lq_with_q2_is_identity():
    A = _A()
    torch.testing.assert_close(LqNormalization(q=2.0, form="paper").boundary(A)["W1"], A["W1"])


def test_softmax_boundary_is_on_the_simplex_and_shift_invariant():
    A = _A()
    W = KLSoftmax().boundary(A)["W1"]
    assert (W > 0).all()
    torch.testing.assert_close(W.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    shifted = KLSoftmax().boundary({"W1": A["W1"] + torch.randn(2, 3, 5, 1, dtype=torch.float64)})["W1"]
    torch.testing.assert_close(shifted, W)


def test_elastic_net_soft_thresholds():
    W = ElasticNet(lam=0.5).boundary({"W1": torch.tensor([[-1.0, -0.2, 0.3, 2.0]])})["W1"]
    torch.testing.assert_close(W, torch.tensor([[-0.5, 0.0, 0.0, 1.5]]))


@pytest.mark.parametrize("gate", [LqNormalization(q=4.0), KLSoftmax(), KLSoftmax(in_chunk="identity"),
                                  ElasticNet(0.05)], ids=lambda g: g.describe())
def test_in_chunk_map_is_linear_and_equals_the_boundary_at_the_chunk_start(gate):
    A, D = _A(), {"W1": torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)}
    frame = gate.frame(A)["W1"]
    torch.testing.assert_close(frame(A["W1"]), gate.boundary(A)["W1"])
    W, shared = gate.boundary_frame(A)
    torch.testing.assert_close(W["W1"], gate.boundary(A)["W1"])
    torch.testing.assert_close(shared["W1"](A["W1"] + D["W1"]), frame(A["W1"] + D["W1"]))
    step = frame(A["W1"] + D["W1"]) - frame(A["W1"])                          # linear: the step depends on D only
    torch.testing.assert_close(frame(A["W1"] + 2 * D["W1"]) - frame(A["W1"] + D["W1"]), step)
    h = torch.randn(2, 3, 7, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = A["W1"] + D["W1"]                                       # the engine's read: anchor h + scale (A - start)(C h)
    z = (a - (0 if frame.start is None else frame.start)) @ frame.input(h).transpose(-1, -2)
    expect = (frame.scale * z.transpose(-1, -2)) + (0 if frame.anchor is None else h @ frame.anchor.transpose(-1, -2))
    torch.testing.assert_close(h @ frame(a).transpose(-1, -2), expect)


def test_memora_jacobian_map_keeps_rows_summing_to_one():
    A, D = _A(), torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    W = KLSoftmax().frame(A)["W1"](A["W1"] + D)
    torch.testing.assert_close(W.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))


@pytest.mark.parametrize("make,field", [(lambda: LqNormalization(q=1.5), "retention.q"),
                                        (lambda: ElasticNet(lam=-1.0), "retention.lam"),
                                        (lambda: LqNormalization(boundary_at="every-chunk"), "retention.boundary_at"),
                                        (lambda: LqNormalization(q=2.0, form="paper", boundary_at="every-token"),
                                         "retention.boundary_at"),
                                        (lambda: KLSoftmax(in_chunk="exact"), "retention.in_chunk"),
                                        (lambda: KLSoftmax(in_chunk="identity", boundary_at="every-token"),
                                         "retention.in_chunk")])
def test_invalid_retention_raises_with_field(make, field):
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.") + "=.*allowed.*; fix: "):
        make()
