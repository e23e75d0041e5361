"""Every CUDA kernel entry point, executed thread by thread under the CPU emulator (csrc/emulation/), against
mtl_fast.reference and the CPU ops. Run through scripts/cuda_emulation_check.sh (plain, ASan + UBSan, TSan).

Shapes are small: each CUDA thread is an OS thread and every shuffle a barrier of 32 of them.
"""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference
from mtl_fast.aggregation import _qp

from helpers import cuda_gram_rtol

from .emulated import DEVICE_PROFILES

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Each dtype's scales reach close to its range, where float32 products would overflow or flush to zero.
SCALES = {torch.float32: [1e-30, 1.0, 1e30], torch.float64: [1e-30, 1.0, 1e30], torch.float16: [1e-3, 1.0, 1e3],
          torch.bfloat16: [1e-30, 1.0, 1e30]}
# The emulator's vector width is 16 bytes; chunk widths around it exercise the vectorised path (aligned, width a
# multiple of the vector), the scalar path (odd widths, or rows offset by one element) and empty chunks.
MIXED_COLUMNS = [12, 7, 0, 33, 1, 64]


def make_chunk(K: int, cols: int, dtype: torch.dtype, scale: float = 1.0, offset: int = 0) -> torch.Tensor:
    """A contiguous (K, cols) chunk whose storage ends where it does (so ASan sees any read past it), starting
    `offset` elements into its storage (so its rows are not 16-byte aligned when offset is odd)."""
    values = (torch.randn(K * cols + offset, dtype=torch.float64) * scale).to(dtype)
    return values[offset:].view(K, cols)


def mixed_chunks(K: int, dtype: torch.dtype, scale: float = 1.0):
    return [make_chunk(K, cols, dtype, scale, offset=c % 2) for c, cols in enumerate(MIXED_COLUMNS)]


FLOAT64_GRAM_RTOL, FLOAT32_GRAM_RTOL = cuda_gram_rtol(torch.float64), cuda_gram_rtol(torch.float32)


def gram_errors(G: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|G - expected| / sqrt(G_ii G_jj), the error relative to the scale of each dot product."""
    diagonal = expected.diagonal().abs()
    return (G - expected).abs() / (torch.sqrt(diagonal[:, None] * diagonal[None, :]) + 1e-300)


def assert_gram_close(G: torch.Tensor, expected: torch.Tensor, rtol: float = FLOAT64_GRAM_RTOL):
    """Entrywise |G - expected| <= rtol sqrt(G_ii G_jj), and symmetry."""
    assert torch.equal(G, G.T)
    assert (gram_errors(G, expected) <= rtol).all(), gram_errors(G, expected).max()


def assert_combine_close(out: torch.Tensor, chunk: torch.Tensor, weights: torch.Tensor, prior=None):
    """Within one rounding of out's dtype of the float64 sum (plus float64 rounding of the sum itself)."""
    exact = torch.einsum("k,kn->n", weights.double(), chunk.double().reshape(chunk.shape[0], -1))
    if prior is not None:
        exact = exact + prior.double().reshape(-1)
    magnitude = torch.einsum("k,kn->n", weights.double().abs(), chunk.double().abs().reshape(chunk.shape[0], -1))
    info = torch.finfo(out.dtype)
    bound = info.eps * exact.abs() + 1e-14 * magnitude + info.tiny * info.eps
    got = out.double().reshape(-1)
    overflow = exact.abs() > info.max
    assert torch.isinf(got[overflow]).all()
    assert ((got - exact).abs()[~overflow] <= bound[~overflow]).all(), (got - exact).abs().max()


def test_16_bit_conversions_round_like_torch(kernels):
    """The emulator's float16 / bfloat16 conversions round to nearest even, as torch's (and the GPU's) do, over
    random bit patterns (every exponent: subnormals, overflow to inf, underflow to zero) and ties."""
    bits = torch.randint(-2**31, 2**31 - 1, (200000,), dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32)
    x = torch.cat([x[~torch.isnan(x)], torch.tensor([0.5 ** 25, 3 * 0.5 ** 26, 65520.0, 65519.0, -0.0, 2.0 ** -150])])
    half, bfloat16 = kernels.round_to_16_bits(x)
    assert torch.equal(half.view(torch.int16), x.to(torch.float16).view(torch.int16))
    assert torch.equal(bfloat16.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))


