"""The compiled GradVac step (csrc/kernels/gradvac.h) against its reference, mtl_fast.reference.gradvac_weights."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import _ops

from helpers import on_reference_path

needs_kernel = pytest.mark.skipif(not _ops.has_kernel("gradvac_weights", "cpu"),
                                  reason="compiled GradVac op not built")


@pytest.fixture
def torch_path():
    """Runs its body on the torch-ops loop, as on a device without the compiled op."""
    return on_reference_path


def gram(K, seed, scale=1.0, rank=None):
    J = torch.randn(K, rank or 2 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    J[: K // 2] -= 0.8 * J[K // 2:].sum(0)  # conflicts, so the targets bite
    return (J * scale) @ (J * scale).T


@needs_kernel
@pytest.mark.parametrize("K", [1, 2, 3, 8, 33])
def test_steps_match_the_torch_path(K, torch_path):
    """Several steps in a row (the EMA targets evolve), pinned orders, scales from 1e-30 to 1e30."""
    for seed, scale, beta in ((0, 1.0, 0.5), (1, 1e-30, 0.01), (2, 1e30, 1.0), (3, 1.0, 0.0)):
        ours, theirs = mf.GradVac(beta=beta, seed=seed), mf.GradVac(beta=beta, seed=seed)
        for step in range(4):
            G = gram(K, seed * 10 + step, scale, rank=max(2, K // 2) if step == 3 else None)
            orders = mf.PCGrad(seed=seed).orders(K, G.device)
            w = ours.weights(G, orders)
            expected = torch_path(theirs.weights, G, orders)
            assert w.dtype == torch.float64 and w.shape == (K,)
            assert torch.allclose(w, expected, rtol=1e-9, atol=1e-12), (seed, step)
            assert torch.allclose(ours.weighting.phi_hat, theirs.weighting.phi_hat, rtol=1e-9,
                                  atol=1e-12), (seed, step)


@needs_kernel
def test_degenerate_grams_stay_finite_and_match(torch_path):
    base = gram(4, 5)
    cases = {"zero": torch.zeros(4, 4, dtype=torch.float64), "identical": torch.ones(4, 4, dtype=torch.float64),
             "opposite": torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64),
             "one zero task": base * torch.tensor([0.0, 1, 1, 1], dtype=torch.float64).outer(
                 torch.tensor([0.0, 1, 1, 1], dtype=torch.float64)),
             "tiny": 1e-300 * base, "float32": base.float()}
    for case, G in cases.items():
        K = G.shape[0]
        ours, theirs = mf.GradVac(beta=0.5, seed=1), mf.GradVac(beta=0.5, seed=1)
        # targets that bite
        theirs.weighting.phi_hat = ours.weighting.phi_hat = torch.full((K, K), 0.5, dtype=torch.float64)
        orders = mf.PCGrad(seed=1).orders(K, G.device)
        w = ours.weights(G, orders)
        assert torch.isfinite(w).all() and torch.isfinite(ours.weighting.phi_hat).all(), case
        assert torch.allclose(w, torch_path(theirs.weights, G, orders), rtol=1e-9, atol=1e-12), case


@needs_kernel
def test_collinear_gradients_by_hand(torch_path):
    """Three tasks along one line (2g, 4g and -g; every value below is exact in binary): a task adjusted against
    an opposite one cancels to the zero vector, which then has no angle to adjust, so its later targets stay."""
    g = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    G = 4.0 * torch.outer(g, g)
    orders = torch.tensor([[1, 2], [2, 0], [0, 1]])
    for run in (lambda f, *a: f(*a), torch_path):
        agg = mf.GradVac(beta=1.0)
        agg.weighting.phi_hat = torch.zeros(3, 3, dtype=torch.float64)
        w = run(agg.weights, G, orders)
        # rows of C: task 0 = e0 + 2 e2, task 1 = e1 + 4 e2, task 2 = e2 + 0.5 e0; w = column sums
        assert torch.equal(w, torch.tensor([1.5, 1.0, 7.0], dtype=torch.float64))
        assert torch.equal(agg.weighting.phi_hat,
                           torch.tensor([[0.0, 1, -1], [0, 0, -1], [-1, 0, 0]], dtype=torch.float64))


@needs_kernel
def test_opcheck_and_bad_arguments():
    G, orders = gram(5, 0), mf.PCGrad(seed=0).orders(5, torch.device("cpu"))
    phi_hat = torch.rand(5, 5, dtype=torch.float64) * 2 - 1
    torch.library.opcheck(torch.ops.mtl_fast.gradvac_weights.default, (G, orders, phi_hat, 0.3))
    op = torch.ops.mtl_fast.gradvac_weights
    with pytest.raises(RuntimeError, match=r"phi_hat: expected shape \(5, 5\)"):
        op(G, orders, phi_hat[:4], 0.3)
    with pytest.raises(RuntimeError, match="beta"):
        op(G, orders, phi_hat, 1.5)
    with pytest.raises(RuntimeError, match="must be a permutation"):
        op(G, torch.zeros(5, 4, dtype=torch.int64), phi_hat, 0.3)
    with pytest.raises(RuntimeError, match="orders: expected shape"):
        op(G, orders[:, :3], phi_hat, 0.3)
