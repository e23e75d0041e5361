"""The operators (gram, pcgrad_weights, combine, combine_into) against mtl_fast.reference."""
import subprocess
import sys

import pytest
import torch

import mtl_fast as mf
from mtl_fast import _ops, reference
from mtl_fast.aggregation import draw_pcgrad_orders

from helpers import random_chunks

needs_ext = pytest.mark.skipif(mf.backend() == "python", reason="compiled extension not loaded")

SHAPES = {
    "one": [(1,)],
    "odd": [(3,)],
    "1023": [(1023,)],
    "many_odd_chunks": [(1,), (3,), (1023,), (7, 5), (4097,), (2, 3, 5)],
    "large": [(100_003,)],
}
# Float16 cannot hold 1e+-30; bfloat16 has float32's range.
SCALES = {torch.float32: [1e-30, 1.0, 1e30], torch.float64: [1e-30, 1.0, 1e30], torch.float16: [1e-2, 1.0, 10.0],
          torch.bfloat16: [1e-30, 1.0, 1e30]}

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}


# float32 tiles in a safe range are multiplied and summed in float32 before the float64 total.
GRAM_RTOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 1e-12, torch.bfloat16: 1e-12}


def _close_gram(G, G_ref, rtol):
    # Entry (a, b) is compared relative to |g_a| |g_b|, the scale of the dot product itself.
    d = G_ref.diagonal().clamp_min(0).sqrt()
    bound = rtol * torch.outer(d, d) + 1e-300
    assert torch.isfinite(G).all()
    assert ((G - G_ref).abs() <= bound).all(), ((G - G_ref).abs() / bound).max()


@pytest.mark.parametrize("K", [1, 2, 5, 8, 17, 64])
@pytest.mark.parametrize("shapes", list(SHAPES), ids=list(SHAPES))
def test_gram_matches_reference_over_shapes(K, shapes):
    chunks = random_chunks(K, SHAPES[shapes])
    G = mf.gram(chunks)
    assert G.dtype == torch.float64 and G.shape == (K, K)
    _close_gram(G, reference.gram(chunks), GRAM_RTOL[torch.float32])
    assert torch.equal(G, G.T)


@pytest.mark.parametrize("dtype", list(SCALES))
def test_gram_and_combine_over_dtypes_and_scales(dtype):
    K = 6
    for scale in SCALES[dtype]:
        chunks = random_chunks(K, SHAPES["many_odd_chunks"], dtype=dtype, scale=scale)
        _close_gram(mf.gram(chunks), reference.gram(chunks), GRAM_RTOL[dtype])
        w = torch.linspace(-2, 3, K, dtype=torch.float64)
        for out, ref, chunk in zip(mf.combine(chunks, w), reference.combine(chunks, w), chunks):
            assert out.dtype == dtype and out.shape == chunk.shape[1:]
            assert torch.isfinite(out).all()
            tol = TOLERANCE[dtype]  # values are O(1) once divided by the scale
            torch.testing.assert_close(out.double() / scale, ref.double() / scale, rtol=tol, atol=tol)


@pytest.mark.parametrize("extreme", [1e-30, 1e30, 0.0, float("inf")])
def test_gram_tiles_out_of_float32_range_are_exact(extreme):
    # Only some tiles hold an extreme value: those fall back to float64, the others stay on float32.
    J = torch.randn(5, 20_000, dtype=torch.float64)
    J[2, 9_000:9_100] = extreme
    G = mf.gram(J.float())
    G_ref = reference.gram([J.float()])
    if extreme == float("inf"):
        assert torch.equal(torch.isinf(G), torch.isinf(G_ref))
        return
    _close_gram(G, G_ref, GRAM_RTOL[torch.float32])
    tiny = (J[:, :3000] * 1e-30).float()  # products that vanish in float32 must count in float64
    _close_gram(mf.gram(tiny), reference.gram([tiny]), 1e-12)


def test_gram_of_millions_of_elements():
    J = torch.randn(4, 3_000_001)
    _close_gram(mf.gram(J), reference.gram([J]), GRAM_RTOL[torch.float32])


def test_gram_is_bitwise_deterministic_across_thread_counts():
    chunks = random_chunks(8, [(200_001,), (77,), (65_536,)])
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append(mf.gram(chunks))
    finally:
        torch.set_num_threads(threads)
    for G in results[1:]:
        assert torch.equal(G, results[0])


