"""The CUDA kernels against mtl_fast.reference and the CPU kernels; CUDA graphs; end to end on the GPU.

Run on a GPU machine by scripts/gpu_check.sh; skipped everywhere else.
"""
import copy

import pytest
import torch

import mtl_fast as mf
from mtl_fast import _ops, reference
from mtl_fast.aggregation import draw_pcgrad_orders

from helpers import cuda_gram_rtol, origin_batch, random_chunks
from test_ops import SCALES, SHAPES, TOLERANCE, _close_gram

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
ops = torch.ops.mtl_fast
KS = [1, 2, 3, 4, 5, 8, 9, 16, 17, 64]


def _cuda(chunks):
    return [c.to(CUDA) for c in chunks]


def _orders(K, seed=0):
    return draw_pcgrad_orders(K, torch.device("cpu"), torch.Generator().manual_seed(seed))


def _conflicting_rows(K, n, dtype=torch.float64):
    J = torch.randn(K, n, dtype=torch.float64)
    J[1 % K] = -0.9 * J[0] + 0.1 * J[1 % K]  # at least one conflict
    return J.to(dtype)


def test_backend_is_cuda():
    assert mf.backend() == "cuda"
    assert _ops.has_kernel("gram", "cuda")


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("shapes", list(SHAPES), ids=list(SHAPES))
def test_gram_matches_reference_and_cpu(K, shapes):
    chunks = random_chunks(K, SHAPES[shapes])
    G = ops.gram(_cuda(chunks))
    assert G.device.type == CUDA.type and G.dtype == torch.float64 and G.shape == (K, K)
    assert torch.equal(G, G.T)
    _close_gram(G.cpu(), reference.gram(chunks), cuda_gram_rtol(torch.float32))
    _close_gram(G.cpu(), ops.gram(chunks), 2 * cuda_gram_rtol(torch.float32))  # both in float32


@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("shapes", list(SHAPES), ids=list(SHAPES))
def test_combine_matches_reference_and_cpu(K, shapes):
    chunks = random_chunks(K, SHAPES[shapes])
    w = torch.linspace(-2, 3, K, dtype=torch.float64)
    got = ops.combine(_cuda(chunks), w.to(CUDA))
    for out, ref, cpu, chunk in zip(got, reference.combine(chunks, w), ops.combine(chunks, w), chunks):
        assert out.device.type == CUDA.type and out.dtype == chunk.dtype and out.shape == chunk.shape[1:]
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.cpu(), cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", list(SCALES))
def test_gram_and_combine_over_dtypes_and_scales(dtype):
    K = 6
    w = torch.linspace(-2, 3, K, dtype=torch.float64)
    for scale in SCALES[dtype]:
        chunks = random_chunks(K, SHAPES["many_odd_chunks"] + [(1 << 20,)], dtype=dtype, scale=scale)
        G = ops.gram(_cuda(chunks)).cpu()
        assert torch.isfinite(G).all()
        _close_gram(G, reference.gram(chunks), cuda_gram_rtol(dtype, scale))
        for out, ref in zip(ops.combine(_cuda(chunks), w.to(CUDA)), reference.combine(chunks, w)):
            assert out.dtype == dtype and torch.isfinite(out).all()
            tol = TOLERANCE[dtype]  # values are O(1) once divided by the scale
            torch.testing.assert_close(out.cpu().double() / scale, ref.double() / scale, rtol=tol, atol=tol)


def test_mixed_dtypes_and_more_chunks_than_one_launch_holds():
    # 250 chunks of four dtypes: several launches per dtype, and the scratch rows of all of them in one sum.
    K = 5
    dtypes = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
    chunks = [random_chunks(K, [(1 + (7 * i) % 300,)], dtype=dtypes[i % 4])[0] for i in range(250)]
    _close_gram(ops.gram(_cuda(chunks)).cpu(), reference.gram(chunks), cuda_gram_rtol(torch.float32))
    w = torch.rand(K, dtype=torch.float64)
    for out, ref in zip(ops.combine(_cuda(chunks), w.to(CUDA)), reference.combine(chunks, w)):
        torch.testing.assert_close(out.cpu(), ref, rtol=TOLERANCE[ref.dtype], atol=TOLERANCE[ref.dtype])


