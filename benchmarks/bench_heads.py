"""Forward + backward of K linear heads and their cross-entropy losses: mtl_fast.nn.MultiTaskHeads against K
separate nn.Linear + F.cross_entropy (the common way), measured side by side.

    python benchmarks/bench_heads.py [--device cpu|cuda] [--repeats N] [--json PATH]

Each repeat times every method once, in turn, so that a noisy neighbour slows them alike; the table gives
the median step time of each and the looped/fused ratio of the medians. Methods:
  looped      K x (nn.Linear, F.cross_entropy), sum, backward
  fused_gemm  MultiTaskHeads forward (one GEMM), then K x F.cross_entropy on its outputs
  fused       MultiTaskHeads.cross_entropy: one GEMM and the fused loss op (one GEMM per weight/input grad)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

import mtl_fast
from mtl_fast.nn import MultiTaskHeads

SHAPES = [  # (K, batch, in_features, classes per task)
    (8, 256, 512, 10),
    (32, 256, 512, 10),
    (8, 256, 512, 1000),
    (32, 256, 512, 1000),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps(K: int, batch: int, in_features: int, classes: int, device: torch.device) -> Dict[str, Callable[[], None]]:
    """One training step's forward and backward for each method, on the same weights and data."""
    torch.manual_seed(0)
    heads = MultiTaskHeads(in_features, [classes] * K).to(device)
    linears = heads.to_linears().to(device)
    features = torch.randn(batch, in_features, device=device, requires_grad=True)
    targets = [torch.randint(0, classes, (batch,), device=device) for _ in range(K)]
    params = [features, *heads.parameters(), *linears.parameters()]

    def clear() -> None:
        for p in params:
            p.grad = None

    def looped() -> None:
        clear()
        sum(F.cross_entropy(head(features), y) for head, y in zip(linears, targets)).backward()

    def fused_gemm() -> None:
        clear()
        sum(F.cross_entropy(z, y) for z, y in zip(heads(features), targets)).backward()

    def fused() -> None:
        clear()
        heads.cross_entropy(features, targets).sum().backward()

    return {"looped": looped, "fused_gemm": fused_gemm, "fused": fused}


def measure(methods: Dict[str, Callable[[], None]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Median seconds per step of each method, the methods interleaved within every repeat."""
    for fn in methods.values():  # warm-up: allocator, MKL/cuBLAS handles, first-call dispatch
        for _ in range(3):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    print(f"mtl_fast {mtl_fast.__version__} backend={mtl_fast.backend()} torch {torch.__version__} "
          f"device={device} threads={torch.get_num_threads()}")
    print(f"{'K':>3} {'B':>4} {'D':>4} {'C':>5}  {'looped ms':>10} {'fused_gemm ms':>14} {'fused ms':>9}  "
          f"{'looped/fused':>12}")
    for K, batch, in_features, classes in SHAPES:
        # The largest shapes are GEMM-bound and take ~0.1 s a step on a small CPU: fewer repeats there.
        repeats = max(5, args.repeats // (40 if classes * K * in_features > 10 ** 7 and device.type == "cpu" else 1))
        med = measure(steps(K, batch, in_features, classes, device), repeats, device)
        ratio = med["looped"] / med["fused"]
        rows.append({"K": K, "batch": batch, "in_features": in_features, "classes": classes, "repeats": repeats,
                     "median_s": med, "ratio_looped_over_fused": ratio})
        print(f"{K:>3} {batch:>4} {in_features:>4} {classes:>5}  {med['looped'] * 1e3:>10.3f} "
              f"{med['fused_gemm'] * 1e3:>14.3f} {med['fused'] * 1e3:>9.3f}  {ratio:>11.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "backend": mtl_fast.backend(),
                       "threads": torch.get_num_threads(), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
