"""MoCo: the oracle over steps, the tracked gradients, chunks."""
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian

JS = [jacobian(3, seed=s) * 0.2 for s in range(6)]


def test_matches_the_oracle_over_steps():
    agg = mf.MoCo(beta=0.7, beta_sigma=0.3, gamma=0.2, gamma_sigma=0.4, rho=0.1)
    for J, d in zip(JS, ref.moco(JS, 0.7, 0.3, 0.2, 0.4, 0.1)):
        assert torch.allclose(mf.aggregate(J, agg), d, atol=1e-12)


def test_beta_one_tracks_the_current_gradients_on_chunks():
    agg = mf.MoCo(beta=1.0, beta_sigma=0.0)
    J = JS[0]
    out = mf.aggregate([J[:, :10].reshape(3, 2, 5), J[:, 10:]], agg)
    assert torch.equal(agg.tracked[1], J[:, 10:])
    assert torch.allclose(torch.cat([out[0].reshape(-1), out[1]]), J.T @ agg.lambda_)
