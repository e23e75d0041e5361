"""ConFIG: the K = 2 closed form, the conflict-free property, the oracle and TorchJD."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian


def test_k2_closed_form():
    # with unit vectors u1, u2, d = (|g1| + |g2|) / 2 (u1 + u2)
    J = torch.tensor([[3.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    units = J / J.norm(dim=1, keepdim=True)
    expected = J.norm(dim=1).sum() / 2 * units.sum(0)
    assert torch.allclose(J.T @ mf.ConFIG().weights(J @ J.T), expected, atol=1e-12)


@pytest.mark.parametrize("K", [2, 3, 5, 10])
@pytest.mark.parametrize("seed", range(5))
def test_update_has_positive_dot_product_with_every_task_gradient(K, seed):
    J = jacobian(K, P=32, seed=seed)
    pref = torch.rand(K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    for agg, p in ((mf.ConFIG(), torch.ones(K, dtype=torch.float64)), (mf.ConFIG(pref=pref.tolist()), pref)):
        d = J.T @ agg.weights(J @ J.T)
        assert (J @ d > 0).all()
        # g_k . d is proportional to |g_k| p_k (the same relative improvement per unit of preference)
        ratio = (J @ d) / (J.norm(dim=1) * p)
        assert torch.allclose(ratio, ratio[0].expand(K), rtol=1e-9)


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_matches_the_oracle(K):
    J = jacobian(K, seed=K)
    pref = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    assert torch.allclose(J.T @ mf.ConFIG(pref=pref.tolist()).weights(J @ J.T), ref.config(J, pref), atol=1e-10)


def test_scale_invariant_and_pref_length_checked():
    G = jacobian(4) @ jacobian(4).T
    assert torch.allclose(mf.ConFIG().weights(G * 1e20), mf.ConFIG().weights(G), rtol=1e-9)
    with pytest.raises(ValueError, match="pref"):
        mf.ConFIG(pref=[1.0, 2.0]).weights(G)
    with pytest.raises(ValueError, match="pref"):
        mf.ConFIG(pref=[1.0, -2.0])


@pytest.mark.parametrize("K", [2, 3, 6])
def test_against_torchjd(K):
    aggregation = pytest.importorskip("torchjd.aggregation")
    for seed in range(3):
        J = jacobian(K, seed=seed)
        ours = J.T @ mf.ConFIG().weights(J @ J.T)
        assert torch.allclose(ours, aggregation.ConFIG()(J), atol=1e-10)
