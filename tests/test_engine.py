"""mtl_fast.GramEngine against mtl_fast.backward (the K x P path) on the models of issue 15, in float64."""
from __future__ import annotations

from typing import Callable, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast as mf
from mtl_fast import _ops, reference
from mtl_fast.apps.models import MultiTaskNet

K = 3

AGGREGATORS = {
    "Sum": lambda: mf.Sum(),
    "Weighted": lambda: mf.Weighted([0.5, 2.0, -1.0]),
    "PCGrad": lambda: mf.PCGrad(seed=7),  # the same seed in both paths: the same visiting orders
    "MGDA": lambda: mf.MGDA(),
    "UPGrad": lambda: mf.UPGrad(),
    "CAGrad": lambda: mf.CAGrad(c=0.5),
    "NashMTL": lambda: mf.NashMTL(),
}


class _Case:
    """A model split into shared modules and the rest, with a loss function that reseeds before its forward
    (so both paths draw the same dropout masks)."""

    def __init__(self, shared: List[nn.Module], everything: nn.Module, losses: Callable[[], List[Tensor]]) -> None:
        self.shared, self.everything, self._losses = shared, everything, losses

    def losses(self) -> List[Tensor]:
        torch.manual_seed(1234)
        return self._losses()

    def shared_params(self) -> List[Tensor]:
        return [p for m in self.shared for p in m.parameters() if p.requires_grad]


def _mse_heads(features: Tensor, heads: nn.ModuleList, y: Tensor) -> List[Tensor]:
    return [F.mse_loss(h(features), y[:, k]) for k, h in enumerate(heads)]


def origin_case() -> _Case:
    model = MultiTaskNet([10] * K).double()
    x = torch.randn(4, 3, 28, 28, dtype=torch.float64)
    ys = [torch.randint(0, 10, (4,)) for _ in range(K)]
    return _Case([model.trunk], model, lambda: model.losses(model(x), ys))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


def resnet_case() -> _Case:
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          _Block(8, 8, 1), _Block(8, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 12)).double()
    heads = nn.ModuleList(nn.Linear(12, 2) for _ in range(K)).double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randn(4, K, 2, dtype=torch.float64)
    return _Case([trunk], nn.ModuleList([trunk, heads]), lambda: _mse_heads(trunk(x), heads, y))


def transformer_case() -> _Case:
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.2, batch_first=True)
    trunk = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).double()
    heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(K)).double()
    x, y = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, K, 2, dtype=torch.float64)
    return _Case([trunk], nn.ModuleList([trunk, heads]), lambda: _mse_heads(trunk(x).mean(1), heads, y))


class _TwiceAndTied(nn.Module):
    """``twice`` is applied two times; ``a`` and ``b`` share their weight (own biases); an embedding feeds in."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6, padding_idx=0)
        self.twice = nn.Linear(6, 6)
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.norm = nn.LayerNorm(6)

    def forward(self, idx: Tensor) -> Tensor:
        h = self.embed(idx).mean(1)
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        return self.norm(torch.tanh(self.b(torch.tanh(self.a(h)))))


def twice_tied_case() -> _Case:
    trunk = _TwiceAndTied().double()
    heads = nn.ModuleList(nn.Linear(6, 2) for _ in range(K)).double()
    idx = torch.tensor([[1, 2, 0, 2], [3, 0, 0, 9], [4, 4, 5, 1], [7, 8, 9, 2], [2, 2, 2, 2]])
    y = torch.randn(5, K, 2, dtype=torch.float64)
    return _Case([trunk], nn.ModuleList([trunk, heads]), lambda: _mse_heads(trunk(idx), heads, y))


class _Skipping(nn.Module):
    """Task 0 reads ``low`` only; tasks 1 and 2 also go through ``high``; ``frozen`` is frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
        self.high = nn.Sequential(nn.Linear(7, 7), nn.Tanh())
        self.frozen = nn.Linear(7, 7)
        self.frozen.requires_grad_(False)
        self.heads = nn.ModuleList(nn.Linear(7, 2) for _ in range(K))

    def losses(self, x: Tensor, y: Tensor) -> List[Tensor]:
        low = self.low(x)
        high = self.frozen(self.high(low))
        return [F.mse_loss(self.heads[k](low if k == 0 else high), y[:, k]) for k in range(K)]


def skipping_case() -> _Case:
    model = _Skipping().double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, K, 2, dtype=torch.float64)
    return _Case([model.low, model.high, model.frozen], model, lambda: model.losses(x, y))


