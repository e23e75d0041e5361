"""CR-MOGM: the limits of alpha, the moving average against the oracle, the inner state, TorchJD."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian

GRAMS = [jacobian(4, seed=s) @ jacobian(4, seed=s).T for s in range(5)]


def test_alpha_zero_is_the_method_and_alpha_one_freezes():
    none, frozen = mf.CRMOGM(mf.MGDA(), alpha=0.0), mf.CRMOGM(mf.MGDA(), alpha=1.0)
    first = mf.MGDA().weights(GRAMS[0])
    for G in GRAMS:
        assert torch.equal(none.weights(G), mf.MGDA().weights(G))
        assert torch.equal(frozen.weights(G), first)


def test_moving_average_matches_the_oracle():
    agg = mf.CRMOGM(mf.IMTLG(), alpha=0.7)
    expected = ref.crmogm([mf.IMTLG().weights(G) for G in GRAMS], 0.7)
    for G, w in zip(GRAMS, expected):
        assert torch.allclose(agg.weights(G), w, atol=1e-14)


def test_wraps_stateful_methods_and_checks_its_argument():
    agg, inner = mf.CRMOGM(mf.MoDo(), alpha=0.5), mf.MoDo()
    for G in GRAMS:
        agg.weights(G)
        inner.weights(G)
    assert torch.equal(agg.state_dict()["inner"]["state"], inner.state_dict()["state"])
    agg.reset()
    assert agg.weighting.aggregator.weighting.state is None
    with pytest.raises(TypeError, match="aggregator"):
        mf.CRMOGM(mf.TrimmedMean(1))


def test_against_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    ours = mf.CRMOGM(mf.IMTLG(), alpha=0.9)
    theirs = aggregation.CRMOGMWeighting(aggregation.IMTLGWeighting(), alpha=0.9)
    for G in GRAMS:
        assert torch.allclose(ours.weights(G), theirs(G), atol=1e-10)
