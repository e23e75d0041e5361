"""FairGrad: closed forms, the defining equation to the documented tolerance, Nash-MTL at alpha = 1, the oracle
and TorchJD."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from mtl_fast.aggregation.fairgrad import FAIR_REGULARIZATION
from zoo2_cases import jacobian


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_orthogonal_closed_form(alpha):
    G = torch.diag(torch.tensor([4.0, 0.25], dtype=torch.float64))  # G_kk w_k = w_k^(-1/alpha)
    expected = G.diagonal() ** (-alpha / (1 + alpha))
    assert torch.allclose(mf.FairGrad(alpha).weights(G), expected, rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("K", [2, 3, 8, 32])
def test_weights_solve_the_equation(alpha, K):
    for seed in range(3):
        G = jacobian(K, P=64, seed=seed) @ jacobian(K, P=64, seed=seed).T
        w = mf.FairGrad(alpha).weights(G)
        assert (w > 0).all()
        rhs = w ** (-1 / alpha)
        # the regularised equation (the solver's) to the documented tolerance; the raw one up to that term
        regularised = G @ w + FAIR_REGULARIZATION * torch.linalg.matrix_norm(G) * w
        tolerance = 1e-9 if alpha <= 2 else 1e-5  # the rounding floor of large alpha (see FairGrad)
        assert (regularised - rhs).abs().max() <= tolerance * rhs.abs().max()
        assert (G @ w - rhs).abs().max() <= 1e-5 * rhs.abs().max()


def test_alpha_one_is_nash_mtl_and_scale_equivariance():
    G = jacobian(5) @ jacobian(5).T
    assert torch.allclose(mf.FairGrad(1.0).weights(G), mf.NashMTL(max_norm=0.0).weights(G), rtol=1e-12)
    alpha, s = 2.0, 1e8
    expected = s ** (-alpha / (1 + alpha)) * mf.FairGrad(alpha).weights(G)
    assert torch.allclose(mf.FairGrad(alpha).weights(s * G), expected, rtol=1e-8)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_matches_the_oracle(alpha):
    G = jacobian(4, conflict=False) @ jacobian(4, conflict=False).T
    expected = ref.fairgrad(G, alpha)
    assert torch.allclose(mf.FairGrad(alpha).weights(G), expected, rtol=1e-6)


def test_arguments_checked():
    with pytest.raises(ValueError, match="alpha"):
        mf.FairGrad(0.0)
    with pytest.raises(ValueError, match="max_iter"):
        mf.FairGrad(1.0, max_iter=0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_against_torchjd(alpha):
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("scipy")
    for seed in range(3):
        G = jacobian(4, conflict=False, seed=seed) @ jacobian(4, conflict=False, seed=seed).T
        theirs = aggregation.FairGradWeighting(alpha)(G)
        # scipy's least_squares stops at its own tolerances (ftol = xtol = 1e-8): agreement to ~1e-5
        assert torch.allclose(mf.FairGrad(alpha).weights(G), theirs, rtol=1e-4)
