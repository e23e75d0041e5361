"""mtl_fast.nn.MultiTaskHeads and the fused heads_loss op against K separate nn.Linear + F.cross_entropy."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtl_fast as mf
from mtl_fast.nn import MultiTaskHeads
from mtl_fast.apps.models import MultiTaskNet
from mtl_fast import _ops, reference

from helpers import grads_of

SIZES = [3, 1, 7, 4]
needs_kernel = pytest.mark.skipif(not _ops.has_kernel("heads_loss", "cpu"), reason="no compiled heads_loss")


def make(sizes=SIZES, D=6, B=9, dtype=torch.float64, bias=True):
    heads = MultiTaskHeads(D, sizes, bias=bias, dtype=dtype)
    x = torch.randn(B, D, dtype=dtype, requires_grad=True)
    ys = [torch.randint(0, c, (B,)) for c in sizes]
    return heads, x, ys


def small_net(sizes, batch=8):
    """The origin network's layout (MultiTaskNet) on a small MLP trunk, in float64, with a batch."""
    trunk = nn.Sequential(nn.Linear(12, 16), nn.Tanh())
    trunk.out_features = 16
    model = MultiTaskNet(sizes, trunk=trunk).double()
    x = torch.randn(batch, 12, dtype=torch.float64)
    return model, x, [torch.randint(0, c, (batch,)) for c in sizes]


def looped_losses(linears, x, targets, kinds, reduction="mean", ignore_index=-100):
    """The plain way: one head, one F.cross_entropy / F.mse_loss per task."""
    xs = x if isinstance(x, (list, tuple)) else [x] * len(linears)
    kinds = [kinds] * len(linears) if isinstance(kinds, str) else kinds
    out = []
    for head, xk, t, kind in zip(linears, xs, targets, kinds):
        z = head(xk)
        if kind == "mse":
            loss = F.mse_loss(z, t.reshape(z.shape), reduction=reduction)
            out.append(loss.sum(1) if reduction == "none" else loss)
        else:
            out.append(F.cross_entropy(z, t, reduction=reduction, ignore_index=ignore_index))
    return torch.stack(out)


def assert_same_step(heads, x, targets, kinds, reduction="mean", ignore_index=-100, **tol):
    """Losses and the gradients of x, weight and bias match the looped heads."""
    linears = heads.to_linears()
    scale = torch.randn(len(targets), *(() if reduction != "none" else (x.shape[0],)), dtype=x.dtype)
    fused = heads.losses(x, targets, kinds, reduction=reduction, ignore_index=ignore_index)
    grads = torch.autograd.grad((fused * scale).sum(), [x, heads.weight, heads.bias])
    plain = looped_losses(linears, x, targets, kinds, reduction, ignore_index)
    params = [p for head in linears for p in (head.weight, head.bias)]
    plain_grads = torch.autograd.grad((plain * scale).sum(), [x] + params)
    torch.testing.assert_close(fused, plain, **tol)
    torch.testing.assert_close(grads[0], plain_grads[0], **tol)
    torch.testing.assert_close(grads[1], torch.cat(plain_grads[1::2]), **tol)
    torch.testing.assert_close(grads[2], torch.cat(plain_grads[2::2]), **tol)


