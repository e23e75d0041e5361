"""DB-MTL: the paper's update at beta = 0, the balanced magnitudes, the losses hook, and the documented
deviation for beta > 0."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian

JS = [jacobian(3, seed=s) for s in range(4)]
LOSSES = [torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64) * (1 + s) for s in range(4)]


def weights(agg, J, L):
    agg.update_losses(L)
    return agg.weights(J @ J.T)


def test_beta_zero_is_the_paper_and_magnitudes_are_balanced():
    agg = mf.DBMTL(beta=0.0)
    for J, L, d in zip(JS, LOSSES, ref.dbmtl(JS, LOSSES, 0.0, 0.0)):
        w = weights(agg, J, L)
        assert torch.allclose(J.T @ w, d, atol=1e-10)
        scaled = (w[:, None] * J).norm(dim=1)  # every term has the largest log-loss gradient norm
        assert torch.allclose(scaled, (J.norm(dim=1) / (L + 1e-8)).max().expand(3), rtol=1e-12)


def test_beta_positive_averages_the_norms():
    # the paper averages the vectors (reference.dbmtl); this averages their norms: the first step agrees
    agg = mf.DBMTL(beta=0.9)
    expected = ref.dbmtl(JS, LOSSES, 0.9, 0.0)
    assert torch.allclose(JS[0].T @ weights(agg, JS[0], LOSSES[0]), expected[0] / (1 - 0.9), atol=1e-9)
    h = [J / L[:, None] for J, L in zip(JS, LOSSES)]
    average = h[0].norm(dim=1) * 0.1
    average = h[1].norm(dim=1) + 0.9 * (average - h[1].norm(dim=1))
    w = weights(agg, JS[1], LOSSES[1])
    assert torch.allclose(w, average.max() / average / (LOSSES[1] + 1e-8), rtol=1e-7)


def test_losses_hook():
    agg = mf.DBMTL()
    G = JS[0] @ JS[0].T
    with pytest.raises(RuntimeError, match="update_losses"):
        agg.weights(G)
    agg.update_losses([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0, requires_grad=True)])
    agg.weights(G)
    with pytest.raises(RuntimeError, match="update_losses"):  # consumed: never reused by mistake
        agg.weights(G)
    with pytest.raises(ValueError, match="losses"):
        agg.update_losses(torch.ones(4))
        agg.weights(G)
    assert agg.needs_losses and not mf.MGDA().needs_losses
