"""What every method of zoo II must do: finite on degenerate input, all-NaN weights and untouched state for a
non-finite G (or J), state_dict round trips, and usability in mf.aggregate / mf.backward / mf.fork."""
import pytest
import torch

import mtl_fast as mf
from zoo2_cases import degenerate_jacobians, jacobian, same_state, snapshot

GRAM = {
    "ConFIG": lambda: mf.ConFIG(),
    "FairGrad-0.5": lambda: mf.FairGrad(0.5), "FairGrad-2": lambda: mf.FairGrad(2.0),
    "SDMGrad": lambda: mf.SDMGrad(), "MoDo": lambda: mf.MoDo(), "CRMOGM-MGDA": lambda: mf.CRMOGM(mf.MGDA()),
    "CRMOGM-SDMGrad": lambda: mf.CRMOGM(mf.SDMGrad(), alpha=0.5), "Krum": lambda: mf.Krum(0),
    "Random": lambda: mf.Random(seed=0), "DBMTL": lambda: mf.DBMTL(),
}
ON_J = {"TrimmedMean": lambda: mf.TrimmedMean(0), "ExcessMTL": lambda: mf.ExcessMTL(), "MoCo": lambda: mf.MoCo()}
STATEFUL = ["SDMGrad", "MoDo", "CRMOGM-MGDA", "CRMOGM-SDMGrad", "DBMTL"]


def gram_weights(agg, G):
    if agg.needs_losses:
        agg.update_losses(torch.linspace(0.5, 2.0, G.shape[0], dtype=torch.float64))
    return agg.weights(G)


@pytest.mark.parametrize("case", sorted(degenerate_jacobians()))
@pytest.mark.parametrize("name", sorted(GRAM))
def test_gram_methods_finite_on_degenerate_input(name, case):
    J = degenerate_jacobians()[case]
    if name == "Krum" and J.shape[0] < 3:
        pytest.skip("Krum needs K >= n_byzantine + 3")
    agg = GRAM[name]()
    for _ in range(3):  # stateful methods: also on their later steps
        w = gram_weights(agg, J @ J.T)
        assert w.shape == (J.shape[0],) and w.dtype == torch.float64
        assert torch.isfinite(w).all(), (name, case, w)
        assert torch.isfinite(J.T @ w).all()


@pytest.mark.parametrize("case", sorted(degenerate_jacobians()))
@pytest.mark.parametrize("name", sorted(ON_J))
def test_jacobian_methods_finite_on_degenerate_input(name, case):
    J = degenerate_jacobians()[case]
    agg = ON_J[name]()
    for _ in range(3):
        assert torch.isfinite(mf.aggregate(J, agg)).all(), (name, case)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", sorted(GRAM))
