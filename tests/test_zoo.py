"""The method zoo: closed forms, paper properties, degenerate inputs, the reference oracle, TorchJD, end to end."""

import pytest
import torch

import mtl_fast as mf
from mtl_fast import _ops
from mtl_fast import reference as ref
from mtl_fast.aggregation import draw_pcgrad_orders, solve_nonnegative_qp
from mtl_fast.apps.models import MultiTaskNet

FACTORIES = {
    "MGDA": lambda: mf.MGDA(), "DualProj": lambda: mf.DualProj(), "UPGrad": lambda: mf.UPGrad(),
    "CAGrad": lambda: mf.CAGrad(0.5), "IMTLG": lambda: mf.IMTLG(), "GradVac": lambda: mf.GradVac(0.5, seed=0),
    "AlignedMTL": lambda: mf.AlignedMTL(), "AlignedMTL-median": lambda: mf.AlignedMTL(scale_mode="median"),
    "AlignedMTL-rmse": lambda: mf.AlignedMTL(scale_mode="rmse"), "NashMTL": lambda: mf.NashMTL(max_norm=0.0),
}
STATELESS = ["MGDA", "DualProj", "UPGrad", "CAGrad", "IMTLG", "AlignedMTL", "AlignedMTL-median",
             "AlignedMTL-rmse", "NashMTL"]
NON_CONFLICTING = ["MGDA", "DualProj", "UPGrad"]


def jacobian(K, P=24, seed=0, conflict=True):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, P, dtype=torch.float64, generator=g)
    if conflict and K > 1:
        J[1] = -J[0] + 0.3 * J[1]
    return J


def close(a, b, tol):
    return (a - b).norm() <= tol * (1 + b.norm())


# --- closed forms at K = 2 --------------------------------------------------------------------------------------

