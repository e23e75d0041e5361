"""weights(G) of the method zoo on the CPU, K = 2..64, and the QP-based methods against quadprog and scipy.

    python benchmarks/bench_zoo.py [--repeat N]

Medians of N timed calls, measured side by side in one run (the machine may be shared). The peers solve exactly
the same problems on the same trace-normalised, 1e-6-regularised G: DualProj one QP, UPGrad K QPs (one per task),
MGDA the simplex QP; quadprog through its raw ``solve_qp`` (no qpsolvers wrapper), both bare and as a whole
weights(G) from a torch G, and scipy through SLSQP. At K = 16 two problems: one conflicting pair, and two camps
in conflict (active constraints).
mtl_fast's QP-based methods run on the compiled QP op where it is built; at K = 16 they are also timed on its
torch-ops reference, the path taken without it.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch

import mtl_fast as mf
from mtl_fast import _ops, reference
from mtl_fast.aggregation import QP_REGULARIZATION


def median_us(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def gram(K: int, seed: int = 0) -> torch.Tensor:
    """One conflicting pair (task 1 against task 0) among random gradients: the mean conflicts with no task."""
    J = torch.randn(K, 4 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    J[1] = -J[0] + 0.3 * J[1]  # at least one conflict
    return J @ J.T


def conflicted_gram(K: int, seed: int = 0) -> torch.Tensor:
    """Two camps pulling along one direction in opposite ways: the mean conflicts with half of the tasks, so the
    projections have active constraints (at K = 16: DualProj 5 of them, MGDA 15 of 16 tasks in the support)."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, 4 * K, dtype=torch.float64, generator=g)
    d = torch.randn(4 * K, dtype=torch.float64, generator=g)
    J[: K // 2] += 1.5 * d
    J[K // 2:] -= 1.0 * d
    return J @ J.T


def side_by_side(fns: Dict[str, Callable[[], object]], repeat: int, inner: int = 20) -> Dict[str, float]:
    """Median microseconds per call of each function, timed in interleaved rounds of ``inner`` calls so that a
    slow spell of the (shared) machine hits every candidate alike."""
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(times) * 1e6 for name, times in samples.items()}


def peers(G: torch.Tensor) -> Dict[str, Dict[str, Callable[[], object]]]:
    """quadprog and scipy for DualProj, UPGrad and MGDA on the same regularised problem as mtl_fast's.

    'quadprog solve_qp' is the bare solver call on numpy arrays built beforehand (the solver's floor, which no
    caller reaches); 'quadprog weights(G)' is what a training step would run with quadprog: the torch G in, the
    same trace normalisation and regularisation in numpy, the solve, the weights back as a torch tensor.
    """
    import quadprog
    from scipy.optimize import minimize
    M = reference.normalized_gram(G, QP_REGULARIZATION).numpy()
    K = M.shape[0]
    u = np.full(K, 1.0 / K)
    eye = np.eye(K)
    zeros = np.zeros(K)
    simplex_A = np.hstack([np.ones((K, 1)), eye])  # sum(w) = 1 (the equality goes first), w >= 0
    simplex_b = np.r_[1.0, zeros]

    def normalized(G):
        g = G.numpy()
        trace = np.trace(g)
        return (g / trace if trace > 0 else np.zeros_like(g)) + QP_REGULARIZATION * eye

    def dual(M, target):  # min v^T M v s.t. v >= target
        return quadprog.solve_qp(M, zeros, eye, target)[0]

    def mgda(M):
        return quadprog.solve_qp(M, zeros, simplex_A, simplex_b, 1)[0]

    def upgrad(M):
        return sum(u[i] * dual(M, eye[i]) for i in range(K))

    def sp_dual(target):
        return minimize(lambda v: v @ M @ v, target, jac=lambda v: 2 * M @ v, method="SLSQP",
                        bounds=[(t, None) for t in target]).x

    def sp_mgda():
        return minimize(lambda w: w @ M @ w, u, jac=lambda w: 2 * M @ w, method="SLSQP", bounds=[(0, 1)] * K,
                        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}]).x

    return {
        "DualProj": {"quadprog solve_qp": lambda: dual(M, u),
                     "quadprog weights(G)": lambda: torch.from_numpy(dual(normalized(G), u)),
                     "scipy SLSQP": lambda: sp_dual(u)},
        "UPGrad": {"quadprog solve_qp": lambda: upgrad(M),
                   "quadprog weights(G)": lambda: torch.from_numpy(upgrad(normalized(G))),
                   "scipy SLSQP": lambda: sum(u[i] * sp_dual(eye[i]) for i in range(K))},
        "MGDA": {"quadprog solve_qp": lambda: mgda(M),
                 "quadprog weights(G)": lambda: torch.from_numpy(mgda(normalized(G))),
                 "scipy SLSQP": sp_mgda},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = {"MGDA": mf.MGDA, "DualProj": mf.DualProj, "UPGrad": mf.UPGrad, "CAGrad": mf.CAGrad,
               "IMTLG": mf.IMTLG, "GradVac": mf.GradVac, "AlignedMTL": mf.AlignedMTL, "NashMTL": mf.NashMTL}
    Ks = [2, 4, 8, 16, 32, 64]
    path = "compiled op" if _ops.has_kernel("qp_weights", "cpu") else "torch ops (compiled op not built)"
    print(f"weights(G) median, microseconds (CPU, float64, 1 thread); QP solver: {path}")
    print(f"{'method':<11}" + "".join(f"{'K=' + str(K):>10}" for K in Ks))
    for name, make in methods.items():
        row = []
        for K in Ks:
            G = gram(K)
            agg = make()
            row.append(median_us(lambda: agg.weights(G), max(5, args.repeat // (1 + K // 16))))
        print(f"{name:<11}" + "".join(f"{t:>10.0f}" for t in row))
    K = 16
    print(f"\nQP-based methods at K = {K}: median microseconds per weights(G), timed side by side; "
          f"mtl_fast on the {path} and on its torch-ops solver; ratios are peer / mtl_fast")
    for problem, make_gram in (("one conflict", gram), ("conflicted", conflicted_gram)):
        G = make_gram(K)
        print(f"-- {problem} G --")
        for name, peer_fns in peers(G).items():
            agg = methods[name]()
            with _ops.reference_only():
                torch_ops = side_by_side({"torch ops": lambda: agg.weights(G)}, max(5, args.repeat // 5), 1)
            fast = {"mtl_fast": lambda: agg.weights(G),
                    **{peer: fn for peer, fn in peer_fns.items() if not peer.startswith("scipy")}}
            times = {**side_by_side(fast, args.repeat), **torch_ops,
                     **side_by_side({k: v for k, v in peer_fns.items() if k.startswith("scipy")},
                                    max(5, args.repeat // 5), 1)}
            ours = times.pop("mtl_fast")
            print(f"{name:<9} mtl_fast {ours:6.2f}  " + "  ".join(
                f"{peer} {t:7.1f} ({t / ours:5.1f}x)" for peer, t in times.items()))


if __name__ == "__main__":
    main()