def test_noncontiguous_and_misaligned_chunks():
    K = 5
    flat = torch.randn(K * 4096 + 1, device=CUDA)
    chunks = [
        torch.randn(3000, K, device=CUDA).T,                       # transposed
        torch.randn(K, 40, 6, device=CUDA)[:, ::3, :],             # strided
        flat[1:].view(K, 4096),                                    # contiguous, 4 bytes off 16-byte alignment
        torch.randn(K, 4097, device=CUDA),                         # rows not a multiple of the vector width
    ]
    assert not chunks[0].is_contiguous() and not chunks[1].is_contiguous()
    cpu = [c.cpu() for c in chunks]
    _close_gram(ops.gram(chunks).cpu(), reference.gram(cpu), cuda_gram_rtol(torch.float32))
    w = torch.rand(K, dtype=torch.float64)
    for out, ref in zip(ops.combine(chunks, w.to(CUDA)), reference.combine(cpu, w)):
        torch.testing.assert_close(out.cpu(), ref)


def test_combine_into_accumulates_onto_any_layout_and_dtype():
    K = 4
    chunks = _cuda(random_chunks(K, [(6, 5), (11,), (3,), (1 << 16,), (4097,)]))
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64, device=CUDA)
    outs = [torch.randn(5, 6, device=CUDA).T,                     # non-contiguous
            torch.randn(11, dtype=torch.float64, device=CUDA),    # another dtype than its chunk
            torch.randn(3, device=CUDA),
            torch.randn(1 << 16, device=CUDA),
            torch.randn(2 * 4097, device=CUDA)[::2]]              # strided
    expected = [o.clone() + r.to(o.dtype) for o, r in zip(outs, reference.combine(chunks, w))]
    ops.combine_into(chunks, w, outs)
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_combine_into_half_precision_grads(dtype):
    K = 3
    chunks = _cuda(random_chunks(K, [(1000,), (8, 8)], dtype=dtype))
    w = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64, device=CUDA)
    outs = [torch.randn(1000, device=CUDA, dtype=dtype), torch.randn(8, 8, device=CUDA, dtype=dtype)]
    expected = [(o.double() + r.double()) for o, r in zip(outs, reference.combine(chunks, w))]
    ops.combine_into(chunks, w, outs)
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o.double(), e, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * 4)


def test_empty_chunks():
    K = 3
    chunks = [torch.empty(K, 0, device=CUDA), torch.randn(K, 7, device=CUDA), torch.empty(K, 0, 5, device=CUDA)]
    _close_gram(ops.gram(chunks).cpu(), reference.gram([c.cpu() for c in chunks]), cuda_gram_rtol(torch.float32))
    assert torch.equal(ops.gram([chunks[0]]).cpu(), torch.zeros(K, K, dtype=torch.float64))
    w = torch.rand(K, dtype=torch.float64, device=CUDA)
    outs = ops.combine(chunks, w)
    assert [tuple(o.shape) for o in outs] == [(0,), (7,), (0, 5)]
    ops.combine_into([chunks[0]], w, [torch.empty(0, device=CUDA)])


@pytest.mark.parametrize("K", [1, 2, 3, 8, 16, 64])
def test_pcgrad_weights_match_cpu_and_the_algorithm(K):
    J = _conflicting_rows(K, 300)
    orders = _orders(K, seed=K)
    G = ops.gram([J])
    w = ops.pcgrad_weights(G.to(CUDA), orders.to(CUDA))
    assert w.device.type == CUDA.type and w.dtype == torch.float64 and w.shape == (K,)
    torch.testing.assert_close(w.cpu(), ops.pcgrad_weights(G, orders), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.cpu(), reference.pcgrad_weights(G, orders))
    torch.testing.assert_close(w.cpu() @ J, reference.pcgrad(J, orders))