def small_convs_case() -> _Case:
    """Convolutions on 2x2 maps, where the ghost product is the cheaper way, one grouped (formed per task), one
    strided and dilated."""
    trunk = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 16, 3, padding=1, groups=2),
                          nn.Tanh(), nn.Conv2d(16, 12, 3, stride=2, padding=2, dilation=2), nn.Tanh(),
                          nn.Flatten(), nn.Linear(12, 6)).double()
    heads = nn.ModuleList(nn.Linear(6, 2) for _ in range(K)).double()
    x, y = torch.randn(2, 4, 2, 2, dtype=torch.float64), torch.randn(2, K, 2, dtype=torch.float64)
    return _Case([trunk], nn.ModuleList([trunk, heads]), lambda: _mse_heads(trunk(x), heads, y))


CASES = {"origin": origin_case, "small_convs": small_convs_case, "resnet": resnet_case, "transformer": transformer_case,
         "twice_tied": twice_tied_case, "skipping": skipping_case}


def _take_grads(module: nn.Module) -> List[Tensor]:
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return grads


def _both_paths(case: _Case, make_aggregator) -> Tuple[Tensor, List[Tensor], Tensor, List[Tensor]]:
    w_ref = mf.backward(case.losses(), case.shared_params(), aggregator=make_aggregator())
    g_ref = _take_grads(case.everything)
    engine = mf.GramEngine(*case.shared)
    w = engine.backward(case.losses(), aggregator=make_aggregator())
    engine.remove()
    return w_ref, g_ref, w, _take_grads(case.everything)


def _assert_grads_close(got: List[Tensor], expected: List[Tensor]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g is None) == (e is None)
        if g is not None:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("aggregator", list(AGGREGATORS))
@pytest.mark.parametrize("case", list(CASES))
def test_engine_equals_backward(case, aggregator):
    torch.manual_seed(0)
    w_ref, g_ref, w, g = _both_paths(CASES[case](), AGGREGATORS[aggregator])
    torch.testing.assert_close(w, w_ref, rtol=1e-9, atol=1e-10)
    _assert_grads_close(g, g_ref)


@pytest.mark.parametrize("case,ghost_calls", [("origin", 1), ("small_convs", 3)])
def test_ghost_products_serve_where_they_are_cheaper(monkeypatch, case, ghost_calls):
    calls = []
    ghost_gram = _ops.ghost_gram

    def counting(A: Tensor, delta: Tensor) -> Tensor:
        calls.append(A.shape)
        return ghost_gram(A, delta)

    monkeypatch.setattr(mf.engine._ops, "ghost_gram", counting)
    w_ref, g_ref, w, g = _both_paths(CASES[case](), AGGREGATORS["UPGrad"])
    assert len(calls) == ghost_calls
    torch.testing.assert_close(w, w_ref, rtol=1e-9, atol=1e-10)
    _assert_grads_close(g, g_ref)


def test_heads_get_their_plain_gradient_and_existing_grads_accumulate():
    case = origin_case()
    model = case.everything
    sum(case.losses()).backward()
    plain_heads = [p.grad.clone() for p in model.task_heads.parameters()]
    before = [torch.randn_like(p) for p in model.parameters()]
    for p, b in zip(model.parameters(), before):
        p.grad = b.clone()
    engine = mf.GramEngine(model.trunk)
    engine.backward(case.losses(), aggregator=mf.MGDA())
    for p, b, plain in zip(model.task_heads.parameters(), before[len(list(model.trunk.parameters())):],
                           plain_heads):
        torch.testing.assert_close(p.grad, b + plain, rtol=1e-12, atol=1e-12)
    engine_grads = [p.grad - b for p, b in zip(model.trunk.parameters(), before)]
    model.zero_grad(set_to_none=True)
    mf.backward(case.losses(), model.trunk.parameters(), aggregator=mf.MGDA())
    _assert_grads_close(engine_grads, [p.grad for p in model.trunk.parameters()])


def test_retain_graph_allows_a_second_backward():
    case = twice_tied_case()
    engine = mf.GramEngine(*case.shared)
    losses = case.losses()
    w1 = engine.backward(losses, aggregator=mf.UPGrad(), retain_graph=True)
    first = _take_grads(case.everything)
    w2 = engine.backward(losses, aggregator=mf.UPGrad())
    torch.testing.assert_close(w1, w2, rtol=0, atol=0)
    _assert_grads_close(_take_grads(case.everything), first)
    with pytest.raises(RuntimeError, match="no forward through the hooked modules"):
        engine.backward(losses, aggregator=mf.UPGrad())


