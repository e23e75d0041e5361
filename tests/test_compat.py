"""The PCGrad-port drop-in: heads untouched, sum as in the paper, reduction honoured, shared found by itself."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast.compat import PCGradOptimizer

from helpers import grads_of, origin_batch


def _reference_grads(model, x, ys, seed):
    model.zero_grad(set_to_none=True)
    mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad(seed=seed))
    return grads_of(model.parameters())


def test_pc_backward_finds_the_shared_trunk_and_leaves_heads_alone():
    model, x, ys = origin_batch(K=3)
    expected = _reference_grads(model, x, ys, seed=4)
    opt = PCGradOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), seed=4)
    opt.zero_grad()
    opt.pc_backward(model.losses(model(x), ys))
    for got, exp in zip(grads_of(model.parameters()), expected):
        torch.testing.assert_close(got, exp)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_mean_reduction_divides_the_shared_update_only():
    model, x, ys = origin_batch(K=3)
    expected = _reference_grads(model, x, ys, seed=1)
    opt = PCGradOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), shared_params=model.trunk.parameters(),
                          reduction="mean", seed=1)
    opt.zero_grad()
    opt.pc_backward(model.losses(model(x), ys))
    n_trunk = len(list(model.trunk.parameters()))
    for i, (got, exp) in enumerate(zip(grads_of(model.parameters()), expected)):
        torch.testing.assert_close(got, exp / 3 if i < n_trunk else exp)


def test_bad_arguments():
    model, x, ys = origin_batch(K=2)
    with pytest.raises(TypeError, match="optimizer: expected a torch.optim.Optimizer"):
        PCGradOptimizer(model.parameters())
    with pytest.raises(ValueError, match="reduction: expected 'sum' or 'mean'"):
        PCGradOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reduction="none")
    opt = PCGradOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="nothing is shared"):
        opt.pc_backward([a.sum(), b.sum()])
