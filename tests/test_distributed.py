"""mtl_fast.backward(process_group=...) and mtl_fast.fork under DistributedDataParallel, on CPU with gloo.

Each session spawns 2 or 3 processes on loopback once, runs every scenario in them and saves what each rank
got; the tests compare that with one process on the concatenated batch and across the ranks. Batches are
B samples per rank, the losses per-rank means, the models tiny float64 MLPs.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

import mtl_fast as mf
from mtl_fast import distributed as mfd

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")

K = 3
B = 4  # samples per rank
FAILURE_TIMEOUT_S = 3.0


class _Net(nn.Module):
    """Shared: a trunk all tasks use, ``side`` only tasks 0 and 1 use, ``rare`` applied only to the samples in
    ``rare_rows`` (a rank without such samples never reaches it) and ``never`` which nothing uses; one head a task."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.side = nn.Linear(8, 8)
        self.rare = nn.Linear(8, 8)
        self.never = nn.Parameter(torch.zeros(3))
        self.heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(K))

    def shared(self) -> List[Tensor]:
        return [*self.trunk.parameters(), *self.side.parameters(), *self.rare.parameters(), self.never]

    def losses(self, x: Tensor, y: Tensor, rare_rows: Optional[Tuple[int, int]]) -> List[Tensor]:
        f = self.trunk(x)
        if rare_rows is not None:
            a, b = rare_rows
            f = torch.cat([f[:a], f[a:b] + torch.tanh(self.rare(f[a:b])), f[b:]])
        s = torch.tanh(self.side(f))
        outs = [self.heads[0](s), self.heads[1](s), self.heads[2](f)]
        return [F.mse_loss(out, y[:, k]) for k, out in enumerate(outs)]


