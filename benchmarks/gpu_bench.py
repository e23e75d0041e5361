"""GPU benchmark of the fused aggregation (gram -> PCGrad weights -> combine) against the memcpy ceiling.

Every figure is a median of CUDA-event timings after warm-up, and every bandwidth is a fraction of a
device-to-device copy measured in the same run. Run by scripts/gpu_check.sh, which passes the test results
in; usable alone:  python benchmarks/gpu_bench.py --out result.json
"""
from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, Dict, List, Optional

import torch

import mtl_fast as mf
from mtl_fast.aggregation import draw_pcgrad_orders
from mtl_fast.apps.bench.report import environment
from mtl_fast.apps.bench.timing import memcpy_bandwidth, time_calls

ops = torch.ops.mtl_fast
HEADLINE = (8, 16 * 1024 * 1024)  # K, P of aggregate_bandwidth_fraction
GRID_K = [2, 4, 8, 16, 32, 64]
GRID_P = [100_000, 1_000_000, 10_000_000, 100_000_000]


def _median(fn: Callable[[], object], budget_s: float) -> float:
    return time_calls(fn, torch.device("cuda"), budget_s=budget_s, min_reps=10, max_reps=200, warmup=3).median


def _fused(chunks: List[torch.Tensor], orders: torch.Tensor) -> Callable[[], object]:
    return lambda: ops.combine(chunks, ops.pcgrad_weights(ops.gram(chunks), orders))


def measure(K: int, P: int, dtype: torch.dtype, copy_bps: float, budget_s: float, num_chunks: int = 1,
            peers: bool = False) -> Dict[str, Any]:
    """Medians of the fused aggregation and of its parts at one size, with bandwidth fractions."""
    device = torch.device("cuda")
    J = torch.randn(K, P, device=device, dtype=dtype)
    chunks = list(J.tensor_split(num_chunks, dim=1)) if num_chunks > 1 else [J]
    chunks = [c.contiguous() for c in chunks]
    orders = draw_pcgrad_orders(K, device, torch.Generator(device=device).manual_seed(0))
    weights = ops.pcgrad_weights(ops.gram(chunks), orders)
    itemsize = J.element_size()
    floor_bytes = (2 * K * P + P) * itemsize  # two reads of J (G is complete before combining), one write

    row: Dict[str, Any] = {"K": K, "P": P, "dtype": str(dtype).replace("torch.", ""), "chunks": num_chunks}
    row["fused_s"] = _median(_fused(chunks, orders), budget_s)
    row["gram_s"] = _median(lambda: ops.gram(chunks), budget_s)
    row["combine_s"] = _median(lambda: ops.combine(chunks, weights), budget_s)
    row["aggregate_api_s"] = _median(lambda: mf.aggregate(chunks, mf.PCGrad(seed=0)), budget_s)
    row["fused_bandwidth_fraction"] = floor_bytes / row["fused_s"] / copy_bps
    row["gram_bandwidth_fraction"] = K * P * itemsize / row["gram_s"] / copy_bps
    row["combine_bandwidth_fraction"] = (K + 1) * P * itemsize / row["combine_s"] / copy_bps
    if peers:
        # What plain torch does with the same linear algebra: J J^T by GEMM, then w @ J.
        w = weights.to(dtype)
        row["torch_matmul_s"] = _median(lambda: (J @ J.T, w @ J), budget_s)
        row["fused_vs_torch_matmul"] = row["torch_matmul_s"] / row["fused_s"]
        # TorchJD's PCGrad loops over task pairs on the host: K <= 16 keeps the run inside its time limit.
        torchjd_s = _torchjd_pcgrad_seconds(J, budget_s) if K <= 16 else None
        if torchjd_s is not None:
            row["torchjd_pcgrad_s"] = torchjd_s
            row["fused_vs_torchjd"] = torchjd_s / row["fused_s"]
    del J, chunks
    torch.cuda.empty_cache()
    return row


def _torchjd_pcgrad_seconds(J: torch.Tensor, budget_s: float) -> Optional[float]:
    try:
        from torchjd.aggregation import PCGrad
    except ImportError:
        return None
    peer = PCGrad()
    return _median(lambda: peer(J), budget_s)


def _fits(K: int, P: int, itemsize: int) -> bool:
    # J, its chunked copy and the outputs, with room to spare.
    free, _ = torch.cuda.mem_get_info()
    return 3 * K * P * itemsize < 0.8 * free and K * P <= 2_000_000_000


def test_counts(junit_path: Optional[str]) -> Dict[str, Any]:
    """Counts from pytest's JUnit XML; cuda_tests_passed only when the file exists and nothing failed."""
    counts: Dict[str, Any] = {"cuda_tests_passed": False, "cuda_tests": None, "cuda_tests_failed": None,
                              "cuda_tests_errors": None, "cuda_tests_skipped": None}
    if not junit_path:
        return counts
    try:
        root = ElementTree.parse(junit_path).getroot()
    except (OSError, ElementTree.ParseError):
        return counts
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts.update(cuda_tests=total["tests"], cuda_tests_failed=total["failures"], cuda_tests_errors=total["errors"],
                  cuda_tests_skipped=total["skipped"])
    counts["cuda_tests_run"] = total["tests"] - total["skipped"]
    counts["cuda_tests_passed"] = total["tests"] > total["skipped"] and total["failures"] == total["errors"] == 0
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--junit", help="pytest JUnit XML of the CUDA tests, to record their counts")
    parser.add_argument("--csrc-tree", help="git tree id of the csrc/ files measured (when not a git checkout)")
    parser.add_argument("--budget", type=float, default=0.25, help="seconds of timed calls per measurement")
    parser.add_argument("--time-limit", type=float, default=240.0, help="stop the size grid after this many s")
    args = parser.parse_args()

    started = time.monotonic()
    K, P = HEADLINE
    copy_bps = memcpy_bandwidth(torch.device("cuda"), 2 * K * P * 4, budget_s=1.0)
    result: Dict[str, Any] = environment(torch.device("cuda"), copy_bps)
    result["csrc_tree_of_files"] = args.csrc_tree or None
    if result.get("csrc_tree") is None:
        result["csrc_tree"] = result["csrc_tree_of_files"]
    result.update(test_counts(args.junit))
    result["copy_bandwidth_gbps"] = copy_bps / 1e9

    headline = measure(K, P, torch.float32, copy_bps, 2 * args.budget, peers=True)
    result["aggregate_bandwidth_fraction"] = headline["fused_bandwidth_fraction"]
    scenarios = [headline,
                 measure(K, P, torch.bfloat16, copy_bps, args.budget),
                 measure(K, P, torch.float32, copy_bps, args.budget, num_chunks=200),
                 measure(8, 1_000_000, torch.float32, copy_bps, 2 * args.budget, peers=True)]
    print(json.dumps(scenarios[0], indent=1), flush=True)
    skipped = []
    for k in GRID_K:
        for p in GRID_P:
            if time.monotonic() - started > args.time_limit or not _fits(k, p, 4):
                skipped.append({"K": k, "P": p})
                continue
            row = measure(k, p, torch.float32, copy_bps, args.budget, peers=p <= 10_000_000)
            print(f"K={k:3d} P={p:>11,d}  fused {row['fused_s'] * 1e3:8.3f} ms  "
                  f"{row['fused_bandwidth_fraction']:.2f} of copy", flush=True)
            scenarios.append(row)
    result["scenarios"] = scenarios
    result["grid_skipped"] = skipped
    result["bench_seconds"] = time.monotonic() - started
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"aggregate_bandwidth_fraction (K={K}, P={P}, float32): {result['aggregate_bandwidth_fraction']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