def test_bad_input_is_rejected_before_anything_is_written():
    case = skipping_case()
    engine = mf.GramEngine(*case.shared)
    with pytest.raises(TypeError, match="aggregator"):
        engine.backward(case.losses(), aggregator="pcgrad")
    with pytest.raises(TypeError, match="aggregator"):
        engine.backward(case.losses(), aggregator=mf.GradDrop())
    with pytest.raises(ValueError, match="losses"):
        engine.backward([], aggregator=mf.MGDA())
    with pytest.raises(ValueError, match=r"losses\[0\]"):
        engine.backward([torch.ones(2, requires_grad=True)], aggregator=mf.MGDA())
    with pytest.raises(TypeError, match="losses"):
        engine.backward(3.0, aggregator=mf.MGDA())
    assert all(p.grad is None for p in case.everything.parameters())
    with pytest.raises(ValueError, match="shared_modules"):
        mf.GramEngine()
    with pytest.raises(TypeError, match=r"shared_modules\[1\]"):
        mf.GramEngine(nn.Linear(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="none of them has parameters"):
        mf.GramEngine(nn.ReLU())


def test_misuse_is_named():
    trunk, head = nn.Linear(4, 4).double(), nn.Linear(4, 1).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    engine = mf.GramEngine(trunk)
    f = trunk(x)
    with pytest.raises(RuntimeError, match=r"shared_modules\[0\].weight is used outside the forward"):
        engine.backward([head(f).sum(), (x @ trunk.weight).sum()], aggregator=mf.MGDA())
    engine.remove()

    engine = mf.GramEngine(trunk)
    with torch.no_grad():
        trunk(x)  # recorded nothing: no graph
    f = torch.tanh(x @ trunk.weight.T)
    with pytest.raises(RuntimeError, match="no forward through the hooked modules was recorded"):
        engine.backward([head(f).sum(), f.sum()], aggregator=mf.MGDA())
    with pytest.raises(ValueError, match="reach none"):
        engine.backward([head(x).sum()], aggregator=mf.MGDA())
    assert trunk.weight.grad is None and head.weight.grad is None


def test_input_modified_in_place_after_the_forward_is_named():
    trunk, heads = nn.Linear(4, 4).double(), nn.ModuleList(nn.Linear(4, 1) for _ in range(2)).double()
    engine = mf.GramEngine(trunk)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True) * 1.0
    f = trunk(x)
    losses = [h(f).sum() for h in heads]
    with torch.no_grad():
        x.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        engine.backward(losses, aggregator=mf.MGDA())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_backward_loosely(dtype):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16))
    heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(K))
    model = nn.ModuleList([trunk, heads])
    x, y = torch.randn(6, 8), torch.randn(6, K)

    def losses():
        with torch.autocast("cpu", dtype=dtype):
            f = trunk(x)
            return [F.mse_loss(h(f).float().squeeze(1), y[:, k]) for k, h in enumerate(heads)]

    w_ref = mf.backward(losses(), trunk.parameters(), aggregator=mf.UPGrad())
    g_ref = _take_grads(model)
    engine = mf.GramEngine(trunk)
    w = engine.backward(losses(), aggregator=mf.UPGrad())
    torch.testing.assert_close(w, w_ref, rtol=2e-2, atol=2e-2)
    for g, e in zip(_take_grads(model), g_ref):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=5e-2, atol=5e-2)


def _formed_gram(A, delta):
    """The oracle: the K gradients A^T delta_k formed, flattened and multiplied, in float64."""
    grads = torch.einsum("rd,krm->kdm", A.double(), delta.double()).reshape(delta.shape[0], -1)
    return grads @ grads.T


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 4, 2), (2, 17, 9, 6)])
def test_ghost_gram_equals_its_reference(shape):
    K_, R, d, m = shape
    A, delta = torch.randn(R, d), torch.randn(K_, R, m)
    G = _ops.ghost_gram(A, delta)
    assert G.dtype == torch.float64 and torch.equal(G, G.T)
    torch.testing.assert_close(G, _formed_gram(A, delta), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(reference.ghost_gram(A, delta), _formed_gram(A, delta), rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not _ops.has_kernel("ghost_gram", "cpu"), reason="needs the compiled ghost_gram")
def test_ghost_gram_opcheck():
    for A, delta in [(torch.randn(5, 3), torch.randn(2, 5, 4)), (torch.randn(4, 2, dtype=torch.float64),
                                                                    torch.randn(3, 4, 1, dtype=torch.float64))]:
        torch.library.opcheck(torch.ops.mtl_fast.ghost_gram.default, (A, delta))
    with pytest.raises(RuntimeError, match="delta: has 4 rows"):
        torch.ops.mtl_fast.ghost_gram(torch.randn(5, 3), torch.randn(2, 4, 4))