class _ForkNet(nn.Module):
    """A trunk and K heads, every parameter used (as plain DDP requires); ``fork`` between them when asked."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 2) for _ in range(K))

    def forward(self, x: Tensor, aggregator: Optional[mf.Aggregator] = None) -> List[Tensor]:
        f = self.trunk(x)
        feats = mf.fork(f, K, aggregator=aggregator) if aggregator is not None else [f] * K
        return [head(feat) for head, feat in zip(self.heads, feats)]


def _make(cls):
    torch.manual_seed(0)
    return cls().double()


def _data(world: int) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(world * B, 6, generator=g, dtype=torch.float64),
            torch.randn(world * B, K, 2, generator=g, dtype=torch.float64))


def _mse(outs: List[Tensor], y: Tensor) -> List[Tensor]:
    return [F.mse_loss(out, y[:, k]) for k, out in enumerate(outs)]


def _grads(module: nn.Module) -> List[Optional[Tensor]]:
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


# name -> (the aggregator rank r uses, jacobian mode, whether the trunk's .grad already holds something)
_SCENARIOS: Dict[str, Tuple[Callable[[int], mf.Aggregator], str, bool]] = {
    "sum": (lambda rank: mf.Sum(), "auto", False),
    "weighted": (lambda rank: mf.Weighted([0.5, 2.0, -1.0]), "auto", True),
    "pcgrad_loop": (lambda rank: mf.PCGrad(seed=3), "loop", False),
    "pcgrad_batched": (lambda rank: mf.PCGrad(seed=3), "batched", True),
    # Rank 0's weights are broadcast, so even unalike seeds agree: those of rank 0's seed.
    "pcgrad_unalike_seeds": (lambda rank: mf.PCGrad(seed=3 + rank), "loop", False),
    "mgda": (lambda rank: mf.MGDA(), "loop", False),
}


def _run_scenario(name: str, x: Tensor, y: Tensor, rare_rows, group=None, rank: int = 0) -> dict:
    make, jacobian, accumulate = _SCENARIOS[name]
    net = _make(_Net)
    if accumulate:
        for p in net.trunk.parameters():
            p.grad = torch.ones_like(p)
    w = mf.backward(net.losses(x, y, rare_rows), net.shared(), aggregator=make(rank), jacobian=jacobian,
                    process_group=group)
    return {"grads": _grads(net), "weights": w}


def _local(x: Tensor, y: Tensor, rank: int) -> Tuple[Tensor, Tensor, Optional[Tuple[int, int]]]:
    """This rank's samples; ``rare`` applies to rank 1's samples only (rows B..2B of the global batch)."""
    rows = slice(rank * B, (rank + 1) * B)
    return x[rows], y[rows], (0, B) if rank == 1 else None


def _counting_hook(calls: List[int]):
    def hook(state, bucket):
        calls[0] += 1
        return default_hooks.allreduce_hook(state, bucket)
    return hook


def _session_equivalence(rank: int, world: int) -> dict:
    mfd.BUCKET_BYTES = 200  # 25 float64: small parameters share a bucket, larger ones go alone
    x, y, rare_rows = _local(*_data(world), rank)
    out = {name: _run_scenario(name, x, y, rare_rows, dist.group.WORLD, rank) for name in _SCENARIOS}

    # A task-specific parameter that only rank 2 reaches: every rank must raise, nothing may be written.
    net = _make(_Net)
    extra = nn.Parameter(torch.ones((), dtype=torch.float64))
    losses = net.losses(x, y, rare_rows)
    if rank == 2:
        losses[2] = losses[2] * extra
    try:
        mf.backward(losses, net.shared(), aggregator=mf.PCGrad(seed=3), process_group=dist.group.WORLD)
        out["mismatch"] = None
    except ValueError as exc:
        out["mismatch"] = (str(exc), _grads(net))
    return out


def _session_ddp(rank: int, world: int) -> dict:
    x, y, _ = _local(*_data(world), rank)
    net = _make(_ForkNet)
    ddp = DistributedDataParallel(net)
    calls = [0]
    ddp.register_comm_hook(None, _counting_hook(calls))
    out = {}

    pcgrad = mf.PCGrad(seed=3)
    for _ in range(2):  # a second step shows DDP's reducer is left in a usable state
        ddp.zero_grad(set_to_none=True)
        with ddp.no_sync():
            mf.backward(_mse(ddp(x), y), net.trunk.parameters(), aggregator=pcgrad, process_group=dist.group.WORLD)
    out["ddp_recipe"] = {"grads": _grads(net), "ddp_reductions": calls[0]}

    for name, aggregator in (("ddp_plain", None), ("fork_local", mf.PCGrad(seed=5)),
                             ("fork_global", mfd.GlobalGram(mf.PCGrad(seed=5), dist.group.WORLD))):
        ddp.zero_grad(set_to_none=True)
        before = calls[0]
        sum(_mse(ddp(x, aggregator), y)).backward()
        out[name] = {"grads": _grads(net), "ddp_reductions": calls[0] - before}
    return out


def _session_failure(rank: int, world: int) -> dict:
    group = dist.new_group(timeout=timedelta(seconds=FAILURE_TIMEOUT_S))
    dist.barrier(group=group)
    x, y, rare_rows = _local(*_data(world), rank)
    net = _make(_Net)
    losses = net.losses(x, y, rare_rows)
    if rank == 1:
        time.sleep(FAILURE_TIMEOUT_S + 4)  # fails mid-step: alive, but never joins the collectives
        return {"failed": True}
    start = time.monotonic()
    try:
        mf.backward(losses, net.shared(), aggregator=mf.PCGrad(seed=3), process_group=group)
        error = None
    except RuntimeError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"error": error, "elapsed": time.monotonic() - start, "grads": _grads(net)}


_SESSIONS = {"equivalence": _session_equivalence, "ddp": _session_ddp, "failure": _session_failure}


def _worker(rank: int, world: int, port: int, outdir: str, session: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    result = _SESSIONS[session](rank, world)
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    if session != "failure":  # there the group is broken: a barrier would wait on the peer
        dist.barrier()  # every rank's collectives have completed before any rank leaves
    # Leave without tearing the group down: torch 2.13's gloo/DDP teardown sometimes aborts the process
    # ("terminate called without an active exception") after the results are already on disk.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(session: str, world: int, tmp_path_factory) -> List[dict]:
    outdir = tmp_path_factory.mktemp(session)
    mp.spawn(_worker, args=(world, _free_port(), str(outdir), session), nprocs=world, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory) -> List[dict]:
    return _spawn("equivalence", 3, tmp_path_factory)


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory) -> List[dict]:
    return _spawn("ddp", 2, tmp_path_factory)


def _assert_grads_close(got: List[Optional[Tensor]], expected: List[Optional[Tensor]]) -> None:
    assert [g is None for g in got] == [e is None for e in expected]
    for g, e in zip(got, expected):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def _assert_ranks_identical(ranks: List[dict], name: str) -> None:
    for other in ranks[1:]:
        for a, b in zip(ranks[0][name]["grads"], other[name]["grads"]):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("name", list(_SCENARIOS))
def test_backward_equals_one_process_on_the_whole_batch(three_ranks, name):
    x, y = _data(3)
    expected = _run_scenario(name, x, y, (B, 2 * B))
    for rank in three_ranks:
        _assert_grads_close(rank[name]["grads"], expected["grads"])
        torch.testing.assert_close(rank[name]["weights"], expected["weights"], rtol=1e-10, atol=1e-12)
    _assert_ranks_identical(three_ranks, name)


def test_scenarios_exercise_what_they_claim(three_ranks):
    net = _make(_Net)
    grads = dict(zip([id(p) for p in net.parameters()], three_ranks[0]["pcgrad_loop"]["grads"]))
    assert grads[id(net.never)] is None  # reached on no rank: no gradient, as in one process
    assert all(grads[id(p)] is not None for p in net.rare.parameters())  # reached on rank 1 only
    x, y = _data(3)
    pcgrad = _run_scenario("pcgrad_loop", x, y, (B, 2 * B))["weights"]
    assert not torch.allclose(pcgrad, torch.ones(K, dtype=torch.float64))  # PCGrad did project


def test_ranks_disagreeing_on_the_layout_all_raise_and_write_nothing(three_ranks):
    for rank in three_ranks:
        message, grads = rank["mismatch"]
        assert "task-specific parameters" in message
        assert all(g is None for g in grads)


def test_ddp_recipe_reduces_once_and_matches_one_process(ddp_ranks):
    x, y = _data(2)
    net, pcgrad = _make(_ForkNet), mf.PCGrad(seed=3)
    for _ in range(2):
        net.zero_grad(set_to_none=True)
        mf.backward(_mse(net(x), y), net.trunk.parameters(), aggregator=pcgrad)
    for rank in ddp_ranks:
        assert rank["ddp_recipe"]["ddp_reductions"] == 0  # DDP itself sent nothing: no double reduction
        _assert_grads_close(rank["ddp_recipe"]["grads"], _grads(net))
    _assert_ranks_identical(ddp_ranks, "ddp_recipe")

    net.zero_grad(set_to_none=True)
    sum(_mse(net(x), y)).backward()
    for rank in ddp_ranks:  # plain DDP still works afterwards
        assert rank["ddp_plain"]["ddp_reductions"] > 0
        _assert_grads_close(rank["ddp_plain"]["grads"], _grads(net))


def _fork_grads(x: Tensor, y: Tensor, aggregator: mf.Aggregator) -> List[Tensor]:
    net = _make(_ForkNet)
    sum(_mse(net(x, aggregator), y)).backward()
    return _grads(net)


def test_fork_under_ddp_averages_the_local_aggregates(ddp_ranks):
    x, y = _data(2)
    per_rank = [_fork_grads(*_local(x, y, r)[:2], mf.PCGrad(seed=5)) for r in range(2)]
    expected = [sum(gs) / 2 for gs in zip(*per_rank)]
    for rank in ddp_ranks:
        assert rank["fork_local"]["ddp_reductions"] > 0
        _assert_grads_close(rank["fork_local"]["grads"], expected)
    _assert_ranks_identical(ddp_ranks, "fork_local")
    # Which is not the aggregate of the global batch's feature gradients: PCGrad projects differently.
    global_trunk = _fork_grads(x, y, mf.PCGrad(seed=5))[0]
    assert not torch.allclose(expected[0], global_trunk)


def test_fork_with_global_gram_under_ddp_matches_one_process(ddp_ranks):
    x, y = _data(2)
    expected = _fork_grads(x, y, mf.PCGrad(seed=5))
    for rank in ddp_ranks:
        _assert_grads_close(rank["fork_global"]["grads"], expected)
    _assert_ranks_identical(ddp_ranks, "fork_global")


def test_a_rank_failing_mid_step_makes_the_others_raise_within_the_timeout(tmp_path_factory):
    survivor, failed = _spawn("failure", 2, tmp_path_factory)
    assert failed == {"failed": True}
    assert survivor["error"] is not None, "the surviving rank returned instead of raising"
    assert survivor["elapsed"] < FAILURE_TIMEOUT_S + 10
    assert all(g is None for g in survivor["grads"])  # nothing written


def test_backward_rejects_bad_process_groups():
    net = _make(_Net)
    x, y = _data(1)
    with pytest.raises((RuntimeError, TypeError), match="process_group"):
        mf.backward(net.losses(x, y, None), net.shared(), process_group="world")
    # Constructing a GlobalGram needs an initialised group; backward rejects it on its type alone.
    with pytest.raises(TypeError, match="GlobalGram is for mtl_fast.fork"):
        mf.backward(net.losses(x, y, None), net.shared(), aggregator=mfd.GlobalGram.__new__(mfd.GlobalGram))