# ---- gram ------------------------------------------------------------------------------------------------------


TILE_SHAPE_KS = list(range(1, 18)) + [24, 31, 33, 64]


# Float32 products for every K; float64 ones (the same tiles, other sums) for a tile of each size, one partial
# and one whole row block of 8 beside the diagonal, and the packed triangle of 5 row blocks.
@pytest.mark.parametrize("K, dtype", [(K, torch.float32) for K in TILE_SHAPE_KS]
                         + [(K, torch.float64) for K in (1, 2, 3, 4, 5, 8, 9, 16, 33)])
def test_gram_every_tile_shape(kernels, K, dtype):
    """Tiles of 2, 4 and 8 rows, one tile or the packed triangle of tiles, partial last row blocks."""
    chunks = mixed_chunks(K, dtype)
    assert_gram_close(kernels.gram(chunks), reference.gram(chunks), cuda_gram_rtol(dtype))


# The float32 plan is the same on every device: as many slabs as keep each thread within 128 columns.
@pytest.mark.parametrize("profile, dtype", [(p, torch.float64) for p in DEVICE_PROFILES] + [("h100", torch.float32)])
@pytest.mark.parametrize("K, cols", [(3, 26000), (9, 1500)])
def test_gram_grid_plans(kernels, profile, dtype, K, cols):
    """Columns enough that the grid plans differ. Float64: as many slabs as the items need (h100), slabs capped
    by a small device (consumer, for K = 3), or one slab whose threads walk every item (one_sm). Float32: many
    slabs of threads with a few items each."""
    kernels.set_device(profile)
    try:
        chunks = [make_chunk(K, cols, dtype), make_chunk(K, 1001, dtype, offset=1)]
        assert_gram_close(kernels.gram(chunks), reference.gram(chunks), cuda_gram_rtol(dtype))
    finally:
        kernels.set_device("h100")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gram_dtypes_and_scales(kernels, device, dtype):
    for scale in SCALES[dtype]:
        chunks = mixed_chunks(5, dtype, scale)
        G = kernels.gram(chunks)
        assert_gram_close(G, reference.gram(chunks), cuda_gram_rtol(dtype, scale))
        if mf.backend() != "python":
            assert_gram_close(G, mf.gram(chunks), rtol=1e-5)


def test_gram_takes_float32_products_in_range(kernels):
    """Float32 input in range is multiplied in float32: within float32's rounding of the float64 reference, and
    not equal to it, as float64 products of float32 input would be (to 1e-12). (Float32 products of 16-bit
    input are exact, and their short sums here too.)"""
    chunks = mixed_chunks(12, torch.float32)
    errors = gram_errors(kernels.gram(chunks), reference.gram(chunks))
    assert (errors <= FLOAT32_GRAM_RTOL).all() and errors.max() > FLOAT64_GRAM_RTOL


