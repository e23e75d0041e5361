"""Property-based fuzzing (hypothesis) of the public entry points: every aggregator's weights(G), the functional
core, backward and fork against the per-task loop, and malformed arguments.

The default profile is bounded and derandomised (a fixed seed, the same cases every run); HYPOTHESIS_PROFILE=long
runs ten times as many cases (tests/conftest.py).
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import mtl_fast as mf
from mtl_fast import reference

FACTORIES: Dict[str, Callable[[], mf.GramAggregator]] = {
    "Sum": mf.Sum, "Mean": mf.Mean, "PCGrad": lambda: mf.PCGrad(seed=0), "MGDA": mf.MGDA, "DualProj": mf.DualProj,
    "UPGrad": mf.UPGrad, "CAGrad": lambda: mf.CAGrad(0.5), "IMTLG": mf.IMTLG,
    "GradVac": lambda: mf.GradVac(0.5, seed=0), "AlignedMTL": mf.AlignedMTL,
    "NashMTL": lambda: mf.NashMTL(max_norm=0.0),
}
#: Methods whose update does not depend on the order of the tasks (PCGrad and GradVac draw random orders).
SYMMETRIC = ["Sum", "Mean", "MGDA", "DualProj", "UPGrad", "CAGrad", "IMTLG", "AlignedMTL", "NashMTL"]
#: Methods whose update conflicts with no task: G w >= 0 (up to the QPs' 1e-6 regularisation).
CONFLICT_FREE = ["MGDA", "DualProj", "UPGrad"]


@st.composite
def jacobians(draw, max_K: int = 10, max_P: int = 16) -> torch.Tensor:
    """(K, P) float64 task gradients: random, rank-deficient, with duplicate, opposite and zero tasks, at scales
    from 1e-30 to 1e30."""
    K = draw(st.integers(1, max_K))
    P = draw(st.integers(1, max_P))
    rank = draw(st.integers(1, K))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, rank, dtype=torch.float64, generator=g) @ torch.randn(rank, P, dtype=torch.float64, generator=g)
    for k in range(1, K):
        kind = draw(st.sampled_from(["random", "random", "duplicate", "opposite", "zero", "tiny"]))
        if kind == "duplicate":
            J[k] = J[draw(st.integers(0, k - 1))]
        elif kind == "opposite":
            J[k] = -J[draw(st.integers(0, k - 1))]
        elif kind == "zero":
            J[k] = 0.0
        elif kind == "tiny":
            J[k] *= 1e-12
    return J * 10.0 ** draw(st.sampled_from([-30, -10, 0, 10, 30]))


def _update(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return J.T @ w


@pytest.mark.parametrize("name", list(FACTORIES))
@given(J=jacobians())
def test_weights_are_finite_for_finite_gram(name, J):
    w = FACTORIES[name]().weights(J @ J.T)
    assert w.shape == (J.shape[0],) and w.dtype == torch.float64
    assert torch.isfinite(w).all(), w


@pytest.mark.parametrize("name", [n for n in FACTORIES if n not in ("Sum", "Mean")])  # fixed weights read no G
@given(J=jacobians(max_K=6), bad=st.sampled_from([math.nan, math.inf, -math.inf]), data=st.data())
def test_weights_are_nan_for_a_nonfinite_gram(name, J, bad, data):
    G = J @ J.T
    i = data.draw(st.integers(0, G.shape[0] - 1))
    j = data.draw(st.integers(0, G.shape[0] - 1))
    G[i, j] = G[j, i] = bad
    assert torch.isnan(FACTORIES[name]().weights(G)).all()


@pytest.mark.parametrize("name", SYMMETRIC)
@given(J=jacobians(max_K=7), seed=st.integers(0, 1000))
def test_symmetric_methods_are_permutation_equivariant(name, J, seed):
    """Permuting the tasks permutes nothing in the update."""
    K = J.shape[0]
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(seed))
    d = _update(J, FACTORIES[name]().weights(J @ J.T))
    Jp = J[perm]
    d_perm = _update(Jp, FACTORIES[name]().weights(Jp @ Jp.T))
    scale = J.norm() * max(1.0, float(FACTORIES[name]().weights(J @ J.T).abs().sum()))
    assert (d - d_perm).norm() <= 1e-6 * scale + 1e-300, (d, d_perm)


@pytest.mark.parametrize("name", CONFLICT_FREE)
@given(J=jacobians(max_K=8))
def test_dual_cone_methods_conflict_with_no_task(name, J):
    G = J @ J.T
    w = FACTORIES[name]().weights(G)
    # J d = G w >= 0 up to the regularisation: 1e-6 trace(G) max|w|, plus rounding
    bound = (1e-6 + 1e-9 * J.shape[0]) * G.diagonal().sum() * w.abs().max().clamp_min(1.0)
    assert (G @ w >= -bound - 1e-300).all(), (G @ w, bound)


@st.composite
def chunk_lists(draw):
    """A Jacobian as a list of (K, ...) chunks: mixed shapes, empty chunks, non-contiguous views, one dtype."""
    K = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    chunks = []
    for _ in range(draw(st.integers(1, 5))):
        shape = draw(st.lists(st.integers(0, 7), min_size=0, max_size=2))
        kind = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
        if kind == "transposed" and len(shape) == 2:
            base = torch.randn(K, shape[1], shape[0], generator=g).transpose(1, 2)
        elif kind == "strided":
            base = torch.randn(K, *shape, 2, generator=g)[..., 0]
        else:
            base = torch.randn(K, *shape, generator=g)
        chunks.append(base.to(dtype))
    return chunks


_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 1e-1}


@given(J=chunk_lists())
def test_gram_combine_aggregate_match_the_reference(J):
    dtype = J[0].dtype
    G = mf.gram(J)
    G_ref = reference.gram(J)
    d = G_ref.diagonal().clamp_min(0).sqrt()
    assert ((G - G_ref).abs() <= 1e-9 * torch.outer(d, d) + 1e-300).all()
    w = torch.linspace(-1.0, 2.0, J[0].shape[0], dtype=torch.float64)
    for out, expected, chunk in zip(mf.combine(J, w), reference.combine(J, w), J):
        assert out.shape == chunk.shape[1:] and out.dtype == dtype
        torch.testing.assert_close(out.double(), expected.double(), rtol=_RTOL[dtype], atol=_RTOL[dtype])
    for out, expected in zip(mf.aggregate(J, mf.MGDA()), reference.combine(J, mf.MGDA().weights(G_ref))):
        torch.testing.assert_close(out.double(), expected.double(), rtol=_RTOL[dtype] * 10,
                                   atol=_RTOL[dtype] * 10)


class _Net(nn.Module):
    def __init__(self, sizes, K):
        super().__init__()
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.Tanh()]
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(sizes[-1], 2) for _ in range(K))

    def losses(self, x):
        features = self.trunk(x)
        return [head(features).pow(2).mean() for head in self.heads]


@st.composite
def small_models(draw):
    K = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 6), min_size=2, max_size=3))
    torch.manual_seed(draw(st.integers(0, 10_000)))
    return _Net(sizes, K).double(), torch.randn(draw(st.integers(1, 5)), sizes[0], dtype=torch.float64)


@pytest.mark.parametrize("name", ["Sum", "PCGrad", "MGDA", "UPGrad"])
@given(model_and_x=small_models())
def test_backward_matches_the_per_task_loop(name, model_and_x):
    model, x = model_and_x
    trunk, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    losses = model.losses(x)
    per_task = [torch.autograd.grad(loss, trunk, retain_graph=True) for loss in losses]
    J = [torch.stack([g[i] for g in per_task]) for i in range(len(trunk))]
    w = FACTORIES[name]().weights(reference.gram(J))
    expected_trunk = reference.combine(J, w)
    expected_heads = torch.autograd.grad(sum(losses), heads, retain_graph=True)
    mf.backward(losses, trunk, aggregator=FACTORIES[name](), warn_unshared=False)
    for p, e in zip(trunk, expected_trunk):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)
    for p, e in zip(heads, expected_heads):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["Sum", "PCGrad", "MGDA", "UPGrad"])
@given(model_and_x=small_models())
def test_fork_matches_the_per_task_loop(name, model_and_x):
    model, x = model_and_x
    features = model.trunk(x)
    detached = features.detach().requires_grad_()
    losses = [head(detached).pow(2).mean() for head in model.heads]
    rows = torch.stack([torch.autograd.grad(loss, detached, retain_graph=True)[0].reshape(-1) for loss in losses])
    w = FACTORIES[name]().weights(rows @ rows.T)
    expected = torch.autograd.grad(features, list(model.trunk.parameters()), (w @ rows).view_as(features))
    feats = mf.fork(model.trunk(x), len(model.heads), aggregator=FACTORIES[name]())
    sum(head(f).pow(2).mean() for head, f in zip(model.heads, feats)).backward()
    for p, e in zip(model.trunk.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-12)


_MALFORMED = {
    "losses": [None, 3.0, "loss", [], [torch.tensor([1.0, 2.0], requires_grad=True)],
               [torch.tensor(1, dtype=torch.int64)], [torch.tensor(1.0)], torch.zeros(2, 2)],
    "shared_params": [None, 3, [], ["weight"], [torch.zeros(3)]],
    "aggregator": [None, "pcgrad", mf.PCGrad, 3, lambda J: J],
    "jacobian": ["sometimes", "Loop"],
}


@given(data=st.data())
def test_backward_rejects_malformed_arguments_and_writes_nothing(data):
    torch.manual_seed(0)
    model = _Net([3, 4], 2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    model.losses(x)[0].backward()  # some .grad already there, some None
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    arguments = {"losses": model.losses(x), "shared_params": list(model.trunk.parameters()),
                 "aggregator": mf.PCGrad(seed=0), "jacobian": "auto"}
    name = data.draw(st.sampled_from(list(_MALFORMED)))
    arguments[name] = data.draw(st.sampled_from(_MALFORMED[name]))
    with pytest.raises((TypeError, ValueError), match=name):
        mf.backward(arguments.pop("losses"), arguments.pop("shared_params"), **arguments)
    for p, b in zip(model.parameters(), before):
        assert (p.grad is None and b is None) or torch.equal(p.grad, b)


@given(J=st.sampled_from([None, 3, "J", [], [3], torch.zeros(3), torch.zeros(2, 3, dtype=torch.int64),
                          [torch.zeros(2, 3), torch.zeros(3, 3)]]),
       fn=st.sampled_from(["gram", "aggregate", "combine"]))
def test_functional_rejects_malformed_jacobians(J, fn):
    call = {"gram": lambda: mf.gram(J), "aggregate": lambda: mf.aggregate(J, mf.Sum()),
            "combine": lambda: mf.combine(J, torch.ones(2, dtype=torch.float64))}[fn]
    with pytest.raises((TypeError, ValueError), match=r"J"):
        call()


@pytest.mark.parametrize("name", list(FACTORIES))
@given(G=st.sampled_from([None, 3.0, torch.zeros(3), torch.zeros(2, 3), torch.zeros(0, 0),
                          torch.zeros(2, 2, dtype=torch.int64)]))
def test_weights_reject_malformed_grams(name, G):
    with pytest.raises((TypeError, ValueError), match=r"G"):
        FACTORIES[name]().weights(G)


@given(features=st.sampled_from([None, 3.0, torch.zeros(3, dtype=torch.int64)]),
       num_tasks=st.sampled_from([2, 0, -1, 2.0, True, "2"]))
def test_fork_rejects_malformed_arguments(features, num_tasks):
    assume(not (isinstance(num_tasks, int) and not isinstance(num_tasks, bool) and num_tasks > 0
                and isinstance(features, torch.Tensor) and features.dtype.is_floating_point))
    with pytest.raises((TypeError, ValueError), match=r"features|num_tasks"):
        mf.fork(features, num_tasks)