def test_noncontiguous_chunks():
    base = torch.randn(300, 5)
    chunks = [base.T, torch.randn(5, 40, 6)[:, ::3, :]]
    assert not chunks[0].is_contiguous() and not chunks[1].is_contiguous()
    _close_gram(mf.gram(chunks), reference.gram(chunks), GRAM_RTOL[torch.float32])
    w = torch.rand(5, dtype=torch.float64)
    for out, ref in zip(mf.combine(chunks, w), reference.combine(chunks, w)):
        torch.testing.assert_close(out, ref)


def test_combine_of_a_single_matrix_keeps_its_structure():
    J = torch.randn(3, 10)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    out = mf.combine(J, w)
    assert out.shape == (10,)
    torch.testing.assert_close(out, (w.float() @ J))


@needs_ext
def test_combine_into_accumulates_onto_any_layout_and_dtype():
    chunks = random_chunks(4, [(6, 5), (11,), (3,)])
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    outs = [torch.randn(5, 6).T,  # non-contiguous
            torch.randn(11, dtype=torch.float64),  # another dtype than its chunk
            torch.randn(3)]
    expected = [o.clone() + r.to(o.dtype) for o, r in zip(outs, reference.combine(chunks, w))]
    _ops.combine_into(chunks, w, outs)
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e)


def _orders(K, seed=0):
    return draw_pcgrad_orders(K, torch.device("cpu"), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("K", [1, 2, 3, 8, 16])
def test_pcgrad_weights_match_the_algorithm_on_vectors(K):
    J = torch.randn(K, 50, dtype=torch.float64)
    J[1 % K] = -0.9 * J[0] + 0.1 * J[1 % K]  # make sure conflicts occur
    orders = _orders(K, seed=K)
    w = mf.PCGrad().weights(mf.gram(J), orders)
    torch.testing.assert_close(w, reference.pcgrad_weights(mf.gram(J), orders))
    torch.testing.assert_close(w @ J, reference.pcgrad(J, orders))


def test_pcgrad_weights_k64_match_reference():
    J = torch.randn(64, 200, dtype=torch.float64)
    orders = _orders(64)
    G = mf.gram(J)
    torch.testing.assert_close(mf.PCGrad().weights(G, orders), reference.pcgrad_weights(G, orders))


def test_pcgrad_orders_are_permutations_of_the_other_tasks():
    orders = mf.PCGrad(seed=3).orders(9, torch.device("cpu"))
    assert orders.shape == (9, 8) and orders.dtype == torch.int64
    for i, row in enumerate(orders.tolist()):
        assert sorted(row) == [j for j in range(9) if j != i]


def test_pcgrad_seed_is_reproducible_and_draws_vary():
    a, b = mf.PCGrad(seed=7), mf.PCGrad(seed=7)
    first = a.orders(6, torch.device("cpu"))
    assert torch.equal(first, b.orders(6, torch.device("cpu")))
    draws = [a.orders(6, torch.device("cpu")) for _ in range(5)]
    assert any(not torch.equal(first, d) for d in draws)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pcgrad_degenerate_gradients_stay_finite(dtype):
    rows = torch.randn(7, 1000, dtype=torch.float64)
    rows[0] = 0.0                       # a zero gradient
    rows[1] *= 1e-30                    # tiny
    rows[2] = -rows[3] * 1e30           # huge and exactly opposite to row 3
    rows[4] = torch.full((1000,), 1e-40)  # float32 denormals
    rows[5] = -rows[4]
    J = rows.to(dtype)
    for seed in range(5):
        agg = mf.PCGrad(seed=seed)
        out = mf.aggregate(J, agg)
        assert torch.isfinite(out).all()
        orders = _orders(7, seed)
        w = agg.weights(mf.gram(J), orders)
        assert torch.isfinite(w).all()
        # Row 2 = -1e30 row 3 cancels catastrophically: agreement is up to rounding at the largest scale.
        atol = 1e-12 * J.double().abs().max().item()
        torch.testing.assert_close(w @ J.double(), reference.pcgrad(J, orders), rtol=1e-6, atol=atol)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e20, 1e30])
