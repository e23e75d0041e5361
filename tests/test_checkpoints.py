"""A training run interrupted and resumed from the state dicts (model, optimiser, aggregator or loss weighting)
continues bitwise as if it had never stopped, for every stateful method."""
from __future__ import annotations

import io
from typing import Callable, Dict

import pytest
import torch
from torch import nn

import mtl_fast as mf
from mtl_fast import loss_weighting as lw

K, STEPS, STOP_AT = 3, 6, 3

AGGREGATORS: Dict[str, Callable[[], mf.Aggregator]] = {
    "PCGrad": lambda: mf.PCGrad(seed=1),
    "GradVac": lambda: mf.GradVac(0.3, seed=2),
    "NashMTL": lambda: mf.NashMTL(update_weights_every=2),
    "GradDrop": lambda: mf.GradDrop(seed=3),
}
WEIGHTINGS: Dict[str, Callable[[], object]] = {
    "DWA": lambda: lw.DWA(),
    "UncertaintyWeighting": lambda: lw.UncertaintyWeighting(K),
    "GradNorm": lambda: lw.GradNorm(),
    "FAMO": lambda: lw.FAMO(K),
    "RLW": lambda: lw.RLW(seed=4),
}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(K))

    def losses(self, step: int):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(7, 5, dtype=torch.float64, generator=g)
        ys = torch.randn(K, 7, 1, dtype=torch.float64, generator=g)
        features = self.trunk(x)
        return [((head(features) - y) ** 2).mean() for head, y in zip(self.heads, ys)]


def _fresh(method: str):
    torch.manual_seed(0)
    model = _Net().double()
    make = AGGREGATORS.get(method) or WEIGHTINGS[method]
    strategy = make()
    params = list(model.parameters()) + (list(strategy.parameters()) if isinstance(strategy, nn.Module) else [])
    return model, strategy, torch.optim.Adam(params, lr=1e-2)


def _step(model, strategy, optimizer, step: int) -> None:
    optimizer.zero_grad()
    losses = model.losses(step)
    shared = list(model.trunk.parameters())
    if isinstance(strategy, mf.Aggregator):
        mf.backward(losses, shared, aggregator=strategy)
    elif hasattr(strategy, "aggregator"):  # GradNorm reads the task gradients' norms off G
        mf.backward(losses, shared, aggregator=strategy.aggregator(losses))
    else:
        strategy.combine(losses).backward()
    optimizer.step()
    if hasattr(strategy, "update"):  # FAMO: the logit step from the new losses
        with torch.no_grad():
            strategy.update([loss.detach() for loss in model.losses(step + 1)])
    if hasattr(strategy, "end_epoch") and step % 2 == 1:  # DWA: two steps an epoch
        strategy.end_epoch()


def _roundtrip(obj) -> Dict:
    buffer = io.BytesIO()
    torch.save(obj.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("method", list(AGGREGATORS) + list(WEIGHTINGS))
def test_resumed_run_continues_bitwise(method):
    model, strategy, optimizer = _fresh(method)
    for step in range(STEPS):
        _step(model, strategy, optimizer, step)
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, strategy, optimizer = _fresh(method)
    for step in range(STOP_AT):
        _step(model, strategy, optimizer, step)
    saved = {name: _roundtrip(obj) for name, obj in
             (("model", model), ("strategy", strategy), ("optimizer", optimizer))}
    torch.manual_seed(12345)  # whatever the global generator did meanwhile must not matter
    model, strategy, optimizer = _fresh(method)
    model.load_state_dict(saved["model"])
    strategy.load_state_dict(saved["strategy"])
    optimizer.load_state_dict(saved["optimizer"])
    for step in range(STOP_AT, STEPS):
        _step(model, strategy, optimizer, step)
    for p, q in zip(model.parameters(), uninterrupted):
        assert torch.equal(p, q), method
