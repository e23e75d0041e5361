"""Loss-level dynamic weighting: formulas, state round trips, use with aggregators, bad arguments."""
import math

import pytest
import torch

import mtl_fast as mf
from mtl_fast import loss_weighting as W
from mtl_fast.apps.models import MultiTaskNet


def losses_of(*values):
    return [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]


def test_dwa_formula_and_epochs():
    dwa = W.DWA(T=2.0)
    assert torch.equal(dwa.weights(losses_of(1.0, 2.0)), torch.ones(2, dtype=torch.float64))
    dwa.end_epoch()
    dwa.weights(losses_of(0.5, 2.0))
    dwa.weights(losses_of(0.5, 2.0))
    dwa.end_epoch()
    r = torch.tensor([0.5, 1.0], dtype=torch.float64)
    expected = 2 * torch.softmax(r / 2.0, 0)
    assert torch.allclose(dwa.weights(losses_of(3.0, 3.0)), expected)
    state = dwa.state_dict()
    other = W.DWA(T=2.0)
    other.load_state_dict(state)
    assert torch.equal(other.weights(losses_of(1.0, 1.0)), dwa.weights(losses_of(1.0, 1.0)))


def test_uncertainty_weighting():
    uw = W.UncertaintyWeighting(2)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.0, math.log(4.0)]))
    losses = losses_of(1.0, 2.0)
    total = uw.combine(losses)
    assert torch.allclose(total.double(), torch.tensor(0.5 * 1.0 + 0.5 / 4 * 2.0 + 0.5 * math.log(4.0),
                                                       dtype=torch.float64), atol=1e-6)
    total.backward()
    assert uw.log_vars.grad is not None
    other = W.UncertaintyWeighting(2)
    other.load_state_dict(uw.state_dict())
    assert torch.equal(other.log_vars, uw.log_vars)
    assert torch.allclose(uw.weights(losses), torch.tensor([0.5, 0.125], dtype=torch.float64))


def test_gradnorm_moves_weight_to_the_lagging_task():
    gn = W.GradNorm(alpha=1.5, lr=0.1)
    G = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert torch.equal(gn.weights(losses_of(1.0, 1.0), G), torch.ones(2, dtype=torch.float64))
    # task 0 has the larger gradient: its weight goes down, and the weights still sum to K
    w = gn.weights(losses_of(1.0, 1.0), G)
    assert w[0] < 1 < w[1] and torch.allclose(w.sum(), torch.tensor(2.0, dtype=torch.float64))
    state = gn.state_dict()
    other = W.GradNorm()
    other.load_state_dict(state)
    assert torch.equal(other.weights(losses_of(1.0, 1.0), G), gn.weights(losses_of(1.0, 1.0), G))


def test_famo_weights_and_update():
    famo = W.FAMO(2)
    w = famo.weights(losses_of(1.0, 4.0))
    assert torch.allclose(w, torch.tensor([0.8, 0.2], dtype=torch.float64), atol=1e-6)  # z / L, normalised
    famo.update(losses_of(0.5, 4.0))  # task 0 improved: its logit goes down
    assert famo.logits[0] < famo.logits[1]
    other = W.FAMO(2)
    other.load_state_dict(famo.state_dict())
    assert torch.equal(other.logits, famo.logits) and other.adam_step == 1
    with pytest.raises(RuntimeError, match="weights"):
        W.FAMO(2).update(losses_of(1.0, 1.0))


def test_rlw_reproducible_and_state():
    a, b = W.RLW(seed=3), W.RLW(seed=3)
    wa = a.weights(losses_of(1.0, 1.0, 1.0))
    assert torch.equal(wa, b.weights(losses_of(1.0, 1.0, 1.0))) and torch.allclose(wa.sum(), torch.tensor(1.0,
                                                                                          dtype=torch.float64))
    state = a.state_dict()
    c = W.RLW(seed=0)
    c.load_state_dict(state)
    assert torch.equal(c.weights(losses_of(1.0, 1.0, 1.0)), a.weights(losses_of(1.0, 1.0, 1.0)))


@pytest.mark.parametrize("make", [lambda: W.DWA(), lambda: W.UncertaintyWeighting(3), lambda: W.FAMO(3),
                                  lambda: W.RLW(seed=0)])