def test_pcgrad_is_scale_invariant_in_float32(scale):
    J = torch.randn(6, 500, dtype=torch.float64)
    J[1] = -0.8 * J[0] + 0.2 * J[1]
    orders = _orders(6)
    expected = reference.pcgrad(J, orders)
    Js = (J * scale).float()
    out = mf.PCGrad().weights(mf.gram(Js), orders) @ Js.double()
    torch.testing.assert_close(out / scale, expected, rtol=1e-5, atol=1e-5)


def test_pcgrad_k1_is_the_identity():
    J = torch.randn(1, 33)
    torch.testing.assert_close(mf.aggregate(J, mf.PCGrad()), J[0])


@needs_ext
def test_opcheck_every_op():
    chunks = [torch.randn(3, 5), torch.randn(3, 2, 4)]
    w = torch.rand(3, dtype=torch.float64)
    G = torch.ops.mtl_fast.gram(chunks)
    orders = _orders(3)
    torch.library.opcheck(torch.ops.mtl_fast.gram.default, (chunks,))
    torch.library.opcheck(torch.ops.mtl_fast.pcgrad_weights.default, (G, orders))
    torch.library.opcheck(torch.ops.mtl_fast.combine.default, (chunks, w))
    torch.library.opcheck(torch.ops.mtl_fast.combine_into.default, (chunks, w, [torch.zeros(5), torch.zeros(2, 4)]))
    grad_chunks = [c.double().requires_grad_() for c in chunks]
    torch.library.opcheck(torch.ops.mtl_fast.gram.default, (grad_chunks,))
    torch.library.opcheck(torch.ops.mtl_fast.combine.default, (grad_chunks, w.clone().requires_grad_()))


@needs_ext
def test_gradcheck_gram_and_combine():
    chunks = tuple(torch.randn(3, n, dtype=torch.float64, requires_grad=True) for n in (4, 7))
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *c: torch.ops.mtl_fast.gram(list(c)), chunks)
    assert torch.autograd.gradgradcheck(lambda *c: torch.ops.mtl_fast.gram(list(c)), chunks)
    assert torch.autograd.gradcheck(lambda w, *c: torch.ops.mtl_fast.combine(list(c), w), (w, *chunks))


@needs_ext
def test_invalid_orders_are_rejected_by_the_kernel():
    G = torch.eye(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="orders: row 0 must be a permutation"):
        torch.ops.mtl_fast.pcgrad_weights(G, torch.tensor([[1, 1], [0, 2], [0, 1]]))


def _run_python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter, with the extension switched on unless env_extra switches it off."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "MTL_FAST_NO_EXTENSION"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_pure_python_backend_gives_the_same_results():
    code = (
        "import torch, mtl_fast as mf\n"
        "assert mf.backend() == 'python', mf.backend()\n"
        "J = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))\n"
        "print(repr(mf.aggregate(J, mf.PCGrad(seed=1)).tolist()))\n")
    out = _run_python(code, {"MTL_FAST_NO_EXTENSION": "1"})
    assert out.returncode == 0, out.stderr
    J = torch.randn(5, 300, generator=torch.Generator().manual_seed(0))
    expected = mf.aggregate(J, mf.PCGrad(seed=1))
    torch.testing.assert_close(torch.tensor(eval(out.stdout)), expected)


def test_a_missing_extension_warns_once_and_falls_back():
    code = (
        "import sys, warnings\n"
        "sys.modules['mtl_fast._C'] = None  # as if it had never been built\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import mtl_fast as mf\n"
        "    import mtl_fast._ops\n"
        "msgs = [str(w.message) for w in caught if 'mtl_fast: the compiled extension' in str(w.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'was not built' in msgs[0] and 'scripts/install.sh' in msgs[0], msgs\n"
        "assert 'circular import' not in msgs[0], msgs\n"
        "assert mf.backend() == 'python'\n"
        "print('ok')\n")
    out = _run_python(code, {})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_a_broken_extension_says_so_and_falls_back():
    code = (
        "import sys, warnings, importlib.abc, importlib.machinery\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'mtl_fast._C':\n"
        "            raise ImportError('undefined symbol: _ZN3c10')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import mtl_fast as mf\n"
        "msgs = [str(w.message) for w in caught if 'mtl_fast: the compiled extension' in str(w.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'is broken' in msgs[0] and 'undefined symbol' in msgs[0] and 'rebuild' in msgs[0], msgs\n"
        "assert mf.backend() == 'python'\n"
        "print('ok')\n")
    out = _run_python(code, {})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
