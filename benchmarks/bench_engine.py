"""Step time and peak memory of the Gram engine against mf.backward, TorchJD and the per-task loop (issue 15).

    python benchmarks/bench_engine.py [--threads 1] [--scenarios mlp,resnet8,...] [--out results.json]

Every (scenario, method) pair runs in a fresh subprocess, so that its peak memory is its own: the process's
resident-set high-water mark (``ru_maxrss``). Large tensors are mmapped by glibc and returned on free, so the mark
follows the live tensors of the step; the same model, data and forward in every subprocess make the difference to
the 'plain' subprocess (one backward of the loss sum) what a method adds over a plain step. Times are the median of
``--steps`` steps (forward included) after ``--warmup`` steps; ratios are against the engine, from one run.
PCGrad with a fixed seed is the aggregator everywhere (TorchJD: PCGradWeighting / PCGrad).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

#: The ResNet-18-like trunk's base width (ResNet-18 has 64): 32 keeps a K = 40 mf.backward step within minutes here.
RESNET_WIDTH = 32

METHODS = ("plain", "engine", "mf.backward", "torchjd.autogram", "torchjd.mtl_backward", "per_task_loop")


class _MeanTokens(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)


class _BasicBlock(nn.Module):
    """ResNet-18's block: two 3x3 conv-BN pairs, ReLU in place, a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu_(self.bn1(self.conv1(x)))
        return torch.relu_(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_like(width: int) -> nn.Module:
    """ResNet-18's layout (a 3x3 stem for 32x32 inputs, 4 stages of 2 blocks) at channels width x (1, 2, 4, 8)."""
    layers: List[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    c_in = width
    for stage, c_out in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [_BasicBlock(c_in, c_out, 1 if stage == 0 else 2), _BasicBlock(c_out, c_out, 1)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _build(scenario: str) -> Tuple[nn.Module, int, Tensor, int]:
    """(trunk, K, input batch, trunk output features); the losses are per-task MSEs of K linear heads."""
    torch.manual_seed(0)
    if scenario == "mlp":
        dims = [512, 2048, 2048, 2048, 256]
        layers: List[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers), 16, torch.randn(32, 512), 256
    if scenario in ("resnet8", "resnet40"):
        return resnet18_like(RESNET_WIDTH), int(scenario[6:]), torch.randn(8, 3, 32, 32), 8 * RESNET_WIDTH
    if scenario == "transformer":
        layer = nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, dropout=0.1,
                                           batch_first=True)
        trunk = nn.Sequential(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), _MeanTokens())
        return trunk, 8, torch.randn(16, 32, 128), 128
    if scenario == "origin":
        from mtl_fast.apps.models import SharedTrunk  # in the worker, whose path puts this checkout first
        return SharedTrunk(), 4, torch.randn(32, 3, 28, 28), 128
    raise ValueError(f"scenario: unknown {scenario!r}")


def _worker(scenario: str, method: str, steps: int, warmup: int) -> Dict[str, float]:
    import torch.nn.functional as F

    import mtl_fast as mf
    from mtl_fast.apps.baselines import per_task_loop_backward

    trunk, K, x, features = _build(scenario)
    heads = nn.ModuleList(nn.Linear(features, 4) for _ in range(K))
    y = torch.randn(x.shape[0], K, 4)
    shared = list(trunk.parameters())

    def losses_of(f):
        return [F.mse_loss(h(f), y[:, k]) for k, h in enumerate(heads)]

    step: Callable[[], None]
    if method == "plain":
        def step():
            sum(losses_of(trunk(x))).backward()
    elif method == "engine":
        engine = mf.GramEngine(trunk)
        aggregator = mf.PCGrad(seed=0)

        def step():
            engine.backward(losses_of(trunk(x)), aggregator=aggregator)
    elif method == "mf.backward":
        aggregator = mf.PCGrad(seed=0)

        def step():
            mf.backward(losses_of(trunk(x)), shared, aggregator=aggregator)
    elif method == "torchjd.autogram":
        from torchjd.aggregation import PCGradWeighting
        from torchjd.autogram import Engine
        jd_engine, weighting = Engine(trunk, batch_dim=None), PCGradWeighting()

        def step():
            losses = torch.stack(losses_of(trunk(x)))
            losses.backward(weighting(jd_engine.compute_gramian(losses)))
    elif method == "torchjd.mtl_backward":
        from torchjd.aggregation import PCGrad
        from torchjd.autojac import jac_to_grad, mtl_backward
        jd_aggregator = PCGrad()

        def step():
            f = trunk(x)
            mtl_backward(losses_of(f), features=f)
            jac_to_grad(shared, jd_aggregator)
    elif method == "per_task_loop":
        import random
        rng = random.Random(0)

        def step():
            per_task_loop_backward(losses_of(trunk(x)), shared, rng=rng)
    else:
        raise ValueError(f"method: unknown {method!r}")

    times = []
    for i in range(warmup + steps):
        for p in [*shared, *heads.parameters()]:
            p.grad = None
        start = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "peak_rss_mb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024, "params_m": sum(p.numel() for p in shared) / 1e6}


def _run_one(scenario: str, method: str, steps: int, warmup: int, threads: str, timeout: float) -> Dict:
    env = dict(os.environ)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(here), here, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", scenario, method, str(steps), str(warmup)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the workers, or 'default'")
    parser.add_argument("--scenarios", default="mlp,resnet8,resnet40,transformer,origin")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per (scenario, method)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.worker:
        scenario, method, steps, warmup = args.worker
        print(json.dumps(_worker(scenario, method, int(steps), int(warmup))))
        return
    results: Dict[str, Dict[str, Dict]] = {}
    load_before = os.getloadavg()
    for scenario in args.scenarios.split(","):
        results[scenario] = {}
        for method in args.methods.split(","):
            results[scenario][method] = _run_one(scenario, method, args.steps, args.warmup, args.threads,
                                                 args.timeout)
            print(scenario, method, results[scenario][method], flush=True)
    _print_table(results, args.threads)
    if args.out:
        # Timings on a shared machine are only as good as its load: it is recorded with them.
        with open(args.out, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "load_average_before": load_before,
                       "load_average_after": os.getloadavg(), "results": results}, f, indent=1)


def _print_table(results: Dict[str, Dict[str, Dict]], threads: str) -> None:
    print(f"\nOMP_NUM_THREADS={threads}; time: median ms (ratio to the engine); memory: peak RSS MB "
          "(added over plain)")
    for scenario, by_method in results.items():
        engine, plain = by_method.get("engine", {}), by_method.get("plain", {})
        print(f"{scenario}:")
        for method, r in by_method.items():
            if "error" in r:
                print(f"  {method:22s} {r['error']}")
                continue
            ratio = f"{r['median_ms'] / engine['median_ms']:.2f}x" if "median_ms" in engine else "-"
            added = f"{r['peak_rss_mb'] - plain['peak_rss_mb']:+.0f}" if "peak_rss_mb" in plain else "-"
            print(f"  {method:22s} {r['median_ms']:9.1f} ms ({ratio:>6s})   {r['peak_rss_mb']:7.0f} MB ({added})")


if __name__ == "__main__":
    main()
