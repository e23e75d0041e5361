"""weights(G) of the method zoo on the CPU, K = 2..64, and the QP-based methods against quadprog and scipy.

    python benchmarks/bench_zoo.py [--repeat N]

Medians of N timed calls, measured side by side in one run (the machine may be shared). The peers solve exactly
the same problems on the same trace-normalised, 1e-6-regularised G: DualProj one QP, UPGrad K QPs (one per task),
MGDA the simplex QP; quadprog through its raw ``solve_qp`` (no qpsolvers wrapper), scipy through SLSQP.
mtl_fast's QP-based methods run on the compiled QP op where it is built (mtl_fast._qp); at K = 16 they are also
timed on the torch-ops solver, the path taken without it.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

import mtl_fast as mf
from mtl_fast import _qp
from mtl_fast.aggregators import _normalized_gram


def median_us(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


@contextlib.contextmanager
def torch_qp_path():
    """The QP-based aggregators on the torch-ops solver, as where the compiled QP op is not built."""
    devices = _qp._DEVICES
    _qp._DEVICES = frozenset()
    try:
        yield
    finally:
        _qp._DEVICES = devices


def gram(K: int, seed: int = 0) -> torch.Tensor:
    J = torch.randn(K, 4 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    J[1] = -J[0] + 0.3 * J[1]  # at least one conflict
    return J @ J.T


def peers(G: torch.Tensor):
    """quadprog and scipy solvers for DualProj, UPGrad and MGDA on the same regularised problem."""
    import quadprog
    from scipy.optimize import minimize
    M = _normalized_gram(G).numpy()
    K = M.shape[0]
    u = np.full(K, 1.0 / K)
    eye = np.eye(K)

    def qp_dual(target):  # min v^T M v s.t. v >= target
        return quadprog.solve_qp(M, np.zeros(K), eye, target)[0]

    def qp_mgda():  # min w^T M w s.t. sum w = 1 (equality first), w >= 0
        return quadprog.solve_qp(M, np.zeros(K), np.hstack([np.ones((K, 1)), eye]), np.r_[1.0, np.zeros(K)], 1)[0]

    def sp_dual(target):
        return minimize(lambda v: v @ M @ v, target, jac=lambda v: 2 * M @ v, method="SLSQP",
                        bounds=[(t, None) for t in target]).x

    def sp_mgda():
        return minimize(lambda w: w @ M @ w, u, jac=lambda w: 2 * M @ w, method="SLSQP", bounds=[(0, 1)] * K,
                        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}]).x

    return {
        "DualProj": (lambda: qp_dual(u), lambda: sp_dual(u)),
        "UPGrad": (lambda: sum(u[i] * qp_dual(eye[i]) for i in range(K)),
                   lambda: sum(u[i] * sp_dual(eye[i]) for i in range(K))),
        "MGDA": (qp_mgda, sp_mgda),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = {"MGDA": mf.MGDA, "DualProj": mf.DualProj, "UPGrad": mf.UPGrad, "CAGrad": mf.CAGrad,
               "IMTLG": mf.IMTLG, "GradVac": mf.GradVac, "AlignedMTL": mf.AlignedMTL, "NashMTL": mf.NashMTL}
    Ks = [2, 4, 8, 16, 32, 64]
    path = "compiled op" if _qp.has_kernel("cpu") else "torch ops (compiled op not built)"
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
    G = gram(K)
    print(f"\nQP-based methods at K = {K}, median microseconds: mtl_fast ({path}; the torch-ops solver beside it) "
          "vs quadprog (raw solve_qp) vs scipy SLSQP; ratios are peer / mtl_fast")
    for name, (quadprog_fn, scipy_fn) in peers(G).items():
        agg = methods[name]()
        ours = median_us(lambda: agg.weights(G), args.repeat)
        with torch_qp_path():
            torch_ops = median_us(lambda: agg.weights(G), args.repeat)
        qp = median_us(quadprog_fn, args.repeat)
        sp = median_us(scipy_fn, max(5, args.repeat // 5))
        print(f"{name:<9} mtl_fast {ours:7.1f}  torch-ops {torch_ops:7.0f} ({torch_ops / ours:5.1f}x)  "
              f"quadprog {qp:7.1f} ({qp / ours:5.2f}x)  scipy {sp:8.0f} ({sp / ours:6.1f}x)")


if __name__ == "__main__":
    main()