@pytest.mark.parametrize("K, row", [(5, 3), (12, 10), (12, 1)])
@pytest.mark.parametrize("scale", [1e-42, 1e-30, 1e30, 1e37])
def test_gram_rows_out_of_float32_range_take_float64_products(kernels, K, row, scale):
    """One task's gradient far out of float32's product range (1e-42 is subnormal in float32; 1e37 squared
    overflows): every block whose tile holds that row takes float64 products again, so the row's dot products
    are exact where float32 ones would flush to zero, lose their digits or overflow. Row 10 of 12 is a tile's
    second row block (off-diagonal tiles (0, 1)), row 1 its first."""
    chunks = mixed_chunks(K, torch.float64)
    for chunk in chunks:
        chunk[row] *= scale
    chunks = [chunk.float() for chunk in chunks]
    errors = gram_errors(kernels.gram(chunks), reference.gram(chunks))
    assert (errors[row] <= FLOAT64_GRAM_RTOL).all(), errors[row].max()
    assert (errors <= FLOAT32_GRAM_RTOL).all(), errors.max()


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_gram_carries_inf_and_nan_like_the_reference(kernels, bad):
    chunks = mixed_chunks(12, torch.float32)
    chunks[3][2, 5] = bad
    G, expected = kernels.gram(chunks), reference.gram(chunks)
    assert torch.equal(torch.isnan(G), torch.isnan(expected)) and torch.equal(torch.isinf(G), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert (gram_errors(G, expected)[finite] <= FLOAT32_GRAM_RTOL).all()


def test_gram_of_a_zero_row_is_exactly_zero(kernels):
    chunks = mixed_chunks(12, torch.float32)
    for chunk in chunks:
        chunk[4] = 0.0
    G = kernels.gram(chunks)
    assert torch.equal(G[4], torch.zeros(12, dtype=torch.float64))


def test_gram_chunk_list_longer_than_one_launch(kernels, device):
    """Over kMaxChunksPerLaunch (96) chunks of each dtype, with empty ones between: several launches per dtype
    write their own rows of the scratch."""
    columns = [0, 3, 8, 1, 16, 5]
    chunks = [make_chunk(3, columns[c % len(columns)], FLOAT_DTYPES[c % 4], offset=c % 3) for c in range(4 * 100)]
    assert_gram_close(kernels.gram(chunks), reference.gram(chunks), FLOAT32_GRAM_RTOL)


def test_gram_only_empty_chunks_is_zero(kernels):
    chunks = [make_chunk(4, 0, torch.float32), make_chunk(4, 0, torch.float64)]
    # No launch reads J; the finish kernel sums zero scratch rows.
    assert torch.equal(kernels.gram(chunks), torch.zeros(4, 4, dtype=torch.float64))


def test_gram_bitwise_deterministic(kernels, device):
    chunks = mixed_chunks(10, torch.float32) + [make_chunk(10, 300, torch.float32)]
    first = kernels.gram(chunks)
    for _ in range(2):
        assert torch.equal(kernels.gram(chunks), first)


# ---- combine ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("K", [1, 2, 5, 17])
def test_combine_against_reference(kernels, device, dtype, K):
    for scale in SCALES[dtype]:
        chunks = mixed_chunks(K, dtype, scale)
        weights = torch.randn(K, dtype=torch.float64)
        outs = kernels.combine(chunks, weights)
        for out, chunk, expected in zip(outs, chunks, reference.combine(chunks, weights)):
            assert out.shape == expected.shape and out.dtype == expected.dtype
            assert_combine_close(out, chunk, weights)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_combine_into_accumulates(kernels, dtype):
    K = 4
    chunks = mixed_chunks(K, dtype)
    weights = torch.randn(K, dtype=torch.float64)
    priors = [make_chunk(1, c.shape[1], dtype, offset=1 - i % 2)[0] for i, c in enumerate(chunks)]
    outs = [p.clone() for p in priors]
    kernels.combine_into(chunks, weights, outs, accumulate=True)
    for out, chunk, prior in zip(outs, chunks, priors):
        assert_combine_close(out, chunk, weights, prior)


def test_combine_chunk_list_longer_than_one_launch(kernels):
    chunks = [make_chunk(3, [0, 3, 8, 1, 16][c % 5], FLOAT_DTYPES[c % 4], offset=c % 3) for c in range(4 * 100)]
    weights = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    for out, chunk in zip(kernels.combine(chunks, weights), chunks):
        assert_combine_close(out, chunk, weights)


def test_combine_extreme_weights_stay_finite(kernels):
    """PCGrad weights reach 1e60 where a gradient is 1e-30: the float64 accumulation keeps the product finite."""
    chunks = [make_chunk(2, 9, torch.float32, 1e-30)]
    weights = torch.tensor([1e60, -1e59], dtype=torch.float64)
    (out,) = kernels.combine(chunks, weights)
    assert_combine_close(out, chunks[0], weights)


def test_combine_bitwise_deterministic(kernels, device):
    chunks = mixed_chunks(6, torch.bfloat16) + [make_chunk(6, 2048, torch.float32)]
    weights = torch.randn(6, dtype=torch.float64)
    first = kernels.combine(chunks, weights)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(kernels.combine(chunks, weights), first))


