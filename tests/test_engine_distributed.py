"""GramEngine.backward(process_group=...) on CPU with gloo: 2 and 3 ranks against one process on the whole batch.

Each rank holds B samples and its losses are means over them; the model has a layer the ghost factors serve
(all-gathered), one whose K gradients are all-reduced, a module used twice and a LayerNorm (formed by a VJP).
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast as mf

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")

K, B = 3, 4

AGGREGATORS = {"sum": lambda: mf.Sum(), "pcgrad": lambda: mf.PCGrad(seed=3), "mgda": lambda: mf.MGDA(),
               "upgrad": lambda: mf.UPGrad()}


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # wide: gathering 2-3 x B rows of its factors moves fewer bytes than reducing its K gradients
        self.wide = nn.Linear(32, 32)
        self.twice = nn.Linear(32, 32)
        self.narrow = nn.Linear(32, 6)  # few outputs: the K gradients are the smaller message
        self.norm = nn.LayerNorm(6)
        self.heads = nn.ModuleList(nn.Linear(6, 2) for _ in range(K))

    def losses(self, x: Tensor, y: Tensor) -> List[Tensor]:
        h = torch.tanh(self.twice(torch.tanh(self.twice(torch.tanh(self.wide(x))))))
        f = self.norm(torch.tanh(self.narrow(h)))
        return [F.mse_loss(head(f), y[:, k]) for k, head in enumerate(self.heads)]


def _data(world: int):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(world * B, 32, generator=g, dtype=torch.float64),
            torch.randn(world * B, K, 2, generator=g, dtype=torch.float64))


def _run(name: str, x: Tensor, y: Tensor, group=None) -> Dict:
    torch.manual_seed(0)
    net = _Net().double()
    shared = [net.wide, net.twice, net.narrow, net.norm]
    for p in net.wide.parameters():  # accumulation onto an existing .grad
        p.grad = torch.ones_like(p)
    engine = mf.GramEngine(*shared)
    w = engine.backward(net.losses(x, y), aggregator=AGGREGATORS[name](), process_group=group)
    return {"weights": w, "grads": [p.grad.clone() for p in net.parameters()],
            "communication": engine.last_communication}


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    x, y = _data(world)
    rows = slice(rank * B, (rank + 1) * B)
    out = {name: _run(name, x[rows], y[rows], dist.group.WORLD) for name in AGGREGATORS}
    # The ranks disagree on the number of tasks: every rank raises, nothing is written.
    net = _Net().double()
    engine = mf.GramEngine(net.wide, net.twice, net.narrow, net.norm)
    losses = net.losses(x[rows], y[rows])
    if rank == 0:
        losses = losses[:-1]
    try:
        engine.backward(losses, aggregator=mf.MGDA(), process_group=dist.group.WORLD)
        out["disagree"] = None
    except (ValueError, RuntimeError) as exc:
        out["disagree"] = f"{type(exc).__name__}: {exc}"
    out["disagree_grads"] = [p.grad for p in net.parameters()]
    torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    dist.barrier()
    os._exit(0)  # as tests/test_distributed.py: gloo teardown can abort after the results are saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request, tmp_path_factory) -> List[Dict]:
    world = request.param
    outdir = tmp_path_factory.mktemp(f"engine{world}")
    mp.spawn(_worker, args=(world, _free_port(), str(outdir)), nprocs=world, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_ranks_equal_one_process_on_the_whole_batch(ranks, name):
    x, y = _data(len(ranks))
    whole = _run(name, x, y)
    for r, result in enumerate(ranks):
        got = result[name]
        torch.testing.assert_close(got["weights"], whole["weights"], rtol=1e-9, atol=1e-10)
        for g, e in zip(got["grads"], whole["grads"]):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)
        # bitwise the same on every rank
        assert torch.equal(got["weights"], ranks[0][name]["weights"])
        assert all(torch.equal(g, g0) for g, g0 in zip(got["grads"], ranks[0][name]["grads"]))


def test_ghost_factors_are_gathered_where_that_moves_fewer_bytes(ranks):
    comm = ranks[0]["upgrad"]["communication"]
    assert 0 < comm["chosen"] < comm["all_reduce"]


def test_disagreeing_ranks_all_raise_and_write_nothing(ranks):
    for result in ranks:
        assert result["disagree"] is not None and "disagree" in result["disagree"]
        assert all(g is None for g in result["disagree_grads"])
