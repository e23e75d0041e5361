"""mtl_fast.fork: representation-level aggregation on the origin document's network."""
import pytest
import torch

import mtl_fast as mf

from helpers import grads_of, origin_batch


def _fork_backward(model, x, ys, aggregator):
    model.zero_grad(set_to_none=True)
    feats = mf.fork(model.trunk(x), model.num_tasks, aggregator=aggregator)
    losses = model.losses([head(f) for head, f in zip(model.task_heads, feats)], ys)
    sum(losses).backward()
    return grads_of(model.parameters())


def test_sum_is_the_plain_backward():
    model, x, ys = origin_batch(K=3)
    model.zero_grad(set_to_none=True)
    sum(model.losses(model(x), ys)).backward()
    expected = grads_of(model.parameters())
    for got, exp in zip(_fork_backward(model, x, ys, mf.Sum()), expected):
        torch.testing.assert_close(got, exp, rtol=1e-12, atol=1e-15)


def test_pcgrad_on_feature_gradients_matches_the_hand_computation():
    K = 4
    model, x, ys = origin_batch(K=K)
    orders = mf.PCGrad(seed=5).orders(K, torch.device("cpu"))
    # By hand: each task's gradient w.r.t. the features, flattened over batch and features, then PCGrad,
    # then one trunk backward of the combined feature gradient.
    model.zero_grad(set_to_none=True)
    features = model.trunk(x)
    detached = features.detach().requires_grad_()
    losses = model.losses([head(detached) for head in model.task_heads], ys)
    flat = [torch.autograd.grad(loss, detached, retain_graph=True)[0].reshape(-1) for loss in losses]
    sum(losses).backward()  # heads: ordinary gradients
    features.backward(mf.reference.pcgrad(torch.stack(flat), orders).to(features.dtype).view_as(features))
    expected = grads_of(model.parameters())

    got = _fork_backward(model, x, ys, mf.PCGrad(seed=5))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-13)


def test_fork_returns_k_aliases_and_k1_works():
    f = torch.randn(4, 6, requires_grad=True)
    feats = mf.fork(f, 1, aggregator=mf.PCGrad())
    assert len(feats) == 1 and torch.equal(feats[0], f)
    (feats[0] * 2).sum().backward()
    torch.testing.assert_close(f.grad, torch.full_like(f, 2.0))


def test_unused_head_counts_as_a_zero_gradient():
    f = torch.randn(3, 5, requires_grad=True)
    a, b, c = mf.fork(f, 3, aggregator=mf.PCGrad(seed=0))
    (a.sum() - b.sum()).backward()
    assert torch.isfinite(f.grad).all()


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_degenerate_feature_gradients_stay_finite(scale):
    f = torch.randn(8, 16, requires_grad=True)
    feats = mf.fork(f, 3, aggregator=mf.PCGrad(seed=1))
    (scale * (feats[0].sum() - feats[1].sum() + feats[2].pow(2).sum())).backward()
    assert torch.isfinite(f.grad).all()


def test_fork_gradients_flow_with_float32_and_adam():
    model, x, ys = origin_batch(K=3, batch=16)
    model.float()
    x = x.float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    agg = mf.PCGrad(seed=0)
    first = None
    for _ in range(15):
        opt.zero_grad()
        feats = mf.fork(model.trunk(x), 3, aggregator=agg)
        loss = sum(model.losses([h(f) for h, f in zip(model.task_heads, feats)], ys))
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert sum(model.losses(model(x), ys)).item() < 0.5 * first


@pytest.mark.parametrize("make", [mf.ExcessMTL, mf.MoCo])
def test_aggregators_with_per_coordinate_state_are_refused(make):
    features = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"aggregator: .* per-coordinate state"):
        mf.fork(features, 2, aggregator=make())


def test_an_alias_without_a_gradient_is_reported():
    features = torch.randn(4, 3, requires_grad=True)
    feats = mf.fork(features, 3, aggregator=mf.MGDA())
    with pytest.warns(UserWarning, match=r"tasks \[2\] received no gradient"):
        (feats[0].sum() + feats[1].pow(2).sum()).backward()