def test_mgda_closed_form_k2():
    G = torch.tensor([[4.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    gamma = (1.0 + 1.0) / (4.0 + 1.0 + 2.0)  # (G22 - G12) / (G11 + G22 - 2 G12)
    assert torch.allclose(mf.MGDA().weights(G), torch.tensor([gamma, 1 - gamma], dtype=torch.float64))
    # the iterative solver agrees with the closed form
    M = G / G.trace()
    assert torch.allclose(solve_nonnegative_qp(M, torch.zeros(1, 2, dtype=torch.float64), simplex=True)[0],
                          torch.tensor([gamma, 1 - gamma], dtype=torch.float64), atol=1e-8)


def test_dual_cone_closed_form_k2_orthogonal_and_conflicting():
    # orthogonal tasks: nothing to project, UPGrad and DualProj are the mean
    G = torch.diag(torch.tensor([1.0, 9.0], dtype=torch.float64))
    for agg in (mf.UPGrad(), mf.DualProj()):
        assert torch.allclose(agg.weights(G), torch.full((2,), 0.5, dtype=torch.float64))
    # g1 = (1, 0), g2 = (-1, 1): projecting g1 onto {d: g2.d >= 0} gives (1/2, 1/2) = g1 + 1/2 g2
    G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    v1 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.allclose(mf.UPGrad(pref_vector=[1.0, 0.0]).weights(G), v1, atol=1e-8)


def test_imtlg_and_aligned_k2_closed_forms():
    J = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    d = J.T @ mf.IMTLG().weights(J @ J.T)
    units = J / J.norm(dim=1, keepdim=True)
    projections = units @ d
    assert torch.allclose(projections[0], projections[1])
    # orthogonal gradients with norms 1 and 3: aligned ones both get norm 1 ('min')
    G = torch.diag(torch.tensor([1.0, 9.0], dtype=torch.float64))
    assert torch.allclose(mf.AlignedMTL(pref_vector=[1.0, 1.0]).weights(G),
                          torch.tensor([1.0, 1.0 / 3.0], dtype=torch.float64))


def test_nash_closed_form_orthogonal():
    G = torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64))  # beta_k = 1 / |g_k|
    assert torch.allclose(mf.NashMTL(max_norm=0.0).weights(G), torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_cagrad_c0_is_mean_and_k2_no_conflict():
    G = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert torch.allclose(mf.CAGrad(0.0).weights(G), torch.full((2,), 0.5, dtype=torch.float64))


# --- properties --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NON_CONFLICTING)
@pytest.mark.parametrize("K", [2, 3, 5, 9])
def test_never_conflicts(name, K):
    for seed in range(3):
        J = jacobian(K, seed=seed)
        d = J.T @ FACTORIES[name]().weights(J @ J.T)
        assert (J @ d).min() >= -1e-6 * (J @ J.T).trace() * (1 + d.abs().max())


@pytest.mark.parametrize("name", STATELESS)
def test_permutation_equivariance_and_scale_invariance(name):
    J = jacobian(5, seed=3)
    G = J @ J.T
    w = FACTORIES[name]().weights(G)
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.allclose(FACTORIES[name]().weights(G[perm][:, perm]), w[perm], atol=1e-7)
    scaled = FACTORIES[name]().weights(1e6 * G)
    if name == "NashMTL":  # beta_k (g_k . d) = 1: beta scales as 1 / sqrt(scale)
        scaled = scaled * 1e3
    assert torch.allclose(scaled, w, rtol=1e-6, atol=1e-8)


def test_mgda_dualproj_upgrad_optimality():
    J = jacobian(6, seed=5)
    G = J @ J.T
    w = mf.MGDA().weights(G)
    assert abs(w.sum() - 1) < 1e-12 and w.min() >= 0
    # MGDA's d satisfies d . g_k >= |d|^2 (Sener & Koltun's min-norm condition)
    d = J.T @ w
    assert (J @ d).min() >= d @ d - 1e-6 * G.trace()  # up to the solver's 1e-6 I regularisation
    # UPGrad without conflicts is the mean
    Jp = torch.rand(4, 10, dtype=torch.float64)
    assert torch.allclose(mf.UPGrad().weights(Jp @ Jp.T), torch.full((4,), 0.25, dtype=torch.float64))


def test_aligned_mtl_makes_gradients_orthonormal():
    J = jacobian(4, seed=2)
    G = J @ J.T
    agg = mf.AlignedMTL(pref_vector=[1.0, 0.0, 0.0, 0.0])
    B = torch.stack([mf.AlignedMTL(pref_vector=torch.eye(4)[i].tolist()).weights(G) for i in range(4)])
    aligned = B @ J
    gram = aligned @ aligned.T
    sigma = torch.linalg.eigvalsh(G).min()
    assert torch.allclose(gram, sigma * torch.eye(4, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(agg.weights(G), B[0])


def test_nash_solves_bargaining_and_clips():
    J = jacobian(4, seed=7, conflict=False)
    G = J @ J.T
    beta = mf.NashMTL(max_norm=0.0).weights(G)
    assert (beta > 0).all() and torch.allclose(G @ beta, 1 / beta, rtol=1e-6)
    clipped = mf.NashMTL(max_norm=0.5).weights(G)
    assert torch.allclose((clipped @ G @ clipped).sqrt(), torch.tensor(0.5, dtype=torch.float64))


def test_nash_update_every_reuses_weights():
    agg = mf.NashMTL(max_norm=0.0, update_weights_every=2)
    G1, G2 = (lambda J: J @ J.T)(jacobian(3, seed=1)), (lambda J: J @ J.T)(jacobian(3, seed=2))
    w1, w2, w3 = agg.weights(G1), agg.weights(G2), agg.weights(G2)
    assert torch.equal(w1, w2) and not torch.allclose(w2, w3)
    state = agg.state_dict()
    fresh = mf.NashMTL(max_norm=0.0, update_weights_every=2)
    fresh.load_state_dict(state)
    assert torch.equal(agg.weights(G1), fresh.weights(G1))


# --- degenerate inputs -------------------------------------------------------------------------------------------

def degenerate_grams():
    base = jacobian(3, seed=1, conflict=False)
    cases = {
        "identical": torch.stack([base[0]] * 3),
        "opposite": torch.stack([base[0], -base[0], base[1]]),
        "zero": torch.zeros(3, 24, dtype=torch.float64),
        "one-zero": torch.stack([base[0], torch.zeros(24, dtype=torch.float64), base[1]]),
        "tiny": 1e-30 * base, "huge": 1e30 * base, "mixed": torch.stack([1e-30 * base[0], 1e30 * base[1], base[2]]),
    }
    return {name: J @ J.T for name, J in cases.items()}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_degenerate_inputs_stay_finite(name):
    for case, G in degenerate_grams().items():
        w = FACTORIES[name]().weights(G)
        assert w.shape == (3,) and torch.isfinite(w).all(), (case, w)
    for K in (1, 64):
        J = jacobian(K, P=80, seed=K)
        w = FACTORIES[name]().weights(J @ J.T)
        assert w.shape == (K,) and torch.isfinite(w).all()
    assert torch.isfinite(FACTORIES[name]().weights(torch.ones(1, 1, dtype=torch.float64))).all()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch-ops"])
@pytest.mark.parametrize("name", list(FACTORIES) + ["PCGrad"])
def test_nonfinite_gram_gives_nan_weights_and_keeps_state(name, compiled, monkeypatch):
    """An overflowed or NaN gradient (AMP's fp16 overflow) gives all-NaN weights on every path instead of an error,
    finite garbage or a poisoned state: GradVac's targets and NashMTL's last solution stay as they were, so the
    next (finite) step matches a run that never saw the bad one."""
    if not compiled:
        monkeypatch.setattr(_ops.registry, "_reference_only", True)
    make = FACTORIES.get(name, lambda: mf.PCGrad(seed=0))
    for K in (1, 2, 5, 16):
        good = jacobian(K, seed=K)
        G_good = good @ good.T
        for bad in (float("nan"), float("inf"), float("-inf")):
            G_bad = G_good.clone()
            G_bad[K - 1, 0] = G_bad[0, K - 1] = bad
            seen_bad, clean = make(), make()
            # GradVac's visiting orders are pinned: drawn ones would advance with the bad step
            extra = (draw_pcgrad_orders(K, torch.device("cpu")),) if name == "GradVac" else ()
            first = (seen_bad.weights(G_good, *extra), clean.weights(G_good, *extra))
            w = seen_bad.weights(G_bad, *extra)
            assert w.shape == (K,) and torch.isnan(w).all(), (K, bad, w)
            if name == "PCGrad":
                continue  # stateless
            if name == "NashMTL":  # the step count moves on; give the clean run the same count
                clean.weighting.step += 1
            after, expected = seen_bad.weights(G_good, *extra), clean.weights(G_good, *extra)
            assert torch.equal(first[0], first[1]) and torch.allclose(after, expected, rtol=1e-12, atol=0), name


@pytest.mark.parametrize("name", list(FACTORIES) + ["PCGrad"])
def test_weights_are_differentiable(name):
    """weights(G) has the derivative autograd asks for, in reverse and in forward mode, on every path: where a
    compiled op has none (PCGrad, GradVac, the QPs), such a G takes the torch ops. A fresh aggregator per call
    (GradVac's orders come from its seed), so each is a function of J alone."""
    import torch.autograd.forward_ad as fwAD
    make = FACTORIES.get(name, lambda: mf.PCGrad(seed=0))
    K = 5
    J, dJ = jacobian(K, seed=3), jacobian(K, seed=4, conflict=False)
    probe = torch.arange(1.0, K + 1, dtype=torch.float64)

    def weights(J):
        return make().weights(J @ J.T)

    eps = 1e-6
    finite_difference = (weights(J + eps * dJ) - weights(J - eps * dJ)) / (2 * eps)
    assert finite_difference.abs().max() > 1e-3
    _, tangent = torch.func.jvp(weights, (J,), (dJ,))
    assert torch.allclose(tangent, finite_difference, rtol=1e-5, atol=1e-7), (tangent, finite_difference)
    with fwAD.dual_level():
        assert torch.allclose(fwAD.unpack_dual(weights(fwAD.make_dual(J, dJ))).tangent, tangent, rtol=1e-9,
                              atol=1e-12)
    leaf = J.clone().requires_grad_()
    (weights(leaf) @ probe).backward()
    assert torch.allclose((leaf.grad * dJ).sum(), tangent @ probe, rtol=1e-8, atol=1e-12)
    if name == "GradVac":  # its EMA state keeps no autograd history
        agg = make()
        agg.weights(leaf @ leaf.T)
        assert not agg.weighting.phi_hat.requires_grad and agg.weighting.phi_hat.grad_fn is None


@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_degenerate_inputs_do_not_conflict(name):
    for case, G in degenerate_grams().items():
        w = FACTORIES[name]().weights(G)
        assert (G @ w).min() >= -1e-6 * G.trace() * (1 + w.abs().max()), case


def test_k64_dual_cone():
    J = jacobian(64, P=40, seed=4)  # rank 40 < K: singular G
    G = J @ J.T
    for agg in (mf.UPGrad(), mf.DualProj(), mf.MGDA()):
        w = agg.weights(G)
        assert (G @ w).min() >= -1e-6 * G.trace() * (1 + w.abs().max()), agg


# --- against the reference --------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [3, 5])
def test_against_reference(K):
    J = jacobian(K, P=12, seed=K)
    G = J @ J.T
    u = torch.full((K,), 1.0 / K, dtype=torch.float64)
    # the QPs are regularised by 1e-6 I relative to trace(G): ~1e-6 agreement
    assert close(mf.MGDA().weights(G), ref.mgda(G), 1e-4)
    assert close(mf.DualProj().weights(G), ref.dualproj(G, u), 1e-4)
    assert close(mf.UPGrad().weights(G), ref.upgrad(G, u), 1e-4)
    assert close(J.T @ mf.IMTLG().weights(G), ref.imtlg(J), 1e-9)
    for mode in ("min", "median", "rmse"):
        assert close(J.T @ mf.AlignedMTL(scale_mode=mode).weights(G), ref.aligned_mtl(J, u, mode), 1e-9)
    assert close(mf.NashMTL(max_norm=0.0).weights(G), ref.nash_mtl(G), 1e-6)
    assert close(J.T @ mf.CAGrad(0.5).weights(G), ref.cagrad(J, 0.5, iterations=3000), 1e-4)


def test_gradvac_against_reference_with_pinned_orders():
    K = 4
    agg = mf.GradVac(beta=0.3)
    phi_hat = torch.zeros(K, K, dtype=torch.float64)
    for step in range(4):
        J = jacobian(K, seed=step)
        orders = draw_pcgrad_orders(K, torch.device("cpu"))
        assert close(J.T @ agg.weights(J @ J.T, orders), ref.gradvac(J, orders, phi_hat, 0.3), 1e-10)
        assert torch.allclose(agg.weighting.phi_hat, phi_hat)
    state = agg.state_dict()
    other = mf.GradVac(beta=0.9)
    other.load_state_dict(state)
    J = jacobian(K, seed=9)
    orders = draw_pcgrad_orders(K, torch.device("cpu"))
    assert torch.equal(agg.weights(J @ J.T, orders), other.weights(J @ J.T, orders))


def test_graddrop_against_reference():
    J = torch.randn(4, 7, 5)
    leak = torch.tensor([0.0, 0.5, 1.0, 0.25])
    for leak_values in (None, leak):
        agg = mf.GradDrop(leak=None if leak_values is None else leak_values.tolist(), seed=11)
        out = mf.aggregate([J], agg)[0]
        draw = torch.rand(7, 5, generator=torch.Generator().manual_seed(11))
        expected = ref.graddrop(J.reshape(4, -1), draw.reshape(-1),
                                torch.zeros(4) if leak_values is None else leak_values).reshape(7, 5)
        assert torch.allclose(out.double(), expected, atol=1e-6)
    zero = mf.aggregate(torch.zeros(3, 10), mf.GradDrop(seed=0))
    assert torch.equal(zero, torch.zeros(10))


# --- TorchJD, where the definitions match ----------------------------------------------------------------------


@pytest.mark.parametrize("K", [2, 4, 7])
def test_against_torchjd(K):
    T = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    J = jacobian(K, seed=K + 20)
    G = J @ J.T
    # Same definitions, exact solvers on both sides (TorchJD's IMTL-G / Aligned-MTL are closed forms).
    assert close(J.T @ mf.IMTLG().weights(G), T.IMTLG()(J), 1e-10)
    for mode in ("min", "median", "rmse"):
        assert close(J.T @ mf.AlignedMTL(scale_mode=mode).weights(G), T.AlignedMTL(scale_mode=mode)(J), 1e-10)
    # TorchJD's QP solver regularises G / trace(G) with 1e-4 I (ours 1e-6): agreement to ~1e-3 relative, and its
    # UPGrad accumulates that over K projections.
    assert close(J.T @ mf.DualProj().weights(G), T.DualProj()(J), 1e-2)
    assert close(J.T @ mf.UPGrad().weights(G), T.UPGrad()(J), 3e-2)
    # TorchJD's MGDA is Frank-Wolfe (approximate): compare the minimised quantity, |d|^2.
    d, dt = J.T @ mf.MGDA().weights(G), T.MGDA(epsilon=1e-9, max_iters=10000)(J)
    assert d @ d <= dt @ dt * (1 + 1e-6) and close(d, dt, 5e-2)
    # CAGrad: TorchJD solves the same dual with cvxpy/Clarabel (paper scaling, no 1/(1 + c^2)).
    assert close(J.T @ mf.CAGrad(0.5).weights(G), T.CAGrad(0.5)(J), 1e-4)
    # Nash-MTL: TorchJD runs the official CCP; both reach G beta = 1 / beta.
    assert close(J.T @ mf.NashMTL(max_norm=1.0).weights(G), T.NashMTL(n_tasks=K, max_norm=1.0)(J), 1e-6)


def test_gradvac_and_graddrop_against_torchjd(monkeypatch):
    T = pytest.importorskip("torchjd.aggregation")
    # K = 2 has a single visiting order, so both sides see the same sequence; TorchJD's eps set to 0 (ours has
    # none: it guards zero denominators instead).
    ours, theirs = mf.GradVac(beta=0.3), T.GradVac(beta=0.3, eps=0.0)
    for step in range(4):
        J = jacobian(2, seed=step)
        assert close(J.T @ ours.weights(J @ J.T), theirs(J), 1e-12)
    J = torch.randn(5, 40)
    out = mf.aggregate(J, mf.GradDrop(seed=5))
    draw = torch.rand(40, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(torch, "rand", lambda *args, **kwargs: draw.clone())
    assert torch.allclose(T.GradDrop()(J), out, atol=1e-6)


# --- end to end --------------------------------------------------------------------------------------------------

def all_aggregators():
    return [factory() for factory in FACTORIES.values()] + [mf.GradDrop(seed=0)]


def test_backward_and_fork_on_multitasknet():
    torch.manual_seed(0)
    net = MultiTaskNet([10] * 3)
    x, ys = torch.randn(2, 3, 28, 28), [torch.randint(0, 10, (2,)) for _ in range(3)]
    for agg in all_aggregators():
        net.zero_grad()
        losses = net.losses(net(x), ys)
        weights = mf.backward(losses, net.trunk.parameters(), aggregator=agg)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters()), agg
        if isinstance(agg, mf.GramAggregator):
            assert weights.shape == (3,)
        net.zero_grad()
        feats = mf.fork(net.trunk(x), 3, aggregator=agg)
        sum(net.losses([head(f) for head, f in zip(net.task_heads, feats)], ys)).backward()
        assert all(torch.isfinite(p.grad).all() for p in net.trunk.parameters()), agg


def test_backward_applies_the_weights():
    torch.manual_seed(1)
    shared = torch.randn(6, requires_grad=True)
    A = torch.randn(3, 6)
    losses = list((A @ shared).unbind())
    weights = mf.backward(losses, [shared], aggregator=mf.UPGrad())
    assert torch.allclose(shared.grad.double(), A.double().T @ weights, atol=1e-6)


# --- bad arguments -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, name", [
    (lambda: mf.CAGrad(-1.0), ValueError, "c"), (lambda: mf.CAGrad("a"), TypeError, "c"),
    (lambda: mf.GradVac(beta=2.0), ValueError, "beta"), (lambda: mf.AlignedMTL(scale_mode="max"), ValueError,
                                                         "scale_mode"),
    (lambda: mf.NashMTL(max_norm=-1.0), ValueError, "max_norm"),
    (lambda: mf.NashMTL(optim_niter=0), ValueError, "optim_niter"),
    (lambda: mf.NashMTL(update_weights_every=1.5), TypeError, "update_weights_every"),
    (lambda: mf.UPGrad(pref_vector=[1.0, -1.0]), ValueError, "pref_vector"),
    (lambda: mf.DualProj(pref_vector="ab"), TypeError, "pref_vector"),
    (lambda: mf.GradDrop(leak=[0.5, 2.0]), ValueError, "leak"),
    (lambda: mf.UPGrad(pref_vector=[1.0, 1.0]).weights(torch.eye(3, dtype=torch.float64)), ValueError,
     "pref_vector"),
    (lambda: mf.MGDA().weights(torch.ones(2, 3)), ValueError, "G"),
    (lambda: mf.GradVac().weights(torch.eye(3), torch.zeros(3, 2)), ValueError, "orders"),
    (lambda: mf.aggregate(torch.randn(3, 4), mf.GradDrop(leak=[0.1, 0.2])), ValueError, "leak"),
])
def test_bad_arguments(make, error, name):
    with pytest.raises(error, match=name):
        make()
