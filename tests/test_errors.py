"""Bad input gives a clear ValueError/TypeError naming the argument, and nothing is written to .grad."""
import pytest
import torch

import mtl_fast as mf

from helpers import grads_of, origin_batch


@pytest.fixture
def setup():
    model, x, ys = origin_batch(K=3, batch=4)
    model.zero_grad(set_to_none=True)
    return model, model.losses(model(x), ys)


def _assert_untouched(model):
    assert all(g is None for g in grads_of(model.parameters()))


@pytest.mark.parametrize("losses,exc,match", [
    ([], ValueError, "losses: expected at least one loss"),
    ("abc", TypeError, "losses: expected a sequence"),
    ([1.0], TypeError, r"losses\[0\]: expected a scalar Tensor"),
    (torch.zeros(2, 2, requires_grad=True), ValueError, "losses: expected a sequence of scalar losses or a 1-D"),
])
def test_backward_rejects_bad_loss_containers(setup, losses, exc, match):
    model, _ = setup
    with pytest.raises(exc, match=match):
        mf.backward(losses, model.trunk.parameters())
    _assert_untouched(model)


def test_backward_rejects_bad_losses(setup):
    model, losses = setup
    shared = list(model.trunk.parameters())
    cases = [
        ([losses[0], torch.ones(3, requires_grad=True).sum(0, keepdim=True).expand(2)], ValueError,
         r"losses\[1\]: expected a scalar loss"),
        ([losses[0], torch.tensor(1.0)], ValueError, r"losses\[1\]: does not require grad"),
        ([losses[0], torch.tensor(1, dtype=torch.int64)], TypeError, r"losses\[1\]: expected a floating dtype"),
        ([losses[0], torch.tensor(1.0, device="meta", requires_grad=True)], ValueError, r"losses\[1\]: is on meta"),
    ]
    for bad, exc, match in cases:
        for agg in (mf.Sum(), mf.PCGrad()):
            with pytest.raises(exc, match=match):
                mf.backward(bad, shared, aggregator=agg)
    _assert_untouched(model)


def test_backward_rejects_bad_parameters_and_options(setup):
    model, losses = setup
    shared = list(model.trunk.parameters())
    with pytest.raises(ValueError, match="shared_params: expected at least one parameter"):
        mf.backward(losses, [])
    with pytest.raises(TypeError, match="shared_params: expected an iterable"):
        mf.backward(losses, 3)
    with pytest.raises(ValueError, match=r"shared_params\[0\]: does not require grad"):
        mf.backward(losses, [torch.zeros(3)])
    with pytest.raises(ValueError, match=r"shared_params\[0\]: is not a leaf"):
        mf.backward(losses, [shared[0] * 2])
    with pytest.raises(ValueError, match=r"shared_params\[0\]: is on meta"):
        mf.backward(losses, [torch.zeros(3, device="meta", requires_grad=True)], aggregator=mf.PCGrad())
    with pytest.raises(TypeError, match="aggregator: expected an mtl_fast Aggregator"):
        mf.backward(losses, shared, aggregator="pcgrad")
    with pytest.raises(ValueError, match="jacobian: expected one of"):
        mf.backward(losses, shared, aggregator=mf.PCGrad(), jacobian="fast")
    with pytest.raises(ValueError, match="weights: Weighted has 2 weights but there are 3 tasks"):
        mf.backward(losses, shared, aggregator=mf.Weighted([1.0, 2.0]))
    _assert_untouched(model)


def test_a_failing_aggregator_writes_nothing(setup):
    model, losses = setup

    class Broken(mf.GramAggregator):
        def weights(self, G):
            raise RuntimeError("solver failed")

    with pytest.raises(RuntimeError, match="solver failed"):
        mf.backward(losses, model.trunk.parameters(), aggregator=Broken())
    _assert_untouched(model)