def test_forward_gives_each_heads_output():
    heads, x, _ = make()
    outs = heads(x)
    assert [o.shape[1] for o in outs] == SIZES
    for out, head in zip(outs, heads.to_linears()):
        torch.testing.assert_close(out, head(x))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy_matches_separate_heads(reduction, ignore):
    heads, x, ys = make()
    if ignore:
        for y in ys:
            y[::3] = -7
    assert_same_step(heads, x, ys, "cross_entropy", reduction, ignore_index=-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_and_mixed_heads_match(reduction):
    heads, x, ys = make()
    targets = [torch.randn(9, 3, dtype=torch.float64), ys[1], torch.randn(9, 7, dtype=torch.float32),
               torch.randn(9, 4, dtype=torch.float64)]
    kinds = ["mse", "cross_entropy", "mse", "mse"]
    assert_same_step(heads, x, targets, kinds, reduction)
    one = MultiTaskHeads(6, [1, 2], dtype=torch.float64)
    assert_same_step(one, x, [torch.randn(9, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)], "mse")


def test_all_ignored_mean_is_nan_like_f_cross_entropy():
    heads, x, ys = make(sizes=[3, 2])
    ys[0].fill_(-100)
    fused = heads.cross_entropy(x, ys)
    plain = looped_losses(heads.to_linears(), x, ys, "cross_entropy")
    torch.testing.assert_close(fused, plain, equal_nan=True)
    assert torch.isnan(fused[0]) and torch.isfinite(fused[1])
    fused[1].backward()
    assert torch.isfinite(x.grad).all()


def test_targets_as_one_tensor_and_without_bias():
    heads, x, ys = make(sizes=[4, 4, 4], bias=False)
    assert heads.bias is None
    torch.testing.assert_close(heads.cross_entropy(x, torch.stack(ys)), heads.cross_entropy(x, ys))
    torch.testing.assert_close(heads.cross_entropy(x, ys), looped_losses(heads.to_linears(), x, ys, "cross_entropy"))


class _Losses(nn.Module):
    """heads.losses as a module call, so functional_call can swap in the parameters gradcheck perturbs."""

    def __init__(self, heads, targets, kinds, reduction):
        super().__init__()
        self.heads, self.targets, self.kinds, self.reduction = heads, targets, kinds, reduction

    def forward(self, x):
        return self.heads.losses(x, self.targets, self.kinds, reduction=self.reduction)


@needs_kernel
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_backward_with_unit_and_other_loss_weights_and_twice(reduction):
    """The all-ones upstream gradient (losses.sum()) and other weights scale the saved gradient: the gradients
    match the separate heads, also on a second backward through a retained graph."""
    heads, x, ys = make()
    linears = heads.to_linears()
    for weights in (torch.ones(len(SIZES)), torch.tensor([2.0, -1.0, 0.0, 0.5])):
        if reduction == "none":
            weights = weights[:, None].expand(-1, x.shape[0])
        weights = weights.double()
        fused = heads.cross_entropy(x, ys, reduction=reduction)
        looped = looped_losses(linears, x, ys, "cross_entropy", reduction)
        for _ in range(2):  # the second pass reads the saved gradient again
            expected = torch.autograd.grad((looped * weights).sum(), [x, *linears.parameters()], retain_graph=True)
            got = torch.autograd.grad((fused * weights).sum(), [x, heads.weight, heads.bias], retain_graph=True)
            assert torch.allclose(got[0], expected[0])
            assert torch.allclose(got[1], torch.cat(expected[1::2]))
            assert torch.allclose(got[2], torch.cat(expected[2::2]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_and_gradgradcheck(reduction):
    heads, x, ys = make(sizes=[3, 1, 2], D=3, B=4)
    ys[0][1] = -100
    targets = [ys[0], torch.randn(4, dtype=torch.float64), ys[2]]
    module = _Losses(heads, targets, ["cross_entropy", "mse", "cross_entropy"], reduction)
    w, b = (p.detach().clone().requires_grad_() for p in (heads.weight, heads.bias))

    def losses(x, w, b):
        return torch.func.functional_call(module, {"heads.weight": w, "heads.bias": b}, (x,))

    assert torch.autograd.gradcheck(losses, (x, w, b))
    assert torch.autograd.gradgradcheck(losses, (x, w, b))


@needs_kernel
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_op(reduction):
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([[0, 2, -100, 1, 1, 0], [3, 0, 1, 2, 3, -100]])
    values = torch.randn(6, 2, dtype=torch.float64)

    def op(z):
        return torch.ops.mtl_fast.heads_loss(z, classes, values, [3, 2, 4], [False, True, False], -100,
                                             reduction)[0]

    assert torch.autograd.gradcheck(op, (logits,))
    torch.testing.assert_close(op(logits), reference.heads_loss(
        logits, classes, values, [3, 2, 4], [False, True, False], -100, reduction))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck(dtype, reduction):
    logits = torch.randn(5, 6, dtype=dtype, requires_grad=True)
    classes = torch.tensor([[0, 2, 1, -100, 1]])
    values = torch.randn(5, 3, dtype=reference.heads_accumulation_dtype(dtype))
    torch.library.opcheck(torch.ops.mtl_fast.heads_loss,
                          (logits, classes, values, [3, 3], [False, True], -100, reduction))
    grad_losses = torch.randn(2, *(() if reduction == "mean" else (5,)))
    torch.library.opcheck(torch.ops.mtl_fast.heads_loss_backward, (grad_losses, logits.detach(), [3, 3]))


def test_conversion_round_trips():
    net = MultiTaskNet([10, 3, 5])
    heads = MultiTaskHeads.from_linears(net.task_heads)
    assert heads.out_features == (10, 3, 5) and heads.weight.shape == (18, 128)
    back = heads.to_linears()
    for a, b in zip(net.task_heads, back):
        torch.testing.assert_close(a.weight, b.weight)
        torch.testing.assert_close(a.bias, b.bias)
        assert a.weight.data_ptr() != b.weight.data_ptr()
    again = MultiTaskHeads.from_linears(back)
    torch.testing.assert_close(again.weight, heads.weight)
    torch.testing.assert_close(again.bias, heads.bias)
    x = torch.randn(4, 128)
    for out, head in zip(heads(x), net.task_heads):
        torch.testing.assert_close(out, head(x))


def test_initialisation_matches_nn_linear_bounds():
    heads = MultiTaskHeads(50, [200, 300])
    bound = 1 / 50 ** 0.5
    assert heads.weight.abs().max() <= bound and heads.weight.abs().max() > 0.9 * bound
    assert heads.bias.abs().max() <= bound


@pytest.mark.parametrize("make_aggregator", [mf.Sum, lambda: mf.PCGrad(seed=0)], ids=["sum", "pcgrad"])
@pytest.mark.parametrize("sizes", [[10, 10, 10], [10, 3, 5]], ids=["equal", "mixed"])
def test_with_fork_the_aggregator_sees_each_tasks_gradient(make_aggregator, sizes):
    model, x, ys = small_net(sizes)
    heads = MultiTaskHeads.from_linears(model.task_heads)

    feats = mf.fork(model.trunk(x), 3, aggregator=make_aggregator())
    heads.cross_entropy(feats, ys).sum().backward()
    fused = grads_of(model.trunk.parameters()) + [heads.weight.grad, heads.bias.grad]

    model.zero_grad()
    feats = mf.fork(model.trunk(x), 3, aggregator=make_aggregator())
    sum(model.losses([h(f) for h, f in zip(model.task_heads, feats)], ys)).backward()
    plain = grads_of(model.trunk.parameters()) + [torch.cat([h.weight.grad for h in model.task_heads]),
                                                  torch.cat([h.bias.grad for h in model.task_heads])]
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("jacobian", ["loop", "batched"])
def test_with_mf_backward(jacobian):
    model, x, ys = small_net([10, 3, 5])
    heads = MultiTaskHeads.from_linears(model.task_heads)
    mf.backward(heads.cross_entropy(model.trunk(x), ys), model.trunk.parameters(), aggregator=mf.PCGrad(seed=0),
                jacobian=jacobian)
    fused = grads_of(model.trunk.parameters()) + [heads.weight.grad, heads.bias.grad]
    model.zero_grad()
    features = model.trunk(x)
    mf.backward(model.losses([h(features) for h in model.task_heads], ys), model.trunk.parameters(),
                aggregator=mf.PCGrad(seed=0), jacobian="loop")
    plain = grads_of(model.trunk.parameters()) + [torch.cat([h.weight.grad for h in model.task_heads]),
                                                  torch.cat([h.bias.grad for h in model.task_heads])]
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b)


def test_autocast_bfloat16_on_cpu():
    heads, x, ys = make(sizes=[10, 5, 10], D=32, B=16, dtype=torch.float32)
    linears = heads.to_linears()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = heads.cross_entropy(x, ys)
        logits = heads(x)
        plain = looped_losses(linears, x, ys, "cross_entropy")
    assert fused.dtype == torch.float32 and logits[0].dtype == torch.bfloat16
    torch.testing.assert_close(fused, plain, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(fused.sum(), [x, heads.weight])
    plain_grads = torch.autograd.grad(plain.sum(), [x, linears[0].weight])
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[0], plain_grads[0], rtol=5e-2, atol=5e-3)
    torch.testing.assert_close(grads[1][:10], plain_grads[1], rtol=5e-2, atol=5e-3)


class _ForkedHeadsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(20, 16), nn.ReLU())
        self.heads = MultiTaskHeads(16, [4, 3, 1])

    def forward(self, x, targets):
        feats = mf.fork(self.trunk(x), 3, aggregator=mf.PCGrad(seed=0))
        return self.heads.losses(feats, targets, ["cross_entropy", "cross_entropy", "mse"]).sum()


def test_torch_compile_matches_eager():
    model = _ForkedHeadsNet()
    x = torch.randn(12, 20)
    targets = [torch.randint(0, 4, (12,)), torch.randint(0, 3, (12,)), torch.randn(12)]
    results = []
    for fn in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        loss = fn(x, targets)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call, error, match", [
    (lambda h, x, ys: h.cross_entropy(x, ys[:2]), ValueError, r"targets: expected 3 tensors"),
    (lambda h, x, ys: h.cross_entropy(x, [ys[0], ys[1].float(), ys[2]]), TypeError, r"targets\[1\]: .*int64"),
    (lambda h, x, ys: h.cross_entropy(x, [ys[0], ys[1][:4], ys[2]]), ValueError, r"targets\[1\]: .*shape \(9,\)"),
    (lambda h, x, ys: h.cross_entropy(x[:4], ys), ValueError, r"targets\[0\]: .*shape \(4,\)"),
    (lambda h, x, ys: h.cross_entropy(x, [ys[0], ys[1], ys[2] + 7]), ValueError, r"targets\[2\]\[\d+\]: class"),
    (lambda h, x, ys: h.cross_entropy(x, [ys[0], ys[1] - 5, ys[2]]), ValueError, r"out of range for task 1"),
    (lambda h, x, ys: h.cross_entropy(x[:, :3], ys), ValueError, r"x: expected shape \(\.\.\., 6\)"),
    (lambda h, x, ys: h.cross_entropy(x.long(), ys), TypeError, r"x: expected a floating dtype"),
    (lambda h, x, ys: h.cross_entropy(x, ys, reduction="avg"), ValueError, r"reduction:"),
    (lambda h, x, ys: h.cross_entropy([x, x], ys), ValueError, r"x: expected 3 tensors"),
    (lambda h, x, ys: h.cross_entropy([x, x, x.clone()], ys), ValueError, r"x\[2\]: is not an alias"),
    (lambda h, x, ys: h.cross_entropy(x, 3), TypeError, r"targets: expected a sequence"),
    (lambda h, x, ys: h.mse_loss(x, ys), TypeError, r"targets\[0\]: expected floating values"),
    (lambda h, x, ys: h.losses(x, ys, ["cross_entropy", "mse"]), ValueError, r"kinds:"),
])
def test_bad_input_names_the_argument(call, error, match):
    heads, x, ys = make(sizes=[3, 2, 4])
    with pytest.raises(error, match=match):
        call(heads, x, ys)


@pytest.mark.parametrize("args, error, match", [
    (dict(in_features=0, out_features=[2]), ValueError, "in_features"),
    (dict(in_features=4, out_features=[]), ValueError, "out_features"),
    (dict(in_features=4, out_features=[2, 0]), ValueError, "out_features"),
])
def test_bad_constructor_arguments(args, error, match):
    with pytest.raises(error, match=match):
        MultiTaskHeads(**args)


def test_from_linears_rejects_mismatched_heads():
    with pytest.raises(ValueError, match=r"heads\[1\]: has in_features=5"):
        MultiTaskHeads.from_linears([nn.Linear(4, 2), nn.Linear(5, 2)])
    with pytest.raises(ValueError, match=r"heads\[1\]: has no bias"):
        MultiTaskHeads.from_linears([nn.Linear(4, 2), nn.Linear(4, 2, bias=False)])
    with pytest.raises(TypeError, match=r"heads\[0\]: expected an nn.Linear"):
        MultiTaskHeads.from_linears([nn.Conv1d(4, 2, 1)])
