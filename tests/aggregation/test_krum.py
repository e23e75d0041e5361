"""Krum: honest gradients selected when Byzantine ones are planted, the oracle, TorchJD where they agree."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian


def planted(K=9, f=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    honest = 1.0 + 0.1 * torch.randn(K - f, 16, dtype=torch.float64, generator=g)
    byzantine = -20.0 + 5 * torch.randn(f, 16, dtype=torch.float64, generator=g)
    return torch.cat([byzantine, honest])


@pytest.mark.parametrize("n_selected", [1, 3, 7])
def test_selects_honest_gradients_when_byzantine_ones_are_planted(n_selected):
    J = planted()
    w = mf.Krum(2, n_selected).weights(J @ J.T)
    assert (w[:2] == 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert int((w > 0).sum()) == n_selected


@pytest.mark.parametrize("f,m", [(0, 1), (1, 2), (2, 3)])
def test_matches_the_oracle(f, m):
    J = jacobian(7, seed=f)
    assert torch.allclose(J.T @ mf.Krum(f, m).weights(J @ J.T), ref.krum(J, f, m), atol=1e-12)


def test_ties_go_to_the_lower_index_and_sizes_checked():
    J = torch.ones(4, 3, dtype=torch.float64)
    assert torch.equal(mf.Krum(1).weights(J @ J.T), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    with pytest.raises(ValueError, match="n_byzantine"):
        mf.Krum(2).weights(torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_selected"):
        mf.Krum(0, 5).weights(torch.eye(4, dtype=torch.float64))


def test_against_torchjd_on_planted_inputs():
    # TorchJD scores with distances, not their squares: the selections agree where the outliers are clear
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        J = planted(seed=seed)
        for m in (1, 3):
            assert torch.allclose(J.T @ mf.Krum(2, m).weights(J @ J.T), aggregation.Krum(2, m)(J), atol=1e-12)


def test_squared_distances_as_the_paper():
    # gradient 0 has neighbour distances (1, 1), gradient 3 has (0, 1.9): sums 2 vs 1.9 (TorchJD picks 3),
    # squares 2 vs 3.61 (the paper picks 0)
    J = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [50.0, 50.0]], dtype=torch.float64)
    J[3] = J[1]
    w = mf.Krum(1).weights(J @ J.T)
    assert torch.equal(J.T @ w, ref.krum(J, 1, 1))
