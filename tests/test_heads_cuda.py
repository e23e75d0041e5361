"""The CUDA heads_loss kernels against the CPU op and K separate nn.Linear + F.cross_entropy (needs a GPU)."""
import pytest
import torch
import torch.nn.functional as F

from mtl_fast.nn import MultiTaskHeads
from mtl_fast import _ops, reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not _ops.has_kernel("heads_loss", "cuda"), reason="no CUDA heads_loss kernel")]


def inputs(sizes, regression, B, dtype, device, ignore_every=4):
    logits = torch.randn(B, sum(sizes), dtype=dtype, device=device) * 3
    classes = torch.stack([torch.randint(0, s, (B,), device=device)
                           for s, r in zip(sizes, regression) if not r]) if not all(regression) else \
        torch.empty(0, B, dtype=torch.int64, device=device)
    if classes.numel():
        classes[:, ::ignore_every] = -100
    acc = reference.heads_accumulation_dtype(dtype)
    values = torch.randn(B, sum(s for s, r in zip(sizes, regression) if r), dtype=acc, device=device)
    return logits, classes, values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("sizes, regression", [
    ([10] * 8, [False] * 8),
    ([1, 3, 33, 1000, 7], [False, True, False, False, True]),
    ([5] * 70, [k % 3 == 0 for k in range(70)]),  # more tasks than one launch takes
])
def test_matches_cpu_op(dtype, reduction, sizes, regression):
    logits, classes, values = inputs(sizes, regression, 37, dtype, "cuda")
    args = (sizes, regression, -100, reduction)
    losses, grad = torch.ops.mtl_fast.heads_loss(logits, classes, values, *args)
    cpu_losses, cpu_grad = torch.ops.mtl_fast.heads_loss(logits.cpu(), classes.cpu(), values.cpu(), *args)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype in (torch.float32, torch.float64) else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(losses.cpu(), cpu_losses, **tol)
    torch.testing.assert_close(grad.cpu(), cpu_grad, **tol)
    g = torch.randn(losses.shape, device="cuda")
    torch.testing.assert_close(torch.ops.mtl_fast.heads_loss_backward(g, grad, sizes).cpu(),
                               torch.ops.mtl_fast.heads_loss_backward(g.cpu(), cpu_grad, sizes), **tol)


def test_same_bits_every_run():
    logits, classes, values = inputs([1000, 10, 3], [False, False, True], 4096, torch.float32, "cuda")
    runs = [torch.ops.mtl_fast.heads_loss(logits, classes, values, [1000, 10, 3], [False, False, True], -100,
                                          "mean") for _ in range(3)]
    for losses, grad in runs[1:]:
        assert torch.equal(losses, runs[0][0]) and torch.equal(grad, runs[0][1])


def test_out_of_range_class_gives_nan_not_a_crash():
    logits, classes, values = inputs([4, 4], [False, False], 8, torch.float32, "cuda", ignore_every=100)
    classes[1, 3] = 9
    losses, grad = torch.ops.mtl_fast.heads_loss(logits, classes, values, [4, 4], [False, False], -100, "mean")
    assert torch.isfinite(losses[0]) and torch.isnan(losses[1])
    assert torch.isnan(grad[3, 4:]).all() and torch.isfinite(grad[:, :4]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_module_under_autocast_matches_separate_heads(dtype):
    heads = MultiTaskHeads(64, [10, 3, 10]).cuda()
    linears = heads.to_linears().cuda()
    x = torch.randn(32, 64, device="cuda", requires_grad=True)
    ys = [torch.randint(0, c, (32,), device="cuda") for c in (10, 3, 10)]
    with torch.autocast("cuda", dtype=dtype):
        fused = heads.cross_entropy(x, ys)
        plain = torch.stack([F.cross_entropy(h(x), y) for h, y in zip(linears, ys)])
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
    gx = torch.autograd.grad(fused.sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(plain.sum(), x)[0], rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_cuda(reduction):
    logits, classes, values = inputs([3, 3], [False, True], 5, torch.float32, "cuda")
    logits.requires_grad_()
    torch.library.opcheck(torch.ops.mtl_fast.heads_loss,
                          (logits, classes, values, [3, 3], [False, True], -100, reduction))
    g = torch.randn(2, *(() if reduction == "mean" else (5,)), device="cuda")
    torch.library.opcheck(torch.ops.mtl_fast.heads_loss_backward, (g, logits.detach(), [3, 3]))