# ---- PCGrad weights --------------------------------------------------------------------------------------------


def random_orders(K: int) -> torch.Tensor:
    return torch.stack([torch.tensor([j for j in torch.randperm(K).tolist() if j != i], dtype=torch.int64)
                        for i in range(K)]) if K > 1 else torch.zeros(1, 0, dtype=torch.int64)


@pytest.mark.parametrize("K", [1, 2, 3, 8, 33, 64])
def test_pcgrad_weights_against_reference_and_cpu_op(kernels, K):
    J = torch.randn(K, 20, dtype=torch.float64)
    for G in (J @ J.T, (J @ J.T) * 1e-60, -(J @ J.T)):  # conflicting, tiny and all-conflicting Gram matrices
        orders = random_orders(K)
        w = kernels.pcgrad_weights(G, orders)
        expected = reference.pcgrad_weights(G, orders)
        torch.testing.assert_close(w, expected, rtol=1e-10, atol=1e-12 * expected.abs().max().item())
        if mf.backend() != "python":
            assert torch.equal(w, mf.PCGrad().weights(G, orders))


def test_pcgrad_weights_non_finite_gram_gives_nan(kernels):
    G = torch.eye(4, dtype=torch.float64)
    G[1, 2] = float("inf")
    assert torch.isnan(kernels.pcgrad_weights(G, random_orders(4))).all()


# ---- nonnegative QP ----

# The QP-based aggregators' settings: regularisation of M, KKT tolerance, block-pivoting steps and patience.
QP_REGULARIZATION, QP_TOLERANCE = _qp.QP_REGULARIZATION, _qp.QP_TOLERANCE
qp_max_iter, qp_patience = _qp.max_iterations, _qp.patience


def assert_kkt(M, q, z, simplex, tol=1e-7):
    """z >= 0 (on the simplex), and the multipliers of the bounds are >= 0, and 0 where z > 0."""
    assert (z >= 0).all()
    gradient = M @ z + q
    scale = 1 + gradient.abs().max()
    if simplex:
        assert abs(z.sum() - 1) < 1e-9
        gradient = gradient - gradient[z > 0].mean()
    assert (gradient >= -tol * scale).all()
    assert (gradient[z > 1e-12].abs() <= tol * scale).all()


@pytest.mark.parametrize("simplex", [False, True])
@pytest.mark.parametrize("K", [1, 3, 10])
def test_nonneg_qp_against_kkt_and_solver(kernels, K, simplex):
    """130 problems: two blocks of the one-thread-per-problem kernel."""
    A = torch.randn(K, K + 2, dtype=torch.float64)
    M = A @ A.T + 0.1 * torch.eye(K, dtype=torch.float64)
    Q = torch.randn(130, K, dtype=torch.float64)
    Z = kernels.nonneg_qp(M, Q, simplex, QP_TOLERANCE, qp_max_iter(K), qp_patience(K))
    for b in range(Q.shape[0]):
        assert_kkt(M, Q[b], Z[b], simplex)
    expected = reference.nonneg_qp(M, Q, simplex, QP_TOLERANCE, qp_max_iter(K), qp_patience(K))
    torch.testing.assert_close(Z, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["mgda", "dualproj", "upgrad"])
