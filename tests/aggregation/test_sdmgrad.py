"""SDMGrad: its limits (lambda = 0 is MGDA, large lambda the target), the oracle over several steps, TorchJD."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian


def test_lambda_zero_converges_to_mgda():
    G = jacobian(3) @ jacobian(3).T
    w = mf.SDMGrad(lambda_=0.0, lr=0.2, n_iter=20000).weights(G)  # a step small enough for A's spread
    assert torch.allclose(w, ref.mgda(G), atol=1e-6)  # the exact min-norm point (MGDA's QP is regularised)


def test_large_lambda_gives_the_target_and_weights_on_the_simplex():
    G = jacobian(4) @ jacobian(4).T
    assert torch.allclose(mf.SDMGrad(lambda_=1e9).weights(G), torch.full((4,), 0.25, dtype=torch.float64),
                          atol=1e-8)
    w = mf.SDMGrad().weights(G)
    assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_matches_the_oracle_over_steps():
    Js = [jacobian(4, seed=s) for s in range(5)]
    agg = mf.SDMGrad()
    expected = ref.sdmgrad(Js, 0.3, 10.0, 0.5, 20, torch.full((4,), 0.25, dtype=torch.float64))
    for J, d in zip(Js, expected):
        assert torch.allclose(mf.aggregate(J, agg), d, atol=1e-8)


def test_non_symmetric_estimate_accepted_and_arguments_checked():
    J1, J2 = jacobian(3, seed=0), jacobian(3, seed=1)
    assert torch.isfinite(mf.SDMGrad().weights(J1 @ J2.T)).all()
    with pytest.raises(ValueError, match="momentum"):
        mf.SDMGrad(momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        mf.SDMGrad(lr=0.0)


def test_against_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    ours, theirs = mf.SDMGrad(), aggregation.SDMGradWeighting()
    for seed in range(5):
        G = jacobian(4, seed=seed) @ jacobian(4, seed=seed).T
        # TorchJD divides by scale^2 + 1e-8 instead of scale^2: equal to ~1e-8 relative at these scales
        assert torch.allclose(ours.weights(G), theirs(G), atol=1e-7)