def test_with_aggregators_on_multitasknet(make):
    torch.manual_seed(0)
    net = MultiTaskNet([10] * 3)
    weighting = make()
    x, ys = torch.randn(2, 3, 28, 28), [torch.randint(0, 10, (2,)) for _ in range(3)]
    for agg in (mf.Sum(), mf.UPGrad()):
        net.zero_grad()
        mf.backward(weighting.weighted_losses(net.losses(net(x), ys)), net.trunk.parameters(), aggregator=agg)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_gradnorm_as_aggregator_matches_weights():
    torch.manual_seed(0)
    shared = torch.randn(5, requires_grad=True)
    A = torch.randn(3, 5)
    losses = list(((A @ shared) ** 2).unbind())
    gn = W.GradNorm()
    weights = mf.backward(losses, [shared], aggregator=gn.aggregator(losses))
    assert torch.equal(weights, torch.ones(3, dtype=torch.float64)) and gn.task_weights is not None


@pytest.mark.parametrize("make, error, name", [
    (lambda: W.DWA(T=0.0), ValueError, "T"), (lambda: W.UncertaintyWeighting(0), ValueError, "num_tasks"),
    (lambda: W.GradNorm(alpha=-1.0), ValueError, "alpha"), (lambda: W.FAMO(2, w_lr=0), ValueError, "w_lr"),
    (lambda: W.FAMO(2, min_losses=[0.0]), ValueError, "min_losses"), (lambda: W.RLW(seed=1.5), TypeError, "seed"),
    (lambda: W.DWA().weights(torch.ones(2, 2)), ValueError, "losses"),
    (lambda: W.GradNorm().weights(losses_of(1.0, 1.0)), TypeError, "G"),
    (lambda: W.GradNorm().weights(losses_of(1.0, 1.0), torch.eye(3)), ValueError, "G"),
    (lambda: W.FAMO(3).weights(losses_of(1.0, 1.0)), ValueError, "losses"),
])
def test_bad_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_steps_leave_the_state_as_it_was(bad):
    """An AMP overflow step (a NaN or infinite loss or Gram matrix, skipped by GradScaler) must not poison the
    state: DWA leaves it out of the epoch's mean, GradNorm keeps its weights (and takes L(0) from the first finite
    step), FAMO takes no logit step. Every later weight matches a run that never saw the bad step."""
    K = 3
    steps = [torch.tensor([1.0 + 0.3 * t, 2.0 / (1 + t), 0.5 + 0.1 * t], dtype=torch.float64) for t in range(6)]
    Gs = [torch.diag(torch.tensor([1.0 + t, 2.0, 0.5 * (1 + t)], dtype=torch.float64)) for t in range(6)]
    broken = torch.tensor([1.0, bad, 0.5], dtype=torch.float64)

    seen_bad, clean = W.DWA(T=2.0), W.DWA(T=2.0)
    for t, losses in enumerate(steps):
        if t == 2:
            seen_bad.weights(broken)
        assert torch.equal(seen_bad.weights(losses), clean.weights(losses))
        seen_bad.end_epoch()
        clean.end_epoch()
    assert torch.isfinite(seen_bad.weights(steps[0])).all()
    epoch_of_bad_steps_only = W.DWA()
    epoch_of_bad_steps_only.weights(broken)
    epoch_of_bad_steps_only.end_epoch()
    assert epoch_of_bad_steps_only.history == []

    for bad_first in (False, True):
        seen_bad, clean = W.GradNorm(), W.GradNorm()
        if bad_first:  # L(0) then comes from the first finite step
            assert torch.equal(seen_bad.weights(broken, Gs[0]), torch.ones(K, dtype=torch.float64))
        for t, (losses, G) in enumerate(zip(steps, Gs)):
            if t == 2:
                seen_bad.weights(broken, G)
                bad_G = G.clone()
                bad_G[1, 1] = bad
                seen_bad.weights(losses, bad_G)
            assert torch.equal(seen_bad.weights(losses, G), clean.weights(losses, G)), (bad_first, t)

    seen_bad, clean = W.FAMO(K), W.FAMO(K)
    for t in range(len(steps) - 1):
        if t == 2:
            seen_bad.weights(broken)
            seen_bad.update(steps[t])
            seen_bad.weights(steps[t])
            seen_bad.update(broken)
        assert torch.equal(seen_bad.weights(steps[t]), clean.weights(steps[t]))
        seen_bad.update(steps[t + 1])
        clean.update(steps[t + 1])
        assert torch.equal(seen_bad.logits, clean.logits) and torch.isfinite(seen_bad.logits).all()
        assert torch.equal(seen_bad.adam_m, clean.adam_m) and seen_bad.adam_step == clean.adam_step