def test_pcgrad_weights_take_a_float32_gram():
    J = _conflicting_rows(6, 100)
    orders = _orders(6)
    G = ops.gram([J])
    torch.testing.assert_close(ops.pcgrad_weights(G.float().to(CUDA), orders.to(CUDA)).cpu(),
                               ops.pcgrad_weights(G.float(), orders))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_pcgrad_degenerate_gradients_stay_finite(dtype):
    rows = torch.randn(7, 1000, dtype=torch.float64)
    rows[0] = 0.0
    rows[1] *= 1e-30
    rows[2] = -rows[3] * 1e30
    rows[4] = torch.full((1000,), 1e-40)
    rows[5] = -rows[4]
    J = rows.to(dtype).to(CUDA)
    for seed in range(5):
        orders = _orders(7, seed).to(CUDA)
        w = ops.pcgrad_weights(ops.gram([J]), orders)
        assert torch.isfinite(w).all()
        assert torch.isfinite(ops.combine([J], w)[0]).all()
        assert torch.isfinite(mf.aggregate(J, mf.PCGrad(seed=seed))).all()


def test_results_are_bitwise_reproducible():
    K = 8
    chunks = _cuda(random_chunks(K, [(1 << 20,), (77,), (65_536,), (4097,)]))
    J64 = _conflicting_rows(K, 5000).to(CUDA)
    orders = _orders(K).to(CUDA)
    w = torch.linspace(-1, 1, K, dtype=torch.float64, device=CUDA)
    first = (ops.gram(chunks), ops.combine(chunks, w), ops.pcgrad_weights(ops.gram([J64]), orders))
    for _ in range(3):
        G, outs, pw = ops.gram(chunks), ops.combine(chunks, w), ops.pcgrad_weights(ops.gram([J64]), orders)
        assert torch.equal(G, first[0])
        assert all(torch.equal(a, b) for a, b in zip(outs, first[1]))
        assert torch.equal(pw, first[2])


def test_errors_name_the_argument():
    with pytest.raises(RuntimeError, match=r"jac\[1\]: has 2 tasks"):
        ops.gram([torch.randn(3, 4, device=CUDA), torch.randn(2, 4, device=CUDA)])
    with pytest.raises(RuntimeError, match="weights: expected shape"):
        ops.combine([torch.randn(3, 4, device=CUDA)], torch.ones(2, device=CUDA))
    with pytest.raises(RuntimeError, match="orders: expected shape"):
        ops.pcgrad_weights(torch.eye(3, device=CUDA), torch.zeros(3, 3, dtype=torch.long, device=CUDA))


def test_opcheck_every_op_on_cuda():
    chunks = [torch.randn(3, 5, device=CUDA), torch.randn(3, 2, 4, device=CUDA)]
    w = torch.rand(3, dtype=torch.float64, device=CUDA)
    G = ops.gram(chunks)
    orders = _orders(3).to(CUDA)
    torch.library.opcheck(ops.gram.default, (chunks,))
    torch.library.opcheck(ops.pcgrad_weights.default, (G, orders))
    torch.library.opcheck(ops.combine.default, (chunks, w))
    torch.library.opcheck(ops.combine_into.default,
                          (chunks, w, [torch.zeros(5, device=CUDA), torch.zeros(2, 4, device=CUDA)]))
    grad_chunks = [c.double().requires_grad_() for c in chunks]
    torch.library.opcheck(ops.gram.default, (grad_chunks,))
    torch.library.opcheck(ops.combine.default, (grad_chunks, w.clone().requires_grad_()))


