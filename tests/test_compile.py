"""torch.compile of models that use mtl_fast's operators and fork matches eager.

The trunk is an MLP: torch 2.13's CPU inductor returns zero conv-weight gradients for the origin network under
torch.compile with or without mtl_fast (README, known issues)."""
import pytest
import torch
from torch import nn

import mtl_fast as mf


class ForkedMLP(nn.Module):
    def __init__(self, aggregator, K=3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(16, 4) for _ in range(K))
        self.aggregator = aggregator

    def forward(self, x, ys):
        feats = mf.fork(self.trunk(x), len(self.heads), aggregator=self.aggregator)
        return sum(nn.functional.cross_entropy(h(f), y) for h, f, y in zip(self.heads, feats, ys))


def _grads(model, x, ys, fn):
    model.zero_grad(set_to_none=True)
    loss = fn(x, ys)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("make_aggregator", [mf.Sum, lambda: mf.PCGrad(seed=0)], ids=["sum", "pcgrad"])
def test_compiled_fork_matches_eager(make_aggregator):
    torch.manual_seed(0)
    model = ForkedMLP(make_aggregator())
    x = torch.randn(16, 20)
    ys = [torch.randint(0, 4, (16,)) for _ in range(3)]
    loss_e, grads_e = _grads(model, x, ys, model)
    model.aggregator = make_aggregator()  # same seed, same orders as the eager run
    loss_c, grads_c = _grads(model, x, ys, torch.compile(model))
    torch.testing.assert_close(loss_c, loss_e)
    for c, e in zip(grads_c, grads_e):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_compiled_aggregate_matches_eager():
    J = torch.randn(5, 1000)
    orders = mf.PCGrad(seed=0).orders(5, torch.device("cpu"))

    def step(J, orders):
        return mf.PCGrad().weights(mf.gram(J), orders) @ J.double()

    torch.testing.assert_close(torch.compile(step, fullgraph=True)(J, orders), step(J, orders))


@pytest.mark.parametrize("name", ["PCGrad", "MGDA", "DualProj", "UPGrad", "CAGrad", "IMTLG", "GradVac",
                                  "AlignedMTL", "NashMTL", "ConFIG", "FairGrad", "SDMGrad", "MoDo", "CRMOGM", "Krum",
                                  "Random", "Sum", "Mean"])
def test_every_aggregator_compiles_on_the_reference_path(name):
    """torch.compile (Dynamo, without Inductor to keep it quick) traces every Gram-based aggregator's weights(G)
    on the pure-PyTorch path and gives what eager gives; the iterative solvers break the graph where they read
    their convergence flag, which torch.compile handles by itself."""
    make = {"CRMOGM": lambda: mf.CRMOGM(mf.MGDA()), "Krum": lambda: mf.Krum(1),
            "PCGrad": lambda: mf.PCGrad(seed=0), "GradVac": lambda: mf.GradVac(seed=0),
            "Random": lambda: mf.Random(seed=0)}.get(name, getattr(mf, name))
    J = torch.randn(5, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    J[1] = -J[0] + 0.3 * J[1]
    G = J @ J.T
    torch._dynamo.reset()
    with mf._ops.reference_only():
        eager = make().weights(G)
        compiled = torch.compile(make().weights, backend="eager")(G)
    torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)
