import pytest
import torch

from miras.spec import ConfigError
from miras.spec.retention import Decay, ElasticNet, KLSoftmax, LqNormalization, NoRetention


def _A():
    return {"W1": torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)}


def test_decay_gates_are_identity_boundaries():
    A = _A()
    for gate in (NoRetention(), Decay(), Decay(per_channel=True)):
        assert gate.boundary(A)["W1"] is A["W1"]


def test_lq_normalization_divides_by_norm_power():
    A = _A()
    W = LqNormalization(q=4.0, eps=1e-14).boundary(A)["W1"]
    norm4 = A["W1"].abs().pow(4).sum((-2, -1), keepdim=True).pow(0.25)
    torch.testing.assert_close(W, A["W1"] / norm4 ** 2)


def test_lq_with_q2_is_identity():
    A = _A()
    torch.testing.assert_close(LqNormalization(q=2.0).boundary(A)["W1"], A["W1"])


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


@pytest.mark.parametrize("make,field", [(lambda: LqNormalization(q=1.5), "retention.q"),
                                        (lambda: ElasticNet(lam=-1.0), "retention.lam")])
def test_invalid_retention_raises_with_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ".*allowed"):
        make()
