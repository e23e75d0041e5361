"""The compiled nonnegative-QP ops (csrc/kernels/nonneg_qp.h) against the torch-ops solver and the reference."""
import warnings

import pytest
import torch

import mtl_fast as mf
from mtl_fast import _ops
from mtl_fast import reference as ref
from mtl_fast.aggregation import (QP_REGULARIZATION, QP_TOLERANCE, DualProjWeighting, UPGradWeighting,
                                  solve_nonnegative_qp)

from helpers import on_reference_path

needs_kernel = pytest.mark.skipif(not _ops.has_kernel("qp_weights", "cpu"), reason="compiled QP ops not built")
QP_METHODS = {"mgda": mf.MGDA, "dualproj": mf.DualProj, "upgrad": mf.UPGrad}
PATIENCE = 5  # the anti-cycling patience passed to the ops directly (the aggregators pass K // 2 + 3)


def gram(K, rank=None, seed=0, scale=1.0):
    """A Gram matrix with a conflict between tasks 0 and 1, of rank min(K, rank)."""
    J = torch.randn(K, rank or 3 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if K > 1:
        J[1] = -J[0] + 0.3 * J[1]
    J = J * scale
    return J @ J.T


def _normalized_gram(G):
    return ref.normalized_gram(G, QP_REGULARIZATION)


@pytest.fixture
def torch_path():
    """Runs its body on the torch-ops solver, as on a device without the compiled ops."""
    return on_reference_path


@pytest.fixture
def block_pivoting_only(monkeypatch):
    """The torch-ops solver stopped at max_iter, without the Murty steps it takes beyond it."""
    monkeypatch.setattr(ref, "MURTY_ITERATIONS_FACTOR", 1)


def kkt_violation(M, q, z, simplex=False):
    """Largest relative violation of the KKT conditions of min 1/2 z^T M z + q^T z, z >= 0 (sum(z) = 1)."""
    grad = z @ M + q
    if simplex:  # the equality's multiplier is the gradient on the support
        grad = grad - (grad * (z > 0)).sum(1, keepdim=True) / (z > 0).sum(1, keepdim=True)
    scale = q.abs().amax(1) + (z @ M).abs().amax(1) + 1e-300
    dual = (-grad).clamp_min(0).amax(1) / scale
    complementarity = (grad * z).abs().amax(1) / (scale * (1 + z.abs().amax(1)))
    return torch.maximum(dual, complementarity).max().item()


@needs_kernel
def test_opcheck():
    M = _normalized_gram(gram(5))
    q = torch.randn(3, 5, dtype=torch.float64)
    for simplex in (False, True):
        torch.library.opcheck(torch.ops.mtl_fast.nonneg_qp.default, (M, q, simplex, QP_TOLERANCE, 25, PATIENCE))
    G = gram(5)
    for method in QP_METHODS:
        for pref in (None, torch.rand(5, dtype=torch.float64)):
            torch.library.opcheck(torch.ops.mtl_fast.qp_weights.default,
                                  (G, pref, method, QP_REGULARIZATION, QP_TOLERANCE, 25, PATIENCE))


def random_problems(K, rank, seed):
    """K random linear terms on the regularised M of a Gram matrix of rank min(K, rank)."""
    M = _normalized_gram(gram(K, rank, seed))
    return M, torch.randn(K, K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@needs_kernel
@pytest.mark.parametrize("K", [1, 2, 3, 8, 12, 16, 20, 33, 64])
@pytest.mark.parametrize("simplex", [False, True])
@pytest.mark.filterwarnings("ignore:nonnegative QP.*did not settle")  # random q at K = 64: compared where settled
def test_solver_matches_torch_path(K, simplex, torch_path):
    for seed, rank in ((0, None), (1, max(1, K // 2))):  # full rank and singular G
        M, q = random_problems(K, rank, seed)
        z = solve_nonnegative_qp(M, q, simplex=simplex)
        # (at the compiled op's cap: the torch path's own default goes on much longer where this does not settle)
        expected = torch_path(solve_nonnegative_qp, M, q, simplex=simplex, max_iter=3 * K + 10)
        assert z.shape == (K, K) and z.dtype == torch.float64 and z.min() >= 0
        assert kkt_violation(M, q, z, simplex) < 1e-7
        if simplex:
            assert torch.allclose(z.sum(1), torch.ones(K, dtype=torch.float64))
        # the same steps as the torch path wherever that one settled within its iteration cap
        settled = [kkt_violation(M, q[b:b + 1], expected[b:b + 1], simplex) < 1e-7 for b in range(K)]
        assert torch.allclose(z[settled], expected[settled], rtol=1e-7, atol=1e-9 * expected.abs().max())


@needs_kernel
@pytest.mark.parametrize("K, seed", [(32, 0), (64, 1)])
def test_active_set_fallback_settles_where_block_pivoting_does_not(K, seed, torch_path, block_pivoting_only):
    # random q on a rank-K/2 M: block pivoting (either solver) leaves rows unsettled after 3K + 10 steps, the
    # compiled op's default cap, after which it switches to the active-set method
    M, q = random_problems(K, K // 2, seed)
    with pytest.warns(RuntimeWarning, match=r"problems did not settle within \d+ steps"):
        expected = torch_path(solve_nonnegative_qp, M, q, max_iter=3 * K + 10)
    assert kkt_violation(M, q, expected) > 1e-3
    assert kkt_violation(M, q, solve_nonnegative_qp(M, q)) < 1e-9


def test_torch_path_settles_an_upgrad_problem_beyond_the_compiled_cap(torch_path, monkeypatch):
    """UPGrad at K = 33 on a rank-5 G: block pivoting needs more than 3K + 10 steps on one of the problems; the
    torch path, which has no active-set fallback, goes on with Murty's rule (its default cap is ten times
    longer) and gets the same weights as the compiled op."""
    g = torch.Generator().manual_seed(2)
    J = torch.randn(33, 5, dtype=torch.float64, generator=g) * torch.pow(10.0, 6 * torch.rand(33, 1, generator=g,
                                                                                              dtype=torch.float64) - 3)
    M = _normalized_gram(J @ J.T)
    with monkeypatch.context() as m, pytest.warns(RuntimeWarning, match="did not settle"):
        m.setattr(ref, "MURTY_ITERATIONS_FACTOR", 1)
        torch_path(solve_nonnegative_qp, M, M, max_iter=3 * 33 + 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = torch_path(solve_nonnegative_qp, M, M)
    assert kkt_violation(M, M, z) < 1e-9
    if _ops.has_kernel("qp_weights", "cpu"):
        G = J @ J.T
        assert torch.allclose(torch_path(mf.UPGrad().weights, G), mf.UPGrad().weights(G), rtol=1e-7, atol=1e-10)


@needs_kernel
def test_singular_or_nan_m_stays_finite():
    """Without the regularisation a singular M has a zero pivot, and a NaN entry a NaN one: the Cholesky's pivot
    floor still gives answers that are finite and nonnegative (the solver is meant for positive definite M, so
    nothing more is promised)."""
    v = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, -2.0], dtype=torch.float64)
    singular = torch.outer(v, v)
    with_nan = singular.clone()
    with_nan[0, 1] = with_nan[1, 0] = float("nan")
    u = torch.full((6,), 1 / 6, dtype=torch.float64)
    q = torch.stack([-torch.ones(6, dtype=torch.float64), singular @ u, torch.linspace(-1, 1, 6, dtype=torch.float64)])
    for M in (singular, with_nan):
        z = solve_nonnegative_qp(M, q)
        assert torch.isfinite(z).all() and z.min() >= 0


@needs_kernel
@pytest.mark.parametrize("method", list(QP_METHODS))
@pytest.mark.parametrize("K", [1, 2, 3, 4, 8, 9, 16, 20, 32, 33, 64])
def test_weights_match_torch_path(method, K, torch_path):
    for seed, rank, scale in ((0, None, 1.0), (1, max(1, K // 3), 1e-30), (2, None, 1e30), (3, 2, 1.0),
                              (4, None, 1e-310)):  # a trace whose reciprocal overflows
        G = gram(K, rank, seed, scale)
        agg = QP_METHODS[method]()
        w = agg.weights(G)
        expected = torch_path(agg.weights, G)
        assert w.shape == (K,) and w.dtype == torch.float64
        assert torch.allclose(w, expected, rtol=1e-7, atol=1e-10), (seed, rank, scale)
        if method != "mgda":  # with a preference vector too
            pref = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).tolist()
            agg = QP_METHODS[method](pref_vector=pref)
            assert torch.allclose(agg.weights(G), torch_path(agg.weights, G), rtol=1e-7, atol=1e-10)


@needs_kernel
@pytest.mark.parametrize("K", [3, 6])
def test_weights_match_reference(K):
    G = gram(K, seed=K)
    u = torch.full((K,), 1.0 / K, dtype=torch.float64)
    # the QPs are regularised by 1e-6 I relative to trace(G): ~1e-6 agreement with the unregularised oracle
    for w, expected in ((mf.MGDA().weights(G), ref.mgda(G)), (mf.DualProj().weights(G), ref.dualproj(G, u)),
                        (mf.UPGrad().weights(G), ref.upgrad(G, u))):
        assert (w - expected).norm() <= 1e-4 * (1 + expected.norm())


@needs_kernel
@pytest.mark.parametrize("method", list(QP_METHODS))
def test_degenerate_grams(method, torch_path):
    base = gram(4, rank=2, seed=5)
    cases = {"zero": torch.zeros(4, 4, dtype=torch.float64), "singular": base, "identical": torch.ones(4, 4),
             "tiny": 1e-30 * base, "huge": 1e30 * base, "float32": base.float()}
    for case, G in cases.items():
        agg = QP_METHODS[method]()
        w = agg.weights(G)
        assert torch.isfinite(w).all(), case
        assert torch.allclose(w, torch_path(agg.weights, G), rtol=1e-7, atol=1e-10), case
        # conflicts with no task, up to the regularisation
        assert (G.double() @ w).min() >= -1e-6 * G.double().trace() * (1 + w.abs().max()), case
    assert torch.equal(QP_METHODS[method]().weights(torch.ones(1, 1, dtype=torch.float64)),
                       torch.ones(1, dtype=torch.float64))


@needs_kernel
def test_mgda_pair_closed_form_in_the_kernel(torch_path):
    """K = 2 MGDA: the kernel's closed form equals the torch path's, on ordinary and degenerate pairs."""
    pairs = {"ordinary": gram(2), "zero": torch.zeros(2, 2), "identical": torch.ones(2, 2),
             "opposite": torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), "one zero": torch.tensor([[4.0, 0.0], [0.0, 0.0]]),
             "tiny": 1e-30 * gram(2), "huge": 1e30 * gram(2)}
    for case, G in pairs.items():
        w = mf.MGDA().weights(G)
        assert torch.equal(w, torch_path(mf.MGDA().weights, G)), case
        assert w.sum() == 1 and (w >= 0).all(), case
    nan = torch.full((2, 2), float("nan"))  # a non-finite G: NaN weights on both paths (test_zoo has the rest)
    assert torch.isnan(mf.MGDA().weights(nan)).all() and torch.isnan(torch_path(mf.MGDA().weights, nan)).all()
    assert torch.equal(mf.MGDA().weights(torch.tensor([[4.0, 0.0], [0.0, 1.0]])),
                       torch.tensor([0.2, 0.8], dtype=torch.float64))
    # a pair that needs gradients gets the differentiable torch-ops closed form
    G = gram(2).requires_grad_()
    w = mf.MGDA().weights(G)
    w[0].backward()
    expected = G.detach().clone().requires_grad_()
    torch_path(mf.MGDA().weights, expected)[0].backward()
    assert torch.equal(w.detach(), mf.MGDA().weights(G.detach())) and torch.equal(G.grad, expected.grad)


@needs_kernel
@pytest.mark.parametrize("method", list(QP_METHODS))
@pytest.mark.parametrize("K", [2, 5, 16])
def test_weights_are_differentiable_in_both_modes(method, K):
    """The compiled op has no derivative: a G that asks for one (backward, torch.func.grad, torch.func.jvp,
    forward_ad) takes the differentiable torch-ops solver instead of silently getting a zero or missing one. The
    derivatives match finite differences (the free set stays put at these points) and the values the op's."""
    import torch.autograd.forward_ad as fwAD
    J = torch.randn(K, 2 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(K))
    J[1] = -J[0] + 0.3 * J[1]
    dJ = torch.randn(K, 2 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(K + 1))
    makers = [QP_METHODS[method]]
    if method != "mgda":
        makers.append(lambda: QP_METHODS[method](pref_vector=torch.arange(1.0, K + 1).tolist()))
    for make in makers:
        def weights(J):
            return make().weights(J @ J.T)

        eps = 1e-6
        finite_difference = (weights(J + eps * dJ) - weights(J - eps * dJ)) / (2 * eps)
        assert finite_difference.abs().max() > 1e-3  # a derivative that a dropped tangent would miss
        value, tangent = torch.func.jvp(weights, (J,), (dJ,))
        assert torch.allclose(value, weights(J), rtol=1e-7, atol=1e-10)
        assert torch.allclose(tangent, finite_difference, rtol=1e-5, atol=1e-7)
        with fwAD.dual_level():
            dual_tangent = fwAD.unpack_dual(weights(fwAD.make_dual(J, dJ))).tangent
        assert dual_tangent is not None and torch.allclose(dual_tangent, tangent, rtol=1e-10, atol=1e-13)
        leaf = J.clone().requires_grad_()
        (weights(leaf) @ torch.arange(1.0, K + 1, dtype=torch.float64)).backward()
        assert torch.allclose((leaf.grad * dJ).sum(), tangent @ torch.arange(1.0, K + 1, dtype=torch.float64),
                              rtol=1e-8, atol=1e-12)
        assert torch.allclose(torch.func.grad(lambda J: weights(J) @ torch.arange(1.0, K + 1, dtype=torch.float64))(J),
                              leaf.grad, rtol=1e-10, atol=1e-13)
    if K <= 5:  # gradcheck, and the generic solver's derivative through M and q
        assert torch.autograd.gradcheck(lambda J: makers[0]().weights(J @ J.T), (J.clone().requires_grad_(),))
        M = _normalized_gram(J @ J.T).requires_grad_()
        q = -torch.ones(1, K, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda M, q: solve_nonnegative_qp(M, q), (M, q))


@needs_kernel
def test_solver_degenerate_problems():
    # K = 1 and an all-zero q: nothing to do
    assert torch.equal(solve_nonnegative_qp(torch.eye(1, dtype=torch.float64), -torch.ones(1, 1).double()),
                       torch.ones(1, 1, dtype=torch.float64))
    assert torch.equal(solve_nonnegative_qp(torch.eye(3).double(), torch.zeros(2, 3).double()),
                       torch.zeros(2, 3, dtype=torch.float64))
    # an unregularised singular or zero M is outside the contract, but still gives finite answers
    singular = gram(5, rank=2)
    for M in (singular, torch.zeros(5, 5, dtype=torch.float64)):
        for simplex in (False, True):
            z = solve_nonnegative_qp(M, torch.randn(4, 5, dtype=torch.float64), simplex=simplex)
            assert torch.isfinite(z).all() and z.min() >= 0
    # the zero M on the simplex with q = 0: every point is optimal, the pivots' floor gives the uniform one
    z = solve_nonnegative_qp(torch.zeros(4, 4, dtype=torch.float64), torch.zeros(1, 4).double(), simplex=True)
    assert torch.allclose(z, torch.full((1, 4), 0.25, dtype=torch.float64))
    # an empty batch
    assert solve_nonnegative_qp(torch.eye(3).double(), torch.zeros(0, 3).double()).shape == (0, 3)


@needs_kernel
def test_max_iter_and_dtype():
    M = _normalized_gram(gram(8))
    q = torch.randn(2, 8, dtype=torch.float64)
    assert torch.equal(solve_nonnegative_qp(M, q, max_iter=0), torch.zeros(2, 8, dtype=torch.float64))
    z32 = solve_nonnegative_qp(M.float(), q.float())
    assert z32.dtype == torch.float32 and torch.allclose(z32.double(), solve_nonnegative_qp(M, q), rtol=1e-5)


@needs_kernel
def test_bad_arguments():
    M, q = torch.eye(3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="M: expected a square"):
        torch.ops.mtl_fast.nonneg_qp(torch.zeros(2, 3), q, False, 1e-9, 5, PATIENCE)
    with pytest.raises(RuntimeError, match=r"q: expected shape \(B, 3\)"):
        torch.ops.mtl_fast.nonneg_qp(M, torch.zeros(1, 4), False, 1e-9, 5, PATIENCE)
    with pytest.raises(RuntimeError, match="max_iter: expected a value >= 0, got -1"):
        torch.ops.mtl_fast.nonneg_qp(M, q, False, 1e-9, -1, PATIENCE)
    with pytest.raises(RuntimeError, match="patience: expected a value >= 0, got -1"):
        torch.ops.mtl_fast.nonneg_qp(M, q, False, 1e-9, 5, -1)
    with pytest.raises(RuntimeError, match="patience: expected a value >= 0, got -1"):
        torch.ops.mtl_fast.qp_weights(M, None, "mgda", 1e-6, 1e-9, 5, -1)
    with pytest.raises(RuntimeError, match="method: expected"):
        torch.ops.mtl_fast.qp_weights(M, None, "pcgrad", 1e-6, 1e-9, 5, PATIENCE)
    with pytest.raises(RuntimeError, match=r"pref: expected shape \(3\)"):
        torch.ops.mtl_fast.qp_weights(M, torch.ones(2), "upgrad", 1e-6, 1e-9, 5, PATIENCE)
    # the op names the argument, its shape and dtype
    for bad_gram, bad_pref, message in (
            (torch.zeros(2, 3), None, r"gram: expected a square \(K, K\) matrix with K >= 1, got shape \[2, 3\]"),
            (torch.zeros(0, 0), None, r"gram: expected a square \(K, K\) matrix with K >= 1, got shape \[0, 0\]"),
            (torch.zeros(3), None, r"gram: expected a square \(K, K\) matrix with K >= 1, got shape \[3\]"),
            (torch.eye(3, dtype=torch.int64), None, "gram: expected a floating dtype, got Long"),
            (torch.eye(3), torch.ones(1, 3), r"pref: expected shape \(3\), got \[1, 3\]"),
            (torch.eye(3), torch.ones(3, dtype=torch.int64), "pref: expected a floating dtype, got Long")):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.mtl_fast.qp_weights(bad_gram, bad_pref, "dualproj", 1e-6, 1e-9, 5, PATIENCE)
    with pytest.raises(ValueError, match="pref_vector: has 2 entries"):
        mf.UPGrad(pref_vector=[1.0, 2.0]).weights(M)
    # the aggregators' own checks, before the op
    for make in QP_METHODS.values():
        with pytest.raises(ValueError, match=r"G: expected a square \(K, K\) matrix"):
            make().weights(torch.zeros(2, 3))
        with pytest.raises(TypeError, match="G: expected a floating dtype"):
            make().weights(torch.eye(3, dtype=torch.int64))
        with pytest.raises(TypeError, match="G: expected a Tensor"):
            make().weights([[1.0]])


@needs_kernel
def test_op_takes_any_floating_dtype_and_layout():
    """qp_weights computes in float64 on a contiguous copy: every dtype and layout of G and pref gives bitwise the
    weights of that copy, for every method; the aggregators pass their own iteration cap and patience."""
    op = torch.ops.mtl_fast.qp_weights.default
    for K in (1, 2, 5, 16, 40):
        G = gram(K, seed=K)
        for layout in (G, G.float(), G.T.contiguous().T, G[:, :].t()):
            for method in QP_METHODS:
                for pref in (None, torch.rand(K, dtype=torch.float64), torch.rand(K)):
                    w = op(layout, pref, method, QP_REGULARIZATION, QP_TOLERANCE, 25, PATIENCE)
                    assert w.dtype == torch.float64 and w.shape == (K,) and not w.requires_grad
                    copy_pref = None if pref is None else pref.double().contiguous()
                    assert torch.equal(w, op(layout.double().contiguous(), copy_pref, method, QP_REGULARIZATION,
                                             QP_TOLERANCE, 25, PATIENCE))
    for method, make in QP_METHODS.items():
        assert torch.equal(make().weights(G), op(G, None, method, QP_REGULARIZATION, QP_TOLERANCE, 3 * K + 10,
                                                 K // 2 + 3))
    # a G that needs a gradient takes the op when no derivative will be asked for
    with torch.no_grad():
        assert torch.equal(mf.MGDA().weights(G.clone().requires_grad_()), mf.MGDA().weights(G))


@needs_kernel
@pytest.mark.parametrize("method", ["dualproj", "upgrad"])
def test_subclass_preference_is_used(method, torch_path):
    """A weighting subclass that redefines preference() gets it on every path, the compiled op included."""
    class Renormalised({"dualproj": DualProjWeighting, "upgrad": UPGradWeighting}[method]):
        def preference(self, K, device):
            u = super().preference(K, device)
            return 2 * u / u.sum()

    G = gram(5, seed=3)
    for pref in ([1.0, 2.0, 1.0, 0.5, 3.0], None):
        u = torch.tensor(pref, dtype=torch.float64) if pref else torch.full((5,), 0.2, dtype=torch.float64)
        expected = QP_METHODS[method](pref_vector=2 * u / u.sum())
        w = mf.GramAggregator(Renormalised(pref)).weights(G)
        assert torch.allclose(w, expected.weights(G), rtol=1e-12, atol=1e-15), pref
        assert torch.allclose(w, torch_path(mf.GramAggregator(Renormalised(pref)).weights, G), rtol=1e-7,
                              atol=1e-10), pref


@needs_kernel
def test_fake_tensors_vmap_modes_tracers_and_compile_see_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    G = gram(4)
    expected = mf.MGDA().weights(G)
    with FakeTensorMode() as mode:
        assert mf.MGDA().weights(mode.from_tensor(G)).shape == (4,)
    assert torch.equal(torch.vmap(mf.MGDA().weights)(torch.stack([G, 2 * G])), torch.stack([expected] * 2))

    def record(self, func, types, args=(), kwargs=None):
        seen.append(str(func))
        return func(*args, **(kwargs or {}))

    # dispatch modes and torch-function modes both see the op
    for base, hook in ((TorchDispatchMode, "__torch_dispatch__"), (TorchFunctionMode, "__torch_function__")):
        seen = []
        with type("Recorder", (base,), {hook: record})():
            mf.DualProj().weights(G)
        assert "mtl_fast.qp_weights.default" in seen, base
    # the JIT tracer records the op, so the trace follows its input instead of freezing the weights
    J, J2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda J: mf.UPGrad().weights(J @ J.T) @ J, (J,))
    assert torch.allclose(traced(J2), mf.UPGrad().weights(J2 @ J2.T) @ J2)
    # torch.compile records the op in its graph
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(lambda G: mf.UPGrad().weights(G), backend=backend, fullgraph=True)
    assert torch.equal(compiled(G), mf.UPGrad().weights(G))
    targets = [str(node.target) for gm in graphs for node in gm.graph.nodes]
    assert "mtl_fast.qp_weights.default" in targets, targets


# --- CUDA: the same source on the device --------------------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_matches_cpu():
    assert _ops.has_kernel("qp_weights", "cuda"), "CUDA build without the QP kernels"
    for K in (1, 3, 16, 64):
        M = _normalized_gram(gram(K, rank=max(1, K // 2)))
        q = torch.randn(K, K, dtype=torch.float64)
        for simplex in (False, True):
            assert torch.allclose(solve_nonnegative_qp(M.cuda(), q.cuda(), simplex=simplex).cpu(),
                                  solve_nonnegative_qp(M, q, simplex=simplex), rtol=1e-9, atol=1e-12)
        G = gram(K, seed=K)
        for make in QP_METHODS.values():
            assert torch.allclose(make().weights(G.cuda()).cpu(), make().weights(G), rtol=1e-9, atol=1e-12)


@pytest.mark.cuda
def test_cuda_opcheck():
    M, q, G = _normalized_gram(gram(5)).cuda(), torch.randn(3, 5, dtype=torch.float64).cuda(), gram(5).cuda()
    torch.library.opcheck(torch.ops.mtl_fast.nonneg_qp.default, (M, q, True, QP_TOLERANCE, 25, PATIENCE))
    for method in QP_METHODS:
        torch.library.opcheck(torch.ops.mtl_fast.qp_weights.default,
                              (G, None, method, QP_REGULARIZATION, QP_TOLERANCE, 25, PATIENCE))


@needs_kernel
def test_weights_are_an_ordinary_tensor():
    """The op's result behaves as any CPU tensor: in-place ops, growing its storage, sharing with numpy, saving."""
    import io
    w = mf.MGDA().weights(gram(16))
    assert w.shape == (16,) and w.dtype == torch.float64 and w.device.type == "cpu" and w.is_contiguous()
    before = w.clone()
    w.mul_(2)
    assert torch.equal(w, 2 * before)
    buffer = io.BytesIO()
    torch.save(w, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), w)
    w.resize_(4096).fill_(1.0)
    assert w.sum().item() == 4096
    assert torch.equal(torch.from_numpy(w.numpy()), w)