@pytest.mark.parametrize("K", [1, 2, 3, 8, 20])
def test_qp_weights_against_reference(kernels, method, K):
    J = torch.randn(K, 3 * K, dtype=torch.float64)
    J[0] = -J[1 % K]  # a conflict
    G = J @ J.T
    settings = (QP_REGULARIZATION, QP_TOLERANCE, qp_max_iter(K), qp_patience(K))
    for pref in [None] if method == "mgda" else [None, torch.rand(K, dtype=torch.float64) + 0.5]:
        w = kernels.qp_weights(G, pref, method, *settings)
        expected = reference.qp_weights(G, pref, method, *settings)
        torch.testing.assert_close(w, expected, rtol=1e-6, atol=1e-9)
    bad = G.clone()
    bad[0, 0] = float("nan")
    assert torch.isnan(kernels.qp_weights(bad, None, method, *settings)).all()


# ---- fused heads -----------------------------------------------------------------------------------------------

HEADS_TASKS = {
    "mixed": ([3, 1, 40, 5, 33], [False, True, False, True, False]),
    # More than kMaxHeadsTasks (64) tasks: two launches.
    "many": ([2, 1] * 35, [False, True] * 35),
}


def heads_inputs(sizes, regression, batch, dtype, ignore_index=-100):
    logits = (torch.randn(batch, sum(sizes), dtype=torch.float64) * 3).to(dtype)
    classes = [torch.randint(0, s, (batch,)) for s, r in zip(sizes, regression) if not r]
    class_targets = torch.stack(classes) if classes else torch.zeros(0, batch, dtype=torch.int64)
    if class_targets.numel():
        class_targets[0, ::3] = ignore_index
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    value_targets = torch.randn(batch, sum(s for s, r in zip(sizes, regression) if r), dtype=acc)
    return logits, class_targets.contiguous(), value_targets


# Every dtype and reduction on the mixed tasks; the two launches of "many" once per reduction.
HEADS_CASES = ([("mixed", reduction, dtype) for reduction in ["mean", "sum", "none"] for dtype in FLOAT_DTYPES]
               + [("many", reduction, torch.float32) for reduction in ["mean", "none"]])


@pytest.mark.parametrize("tasks, reduction, dtype", HEADS_CASES)
def test_heads_loss_against_reference(kernels, tasks, reduction, dtype):
    sizes, regression = HEADS_TASKS[tasks]
    batch = 13 if tasks == "mixed" else 3
    logits, class_targets, value_targets = heads_inputs(sizes, regression, batch, dtype)
    losses, grad = kernels.heads_loss(logits, class_targets, value_targets, sizes, regression, -100, reduction)
    wide = logits.double().requires_grad_()
    expected = reference.heads_loss(wide, class_targets, value_targets.double(), sizes, regression, -100, reduction)
    (expected_grad,) = torch.autograd.grad(expected.sum(), wide)
    low = dtype in (torch.float16, torch.bfloat16)
    tol = dict(rtol=2e-2, atol=2e-2) if low else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses.double(), expected.detach(), **tol)
    torch.testing.assert_close(grad.double(), expected_grad, **tol)
    repeat = kernels.heads_loss(logits, class_targets, value_targets, sizes, regression, -100, reduction)
    assert torch.equal(repeat[0], losses) and torch.equal(repeat[1], grad)


def test_heads_loss_out_of_range_class_is_nan(kernels):
    sizes, regression = [3, 2], [False, False]
    logits, class_targets, value_targets = heads_inputs(sizes, regression, 4, torch.float32)
    class_targets[1, 2] = 7
    losses, grad = kernels.heads_loss(logits, class_targets, value_targets, sizes, regression, -100, "mean")
    assert torch.isfinite(losses[0]) and torch.isnan(losses[1])
    assert torch.isnan(grad[2, 3:]).all() and torch.isfinite(grad[:, :3]).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_heads_loss_backward(kernels, dtype, per_sample):
    sizes, regression = HEADS_TASKS["mixed"]
    batch = 11
    grad = torch.randn(batch, sum(sizes), dtype=torch.float64).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scales = torch.randn((len(sizes), batch) if per_sample else (len(sizes),), dtype=acc)
    out = kernels.heads_loss_backward(scales, grad, sizes, regression)
    columns = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    factor = scales[columns].T if per_sample else scales[columns][None, :]
    expected = (grad.to(acc) * factor).to(dtype)
    assert torch.equal(out, expected)
