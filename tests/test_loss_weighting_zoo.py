"""Loss level, zoo II: every scalarisation's weights are the gradient of its paper formula (mtl_fast.reference),
closed forms, limits, argument checks, and the full IMTL (IMTL-L with IMTL-G) end to end."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import loss_weighting as lw
from mtl_fast import reference as ref

LOSSES = [torch.tensor(v, dtype=torch.float64) for v in ([0.5, 2.0, 1.0], [3.0, 0.1, 0.7, 1.2], [1e-3, 1e3])]


def gradient_of(objective, losses):
    L = losses.clone().requires_grad_(True)
    return torch.autograd.grad(objective(L), L)[0]


@pytest.mark.parametrize("losses", LOSSES, ids=["K3", "K4", "K2-wide"])
def test_weights_are_the_gradient_of_the_paper_formula(losses):
    K = losses.numel()
    pref = torch.linspace(0.5, 1.5, K, dtype=torch.float64)
    z = torch.full((K,), 0.05, dtype=torch.float64)
    cases = [
        (lw.STCH(0.3, pref.tolist(), z.tolist()), lambda L: ref.stch(L, 0.3, pref, z)),
        (lw.STCH(2.0), lambda L: ref.stch(L, 2.0, torch.ones(K, dtype=torch.float64), torch.zeros(K).double())),
        (lw.GeometricMean(), ref.geometric_mean),
        (lw.PBI(5.0, pref.tolist(), z.tolist()), lambda L: ref.pbi(L, 5.0, pref, z)),
        (lw.COSMOS(2.0, pref.tolist()), lambda L: ref.cosmos(L, 2.0, pref)),
    ]
    for weighting, objective in cases:
        assert torch.allclose(weighting.weights(losses), gradient_of(objective, losses), rtol=1e-10, atol=1e-13)
        # and weighted_losses backpropagates exactly that gradient
        L = losses.clone().requires_grad_(True)
        assert torch.allclose(torch.autograd.grad(weighting.combine(L), L)[0], gradient_of(objective, losses))


def test_closed_forms_and_limits():
    L = torch.tensor([1.0, 4.0], dtype=torch.float64)
    assert torch.allclose(lw.GeometricMean().weights(L), torch.tensor([1.0, 0.25]).double())  # 2 / (2 L_k)
    # STCH: mu -> 0 puts all the weight on the largest weighted loss, large mu gives lambda / K
    assert torch.allclose(lw.STCH(1e-3).weights(L), torch.tensor([0.0, 1.0]).double())
    assert torch.allclose(lw.STCH(1e6).weights(L), torch.tensor([0.5, 0.5]).double(), atol=1e-5)
    # PBI on the ray: only the direction remains; COSMOS with lambda = 0 is the weighted sum
    assert torch.allclose(lw.PBI(5.0, [1.0, 4.0]).weights(L), L / L.norm())
    assert torch.equal(lw.COSMOS(0.0, [0.3, 0.7]).weights(L), torch.tensor([0.3, 0.7], dtype=torch.float64))
    # degenerate: zero losses stay finite
    zero = torch.zeros(2, dtype=torch.float64)
    for weighting in (lw.STCH(0.5), lw.GeometricMean(), lw.PBI(5.0, [1.0, 1.0]), lw.COSMOS(1.0, [1.0, 1.0])):
        assert torch.isfinite(weighting.weights(zero)).all()


def test_arguments_checked():
    with pytest.raises(ValueError, match="mu"):
        lw.STCH(0.0)
    with pytest.raises(ValueError, match="weights"):
        lw.STCH(1.0, [1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        lw.PBI(5.0, [0.0, 0.0])
    with pytest.raises(ValueError, match="theta"):
        lw.PBI(-1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match="lambda_"):
        lw.COSMOS(-1.0, [1.0])
    with pytest.raises(ValueError, match="weights"):
        lw.STCH(1.0, [1.0, 2.0]).weights(torch.ones(3))
    with pytest.raises(ValueError, match="reference"):
        lw.STCH(1.0, reference=[1.0, 2.0]).weights(torch.ones(3))


def test_imtl_l_learns_equal_scaled_losses():
    imtl_l = lw.IMTLL(2)
    losses = torch.tensor([4.0, 0.25], dtype=torch.float64)
    assert torch.equal(imtl_l.weights(losses), torch.ones(2, dtype=torch.float64))
    scales = imtl_l.scales.detach().double().clone().requires_grad_(True)
    expected = torch.autograd.grad(ref.imtl_l(losses, scales), scales)[0]
    imtl_l.combine(losses).backward()
    assert torch.allclose(imtl_l.scales.grad.double(), expected)
    optimizer = torch.optim.SGD(imtl_l.parameters(), lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        imtl_l.combine(losses).backward()
        optimizer.step()
    # the minimiser of exp(s) L - s: exp(s) L = 1
    assert torch.allclose(imtl_l.weights(losses) * losses, torch.ones(2, dtype=torch.float64), atol=1e-4)
    assert imtl_l.state_dict()["scales"].shape == (2,)


def test_full_imtl_with_imtlg():
    torch.manual_seed(0)
    trunk, heads = torch.nn.Linear(4, 6).double(), [torch.nn.Linear(6, 1).double() for _ in range(3)]
    imtl_l = lw.IMTLL(3)
    with torch.no_grad():
        imtl_l.scales.copy_(torch.tensor([0.5, -0.3, 0.1]))
    x = torch.randn(10, 4, dtype=torch.float64)
    features = trunk(x)
    losses = [head(features).pow(2).mean() for head in heads]
    # by hand first: the scaled task gradients exp(s_k) g_k, combined by IMTL-G's weights of their Gram matrix
    scale = torch.exp(imtl_l.scales.detach().double())
    J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        scale[k] * loss, list(trunk.parameters()), retain_graph=True)]) for k, loss in enumerate(losses)])
    weights = mf.backward(imtl_l.weighted_losses(losses), list(trunk.parameters()), aggregator=mf.IMTLG())
    assert torch.allclose(weights, mf.IMTLG().weights(J @ J.T))
    got = torch.cat([p.grad.reshape(-1) for p in trunk.parameters()])
    assert torch.allclose(got, J.T @ weights)
    assert imtl_l.scales.grad is not None  # the scales get their ordinary gradient (not shared)