def _capture(fn, warmups=3):
    """Warms fn up on a side stream (as torch.cuda.graphs asks), then captures it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def test_cuda_graph_of_gram_pcgrad_weights_and_combine_into():
    K = 6
    shapes = [(300,), (17, 3), (1 << 16,), (1,)]
    chunks = _cuda(random_chunks(K, shapes))
    orders = _orders(K).to(CUDA)
    grads = [torch.zeros(s, device=CUDA) for s in shapes]

    def step():
        w = ops.pcgrad_weights(ops.gram(chunks), orders)
        ops.combine_into(chunks, w, grads)

    graph = _capture(step)
    for trial in range(3):
        fresh = random_chunks(K, shapes)
        fresh[0][1] = -fresh[0][0]  # a conflict in every draw
        for c, f in zip(chunks, fresh):
            c.copy_(f)
        for g in grads:
            g.fill_(float(trial))
        graph.replay()
        torch.cuda.synchronize()
        cpu_orders = orders.cpu()
        w = reference.pcgrad_weights(reference.gram(fresh), cpu_orders)
        for g, ref in zip(grads, reference.combine(fresh, w)):
            torch.testing.assert_close(g.cpu(), ref.float() + trial, rtol=1e-5, atol=1e-5)


class _FixedOrderPCGrad(mf.PCGrad):
    """PCGrad with pinned visiting orders, so a CUDA run and a CPU run do the same projections."""

    def __init__(self, orders):
        super().__init__()
        self._pinned = orders

    def orders(self, K, device):
        return self._pinned.to(device)


def _aggregators(K):
    return {"sum": mf.Sum(), "weighted": mf.Weighted([0.5 + k for k in range(K)]),
            "pcgrad": _FixedOrderPCGrad(_orders(K, seed=5))}


def _backward(model, x, ys, level, aggregator, jacobian="auto"):
    """One mtl_fast backward of the model's K task losses, at the parameter or the representation level."""
    if level == "parameter":
        mf.backward(model.losses(model(x), ys), model.trunk.parameters(), aggregator=aggregator, jacobian=jacobian)
    else:
        features = mf.fork(model.trunk(x), model.num_tasks, aggregator=aggregator)
        logits = [head(f) for head, f in zip(model.task_heads, features)]
        sum(model.losses(logits, ys)).backward()


@pytest.mark.parametrize("level", ["parameter", "representation"])
@pytest.mark.parametrize("name", ["sum", "weighted", "pcgrad"])
def test_origin_network_end_to_end_matches_cpu(level, name):
    K = 3
    model, x, ys = origin_batch(K=K)
    gpu_model = copy.deepcopy(model).to(CUDA)
    _backward(model, x, ys, level, _aggregators(K)[name])
    _backward(gpu_model, x.to(CUDA), [y.to(CUDA) for y in ys], level, _aggregators(K)[name])
    for got, expected in zip(gpu_model.parameters(), model.parameters()):
        torch.testing.assert_close(got.grad.cpu(), expected.grad, rtol=1e-7, atol=1e-9)


def _cuda_origin(K, batch=8):
    model, x, ys = origin_batch(K=K, batch=batch)
    return model.float().to(CUDA), x.float().to(CUDA), [y.to(CUDA) for y in ys]


def _training_step(model, x, ys, level, aggregator, jacobian="auto"):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step():
        opt.zero_grad(set_to_none=True)
        _backward(model, x, ys, level, aggregator, jacobian)
        opt.step()

    return step


@pytest.mark.parametrize("jacobian", ["auto", "loop"])
def test_cuda_graph_of_a_whole_training_step_matches_eager(jacobian):
    # K = 2: each task has a single other task to visit, so the visiting order (random, and drawn from other
    # philox offsets inside a graph) cannot make the graph and the eager step differ.
    model, x, ys = _cuda_origin(K=2)
    eager = copy.deepcopy(model)
    graph = _capture(_training_step(model, x, ys, "parameter", mf.PCGrad(), jacobian))
    with torch.no_grad():  # the warm-up steps moved model: start both from the same point
        for p, q in zip(model.parameters(), eager.parameters()):
            p.copy_(q)
    eager_step = _training_step(eager, x, ys, "parameter", mf.PCGrad(), jacobian)
    for _ in range(3):
        graph.replay()
        eager_step()
        torch.cuda.synchronize()
        for p, q in zip(model.parameters(), eager.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("level", ["parameter", "representation"])
def test_cuda_graph_training_with_pcgrad_reduces_the_loss(level):
    model, x, ys = _cuda_origin(K=4, batch=32)
    graph = _capture(_training_step(model, x, ys, level, mf.PCGrad()))
    with torch.no_grad():
        before = sum(model.losses(model(x), ys)).item()
    for _ in range(30):
        graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        after = sum(model.losses(model(x), ys)).item()
    assert after < before
    assert all(torch.isfinite(p).all() for p in model.parameters())