@pytest.mark.parametrize("weights,exc,match", [
    ([], ValueError, "weights: expected a non-empty 1-D"),
    ([[1.0, 2.0]], ValueError, "weights: expected a non-empty 1-D"),
    ([1.0, float("nan")], ValueError, "weights: every value must be finite"),
    ([1.0, float("inf")], ValueError, "weights: every value must be finite"),
    (["a"], TypeError, "weights: expected a sequence of numbers"),
    (torch.tensor([1 + 1j]), TypeError, "weights: expected real numbers"),
])
def test_weighted_rejects_bad_weights(weights, exc, match):
    with pytest.raises(exc, match=match):
        mf.Weighted(weights)


@pytest.mark.parametrize("J,exc,match", [
    (torch.zeros(3), ValueError, r"J: expected a \(K, P\) tensor"),
    (torch.zeros(2, 3, 4), ValueError, r"J: expected a \(K, P\) tensor"),
    ([], ValueError, "J: expected at least one"),
    ([torch.zeros(2, 3), torch.zeros(3, 3)], ValueError, r"J\[1\]: has 3 tasks in dim 0"),
    ([torch.zeros(2, 3), "x"], TypeError, r"J\[1\]: expected a Tensor"),
    ([torch.zeros(2, 3), torch.tensor(1.0)], ValueError, r"J\[1\]: expected shape \(K, ...\)"),
    (torch.zeros(2, 3, dtype=torch.int64), TypeError, "J: expected a floating dtype"),
    ([torch.zeros(2, 3), torch.zeros(2, 3, device="meta")], ValueError, r"J\[1\]: is on meta"),
    (torch.zeros(0, 3), ValueError, r"J: expected at least one task"),
    (5, TypeError, "J: expected a Tensor or a sequence"),
])
def test_functional_rejects_bad_jacobians(J, exc, match):
    for call in (mf.gram, lambda J: mf.aggregate(J, mf.PCGrad())):
        with pytest.raises(exc, match=match):
            call(J)


def test_functional_rejects_bad_aggregators_and_weights():
    J = torch.randn(3, 4)
    with pytest.raises(TypeError, match="aggregator: expected an mtl_fast Aggregator"):
        mf.aggregate(J, lambda J: J.sum(0))
    with pytest.raises(ValueError, match=r"weights: expected shape \(3,\)"):
        mf.combine(J, torch.ones(2))
    with pytest.raises(TypeError, match="weights: expected a floating dtype"):
        mf.combine(J, torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="weights: Weighted has 2 weights but there are 3 tasks"):
        mf.aggregate(J, mf.Weighted([1, 2]))


def test_pcgrad_rejects_bad_arguments():
    with pytest.raises(TypeError, match="seed: expected an int"):
        mf.PCGrad(seed="1")
    with pytest.raises(ValueError, match=r"G: expected a square \(K, K\) matrix"):
        mf.PCGrad().weights(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"orders: expected an int64 tensor of shape \(3, 2\)"):
        mf.PCGrad().weights(torch.eye(3), torch.zeros(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("args,exc,match", [
    (("x", 2), TypeError, "features: expected a Tensor"),
    ((torch.zeros(2, dtype=torch.int64), 2), TypeError, "features: expected a floating dtype"),
    ((torch.zeros(2), 0), ValueError, "num_tasks: expected at least 1"),
    ((torch.zeros(2), 2.0), TypeError, "num_tasks: expected an int"),
    ((torch.zeros(2), True), TypeError, "num_tasks: expected an int"),
])
def test_fork_rejects_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        mf.fork(*args)
    with pytest.raises(TypeError, match="aggregator: expected an mtl_fast Aggregator"):
        mf.fork(torch.zeros(2), 2, aggregator=None)


def test_task_specific_parameters_passed_as_shared_are_reported():
    """All the model's parameters as shared_params: the heads are reached by one loss each, and PCGrad would change
    their gradients; backward says so once, and warn_unshared=False silences it."""
    import warnings

    from helpers import origin_batch
    model, x, ys = origin_batch(K=3, batch=4)
    losses = model.losses(model(x), ys)
    with pytest.warns(UserWarning, match=r"6 of the \d+ shared_params are reached by one loss only"):
        mf.backward(losses, model.parameters(), aggregator=mf.PCGrad(seed=0), retain_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mf.backward(losses, model.parameters(), aggregator=mf.PCGrad(seed=0), warn_unshared=False)