def test_nonfinite_gram_gives_nan_weights_and_keeps_state(name, bad):
    agg = GRAM[name]()
    G = jacobian(4) @ jacobian(4).T
    gram_weights(agg, G)
    before = snapshot(agg.state_dict())
    broken = G.clone()
    broken[1, 2] = broken[2, 1] = bad
    w = gram_weights(agg, broken)
    assert w.shape == (4,) and torch.isnan(w).all()
    if name != "Random":  # its generator advances (documented): the state is the generator's
        assert same_state(snapshot(agg.state_dict()), before)
    # and the next finite step is the one an uninterrupted run takes
    twin = GRAM[name]()
    gram_weights(twin, G)
    if name != "Random":
        assert torch.allclose(gram_weights(agg, G), gram_weights(twin, G), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ExcessMTL", "MoCo"])
def test_nonfinite_jacobian_keeps_state(name):
    agg = ON_J[name]()
    J = jacobian(4)
    mf.aggregate(J, agg)
    before = snapshot(agg.state_dict())
    broken = J.clone()
    broken[2, 5] = float("nan")
    assert torch.isnan(mf.aggregate(broken, agg)).any()
    assert same_state(snapshot(agg.state_dict()), before)


@pytest.mark.parametrize("name", STATEFUL + ["Random"])
def test_gram_state_dict_round_trip(name):
    agg, resumed = GRAM[name](), GRAM[name]()
    Gs = [jacobian(5, seed=s) @ jacobian(5, seed=s).T for s in range(4)]
    for G in Gs[:2]:
        gram_weights(agg, G)
    resumed.load_state_dict(snapshot(agg.state_dict()))
    for G in Gs[2:]:
        assert torch.equal(gram_weights(agg, G), gram_weights(resumed, G))
    agg.reset()
    fresh = GRAM[name]()
    if name != "Random":
        assert torch.equal(gram_weights(agg, Gs[0]), gram_weights(fresh, Gs[0]))


@pytest.mark.parametrize("name", ["ExcessMTL", "MoCo"])
def test_jacobian_state_dict_round_trip_and_shape_check(name):
    agg, resumed = ON_J[name](), ON_J[name]()
    Js = [jacobian(4, seed=s) for s in range(4)]
    for J in Js[:2]:
        mf.aggregate(J, agg)
    resumed.load_state_dict(snapshot(agg.state_dict()))
    for J in Js[2:]:
        assert torch.equal(mf.aggregate(J, agg), mf.aggregate(J, resumed))
    with pytest.raises(ValueError, match="reset"):
        mf.aggregate(jacobian(4, P=10), agg)
    agg.reset()
    mf.aggregate(jacobian(4, P=10), agg)
    assert not agg.representation_level_ok


@pytest.mark.parametrize("name", ["ExcessMTL", "MoCo"])
def test_jacobian_state_updated_in_place_leaves_checkpoints_alone(name):
    # the steps write the state into buffers they keep: never into what state_dict() returned or
    # load_state_dict() was given
    agg, resumed = ON_J[name](), ON_J[name]()
    mf.aggregate(jacobian(4), agg)
    checkpoint = agg.state_dict()
    kept = snapshot(checkpoint)
    resumed.load_state_dict(checkpoint)
    for J in (jacobian(4, seed=1), jacobian(4, seed=2) * float("inf"), jacobian(4, seed=3)):
        assert torch.allclose(mf.aggregate(J, agg), mf.aggregate(J, resumed), rtol=0, atol=0, equal_nan=True)
    assert same_state(checkpoint, kept)



@pytest.mark.parametrize("name", sorted(GRAM) + sorted(ON_J))
def test_backward_and_fork(name):
    torch.manual_seed(0)
    agg = {**GRAM, **ON_J}[name]()
    trunk, heads = torch.nn.Linear(6, 5).double(), [torch.nn.Linear(5, 1).double() for _ in range(3)]
    x = torch.randn(8, 6, dtype=torch.float64)

    def losses(features):
        return [head(f).pow(2).mean() for head, f in zip(heads, features)]

    first = losses([trunk(x)] * 3)
    if agg.needs_losses:
        agg.update_losses(first)
    weights = mf.backward(first, trunk.parameters(), aggregator=agg)
    assert all(torch.isfinite(p.grad).all() for p in trunk.parameters())
    assert (weights is None) == (not isinstance(agg, mf.GramAggregator))
    if agg.representation_level_ok:
        trunk.zero_grad()
        features = mf.fork(trunk(x), 3, aggregator=agg)
        step = losses(features)
        if agg.needs_losses:
            agg.update_losses(step)
        sum(step).backward()
        assert all(torch.isfinite(p.grad).all() for p in trunk.parameters())


def test_flags():
    assert mf.DBMTL.needs_losses and mf.CRMOGM(mf.DBMTL()).needs_losses and not mf.CRMOGM(mf.MGDA()).needs_losses
    assert not mf.ExcessMTL.representation_level_ok and not mf.MoCo.representation_level_ok
    assert mf.TrimmedMean.representation_level_ok and not mf.PCGrad.needs_losses
    for cls in (mf.TrimmedMean, mf.ExcessMTL, mf.MoCo):
        assert not issubclass(cls, mf.GramAggregator)


@pytest.mark.parametrize("name", ["ConFIG", "FairGrad-0.5", "SDMGrad", "MoDo", "CRMOGM-MGDA", "DBMTL"])
def test_weights_differentiable_in_g(name):
    # Krum and Random are piecewise constant in G: their weights carry no autograd history
    G = (jacobian(4) @ jacobian(4).T).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda G: gram_weights(GRAM[name](), (G + G.T) / 2), (G,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("make", [mf.ExcessMTL, mf.MoCo], ids=["ExcessMTL", "MoCo"])
def test_jacobian_state_of_a_jacobian_that_requires_grad_holds_no_graph(make):
    """A J that requires grad is aggregated like its detached copy, and the state holds no autograd graph."""
    J = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    with_grad, detached = make(), make()
    for _ in range(2):
        torch.testing.assert_close(mf.aggregate(J, with_grad).detach(), mf.aggregate(J.detach(), detached))
    state = with_grad.state_dict()
    assert all(not t.requires_grad for t in state[next(iter(state))])
