"""The README's AMP recipe: scaled losses through mf.backward with torch.amp.GradScaler, on the CPU.

GradScaler multiplies every loss by its scale s, so mf.backward sees the gradients s g_k and their Gram matrix
s^2 G. The recipe hands the aggregator G itself (``Unscaled``): most aggregators' weights do not depend on the
gradients' scale, but Nash-MTL's and GradNorm's do, and would otherwise come out wrong by a power of s.
"""
import copy

import pytest
import torch

import mtl_fast as mf

from states import same_state

# bfloat16 and float16 autocast both exist on the CPU in the torch versions this package supports
AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


# --- the recipe, as the README shows it ----------------------------------------------------------------------

class Unscaled(mf.GramAggregator):
    """Computes ``aggregator``'s weights from the Gram matrix of the unscaled gradients.

    ``scale`` is the loss scale as a tensor, ``scaler.scale(torch.ones((), device=...))``: reading it as a number
    (``scaler.get_scale()``) would synchronise with the device on every step."""

    def __init__(self, aggregator: mf.GramAggregator, scale: torch.Tensor) -> None:
        self.aggregator, self.scale = aggregator, scale

    def weights(self, G: torch.Tensor) -> torch.Tensor:
        return self.aggregator.weights(G / self.scale.to(G.dtype) ** 2)


def scaled_backward(losses, shared, scaler, aggregator):
    """mf.backward of the scaled losses; .grad then holds s times the update, which scaler.step unscales."""
    scale = scaler.scale(torch.ones((), device=losses[0].device))
    return mf.backward([scaler.scale(loss) for loss in losses], shared, aggregator=Unscaled(aggregator, scale))


def training_step(net, opt, scaler, x, ys, aggregator, weighting=None, autocast_dtype=torch.bfloat16,
                  corrupt=None):
    with torch.autocast("cpu", dtype=autocast_dtype):
        losses = net.losses(net(x), ys)
    if corrupt is not None:  # the tests' way to make this step overflow
        losses = corrupt(losses)
    if weighting is not None:
        losses = weighting.weighted_losses(losses)  # a loss weighting reads the true, unscaled losses
    scaled_backward(losses, net.trunk.parameters(), scaler, aggregator)
    scaler.step(opt)  # unscales .grad, and skips the step if it holds an inf or a NaN
    scaler.update()   # after a skipped step: a smaller scale
    opt.zero_grad()


# --- the checks ----------------------------------------------------------------------------------------------

def trunk_J(net, losses):
    trunk = list(net.trunk.parameters())
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, trunk, retain_graph=True)])
                        for loss in losses])


def trunk_grad(net):
    return torch.cat([p.grad.reshape(-1) for p in net.trunk.parameters()])


@pytest.mark.parametrize("make_aggregator", [mf.NashMTL, mf.UPGrad, lambda: mf.GradVac(seed=0)],
                         ids=["NashMTL", "UPGrad", "GradVac"])
def test_scaled_backward_gives_the_unscaled_update(small_multitask_net, make_aggregator):
    net, x, ys = small_multitask_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    losses = net.losses(net(x), ys)
    J = trunk_J(net, losses)
    expected = make_aggregator().weights(J @ J.T) @ J
    scaled_backward(losses, net.trunk.parameters(), scaler, make_aggregator())
    scaler.unscale_(opt)
    assert torch.allclose(trunk_grad(net), expected, rtol=1e-9, atol=1e-12)


def test_without_unscaling_nash_mtl_is_off_by_the_scale(small_multitask_net):
    """Why the recipe unscales G: Nash-MTL's update does not grow with the gradients, so the unscaled
    .grad comes out s times too small."""
    net, x, ys = small_multitask_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    losses = net.losses(net(x), ys)
    J = trunk_J(net, losses)
    expected = mf.NashMTL(max_norm=0).weights(J @ J.T) @ J
    mf.backward([scaler.scale(loss) for loss in losses], net.trunk.parameters(), aggregator=mf.NashMTL(max_norm=0))
    scaler.unscale_(opt)
    assert torch.allclose(trunk_grad(net) * 2.0 ** 16, expected, rtol=1e-9)


def gradvac_and_dwa():
    aggregator, weighting = mf.GradVac(seed=0), mf.loss_weighting.DWA()
    return aggregator, weighting, [aggregator, weighting]


def nash_mtl_and_dwa():
    aggregator, weighting = mf.NashMTL(), mf.loss_weighting.DWA()
    return aggregator, weighting, [aggregator, weighting]


def state_of(objects):
    states = [copy.deepcopy(o.state_dict()) for o in objects]
    for state in states:
        # Nash-MTL counts its calls (for update_weights_every) and counts the skipped one too; what it computed
        # is in last_beta. GradVac drew that step's visiting orders before G was known to be bad: its random
        # stream moves on, its targets do not.
        state.pop("step", None)
        # a random generator (GradVac's visiting orders, where the state holds it) moves on every call, skipped
        # or not, like every random draw of the step
        state.pop("generators", None)
    return states


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("make", [gradvac_and_dwa, nash_mtl_and_dwa], ids=["GradVac+DWA", "NashMTL+DWA"])
def test_overflow_skips_the_step_and_keeps_the_state(small_multitask_net, make, autocast_dtype):
    net, x, ys = small_multitask_net(dtype=torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    aggregator, weighting, stateful = make()
    training_step(net, opt, scaler, x, ys, aggregator, weighting, autocast_dtype)
    params = [p.detach().clone() for p in net.parameters()]
    state, scale = state_of(stateful), scaler.get_scale()

    def overflow(losses):
        return [losses[0], losses[1] * float("inf"), *losses[2:]]
    training_step(net, opt, scaler, x, ys, aggregator, weighting, autocast_dtype, corrupt=overflow)

    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params)), "the overflowed step was taken"
    assert scaler.get_scale() == scale / 2
    assert same_state(state_of(stateful), state), "a skipped step changed the aggregator's or weighting's state"
    training_step(net, opt, scaler, x, ys, aggregator, weighting, autocast_dtype)
    assert not all(torch.equal(p, q) for p, q in zip(net.parameters(), params)), "training did not resume"


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES, ids=str)
def test_gradnorm_under_amp(small_multitask_net, autocast_dtype):
    """GradNorm, a loss weighting that reads G, as the aggregator: its weights come from the unscaled norms,
    and a skipped step leaves them as they were."""
    net, x, ys = small_multitask_net(dtype=torch.float32)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    gradnorm, reference = mf.loss_weighting.GradNorm(), mf.loss_weighting.GradNorm()
    with torch.autocast("cpu", dtype=autocast_dtype):
        losses = net.losses(net(x), ys)
    J = trunk_J(net, losses).double()
    reference.weights(losses, J @ J.T)
    scaled_backward(losses, net.trunk.parameters(), scaler, gradnorm.aggregator(losses))
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    assert torch.allclose(gradnorm.task_weights, reference.task_weights, rtol=1e-5)

    state = state_of([gradnorm])
    with torch.autocast("cpu", dtype=autocast_dtype):
        losses = net.losses(net(x), ys)
    losses[0] = losses[0] * float("inf")
    scaled_backward(losses, net.trunk.parameters(), scaler, gradnorm.aggregator(losses))
    params = [p.detach().clone() for p in net.parameters()]
    scaler.step(opt)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params))
    assert same_state(state_of([gradnorm]), state)
