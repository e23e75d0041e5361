"""MoDo: one step by hand, the oracle over several steps, TorchJD."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from mtl_fast.aggregation._utils import project_onto_simplex
from zoo2_cases import jacobian


def test_k2_one_step_by_hand():
    G = torch.tensor([[2.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    # lambda = (1/2, 1/2) - 0.1 (G (1/2, 1/2) + 0.1 (1/2, 1/2)) = (0.445, 0.495), shifted onto the simplex
    step = torch.tensor([0.5, 0.5], dtype=torch.float64) - 0.1 * (G @ torch.tensor([0.5, 0.5]).double() + 0.05)
    expected = step + (1 - step.sum()) / 2
    assert torch.allclose(mf.MoDo(0.1, 0.1).weights(G), expected)


def test_simplex_projection_against_the_oracle():
    g = torch.Generator().manual_seed(0)
    for K in (1, 2, 5, 64):
        y = torch.randn(K, dtype=torch.float64, generator=g) * 3
        assert torch.allclose(project_onto_simplex(y), ref._project_simplex(y), atol=1e-12)


def test_matches_the_oracle_over_steps():
    Js = [jacobian(4, seed=s) * 0.3 for s in range(5)]
    agg = mf.MoDo(0.05, 0.2)
    for J, d in zip(Js, ref.modo(Js, 0.05, 0.2)):
        assert torch.allclose(mf.aggregate(J, agg), d, atol=1e-10)


def test_against_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    ours, theirs = mf.MoDo(), aggregation.MoDoWeighting()
    for seed in range(5):
        G = jacobian(4, seed=seed) @ jacobian(4, seed=seed).T * 0.1
        assert torch.allclose(ours.weights(G), theirs(G), atol=1e-12)
