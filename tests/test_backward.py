"""mtl_fast.backward on the origin document's network against plain autograd and a hand-written loop."""
import pytest
import torch

import mtl_fast as mf

from helpers import grads_of, origin_batch


def _plain_grads(model, x, ys, weights=None):
    model.zero_grad(set_to_none=True)
    losses = model.losses(model(x), ys)
    weights = weights or [1.0] * len(losses)
    sum(w * loss for w, loss in zip(weights, losses)).backward()
    return grads_of(model.parameters())


@pytest.mark.parametrize("aggregator,weights", [(mf.Sum(), None), (mf.Mean(), [1 / 3] * 3),
                                                 (mf.Weighted([0.5, 2.0, -1.0]), [0.5, 2.0, -1.0])])
def test_fixed_weights_equal_plain_autograd_exactly(aggregator, weights):
    model, x, ys = origin_batch(K=3)
    expected = _plain_grads(model, x, ys, weights)
    model.zero_grad(set_to_none=True)
    w = mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=aggregator)
    for got, exp in zip(grads_of(model.parameters()), expected):
        assert torch.equal(got, exp)
    torch.testing.assert_close(w, torch.tensor(weights or [1.0] * 3, dtype=torch.float64))


def _hand_pcgrad(model, x, ys, orders):
    """Per-task gradients by K autograd.grad calls, PCGrad on the flattened shared gradient, heads summed."""
    losses = model.losses(model(x), ys)
    trunk = list(model.trunk.parameters())
    flat = []
    for loss in losses:
        gs = torch.autograd.grad(loss, trunk, retain_graph=True)
        flat.append(torch.cat([g.reshape(-1) for g in gs]))
    update = mf.reference.pcgrad(torch.stack(flat), orders).to(flat[0].dtype)
    shared = list(torch.split(update, [p.numel() for p in trunk]))
    heads = list(model.task_heads.parameters())
    head_grads = torch.autograd.grad(sum(losses), heads)
    return [s.view_as(p) for s, p in zip(shared, trunk)], list(head_grads)


@pytest.mark.parametrize("jacobian", ["batched", "loop", "auto"])
def test_pcgrad_equals_a_hand_written_per_task_loop(jacobian):
    K = 4
    model, x, ys = origin_batch(K=K)
    orders = mf.PCGrad(seed=11).orders(K, torch.device("cpu"))  # the draw backward's PCGrad(seed=11) will make
    exp_shared, exp_heads = _hand_pcgrad(model, x, ys, orders)
    model.zero_grad(set_to_none=True)
    w = mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad(seed=11),
                    jacobian=jacobian)
    assert w.shape == (K,) and w.dtype == torch.float64
    for p, e in zip(model.trunk.parameters(), exp_shared):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
    # Heads are never projected: exactly their ordinary gradient of the loss sum.
    for p, e in zip(model.task_heads.parameters(), exp_heads):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)


def test_pcgrad_float32_model():
    K = 3
    model, x, ys = origin_batch(K=K)
    model.float()
    x = x.float()
    orders = mf.PCGrad(seed=2).orders(K, torch.device("cpu"))
    exp_shared, _ = _hand_pcgrad(model, x, ys, orders)
    model.zero_grad(set_to_none=True)
    mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad(seed=2))
    for p, e in zip(model.trunk.parameters(), exp_shared):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, e.float(), rtol=1e-4, atol=1e-6)


def test_gradients_accumulate_like_autograd():
    model, x, ys = origin_batch(K=3)
    agg = mf.PCGrad(seed=0)
    model.zero_grad(set_to_none=True)
    mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad(seed=0))
    once = grads_of(model.parameters())
    model.zero_grad(set_to_none=True)
    for _ in range(2):
        mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad(seed=0))
    for got, g1 in zip(grads_of(model.parameters()), once):
        torch.testing.assert_close(got, 2 * g1)
    del agg


def test_unused_shared_parameter_gets_no_gradient():
    model, x, ys = origin_batch(K=2)
    extra = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    model.zero_grad(set_to_none=True)
    mf.backward(model.losses(model(x), ys), [*model.trunk.parameters(), extra], aggregator=mf.PCGrad(seed=0))
    assert extra.grad is None
    assert all(p.grad is not None for p in model.parameters())


def test_k1_pcgrad_is_the_plain_gradient():
    model, x, ys = origin_batch(K=1)
    expected = _plain_grads(model, x, ys)
    model.zero_grad(set_to_none=True)
    mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad())
    for got, exp in zip(grads_of(model.parameters()), expected):
        torch.testing.assert_close(got, exp)


def test_retain_graph_allows_a_second_backward():
    model, x, ys = origin_batch(K=2)
    losses = model.losses(model(x), ys)
    mf.backward(losses, model.trunk.parameters(), aggregator=mf.PCGrad(seed=0), retain_graph=True)
    mf.backward(losses, model.trunk.parameters(), aggregator=mf.PCGrad(seed=0))
    with pytest.raises(RuntimeError):
        mf.backward(losses, model.trunk.parameters(), aggregator=mf.PCGrad(seed=0))


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_tiny_zero_and_huge_losses_stay_finite(scale):
    model, x, ys = origin_batch(K=3)
    model.zero_grad(set_to_none=True)
    losses = [scale * loss for loss in model.losses(model(x), ys)]
    w = mf.backward(losses, model.trunk.parameters(), aggregator=mf.PCGrad(seed=0))
    assert torch.isfinite(w).all()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all()


def test_losses_may_be_a_1d_tensor():
    model, x, ys = origin_batch(K=2)
    expected = _plain_grads(model, x, ys)
    model.zero_grad(set_to_none=True)
    mf.backward(torch.stack(model.losses(model(x), ys)), model.trunk.parameters())
    for got, exp in zip(grads_of(model.parameters()), expected):
        torch.testing.assert_close(got, exp)


def test_training_the_origin_network_with_adam_reduces_the_loss():
    model, x, ys = origin_batch(K=3, batch=16)
    model.float()
    x = x.float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        losses = model.losses(model(x), ys)
        first = first if first is not None else sum(losses).item()
        mf.backward(losses, model.trunk.parameters(), aggregator=mf.PCGrad(seed=0))
        opt.step()
    assert sum(model.losses(model(x), ys)).item() < 0.5 * first


def test_an_aggregator_that_reads_the_losses_gets_them():
    """DBMTL's weights need the step's losses: backward hands them over (detached) before weights(G), so the
    result equals handing them over by hand and combining the per-task gradients with those weights."""
    model, x, ys = origin_batch(K=3, batch=4)
    trunk = list(model.trunk.parameters())
    losses = model.losses(model(x), ys)
    J = [torch.stack(rows) for rows in zip(*(torch.autograd.grad(l, trunk, retain_graph=True) for l in losses))]
    by_hand = mf.DBMTL()
    by_hand.update_losses([loss.detach() for loss in losses])
    expected = mf.reference.combine(J, by_hand.weights(mf.gram(J)))
    weights = mf.backward(losses, trunk, aggregator=mf.DBMTL())
    assert weights.shape == (3,)
    for p, e in zip(trunk, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
