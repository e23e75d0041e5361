"""The shared QP utility of MGDA, DualProj, UPGrad and CAGrad: the solver's settings, each defined once and passed
to both the compiled solver (csrc/kernels/nonneg_qp.h) and its differentiable reference
(:func:`mtl_fast.reference.nonneg_qp`)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _ops
from .._checks import check_gram
from ._utils import check_preference, preference
from .bases import Weighting

#: Tikhonov term added to the trace-normalised Gram matrix: it makes every principal submatrix invertible (tasks
#: may be identical or zero) and bounds the solution when 0 is in the convex hull. It caps the condition number at
#: 1e6: with 1e-10, block pivoting failed to settle on a singular G at K = 64 (rank 40). The price:
#: J d >= -1e-6 trace(G) max(v) instead of J d >= 0, and weights within ~1e-6 relative of the unregularised
#: problem's (TorchJD uses 1e-4).
QP_REGULARIZATION = 1e-6
#: Relative tolerance of the solver's KKT checks (primal feasibility and the sign of the multipliers).
QP_TOLERANCE = 1e-9


def max_iterations(K: int) -> int:
    """Block-pivoting steps before the compiled solver turns to its active-set method."""
    return 3 * K + 10


def patience(K: int) -> int:
    """Steps without fewer KKT violations before block pivoting swaps one index at a time (Murty's rule). Kim &
    Park use 3, too few for a singular G at K = 64."""
    return K // 2 + 3


def solve_nonnegative_qp(M: Tensor, q: Tensor, *, simplex: bool = False, tol: float = QP_TOLERANCE,
                         max_iter: Optional[int] = None) -> Tensor:
    """Batched  min_z 1/2 z^T M z + q_b^T z  s.t. z >= 0 (and sum(z) = 1 when ``simplex``), for M positive definite.

    Block principal pivoting (Judice & Pires 1994; Kim & Park 2011), see :func:`mtl_fast.reference.nonneg_qp`:
    in the compiled op (float64) where M's device has one, else in differentiable torch ops.

    Args:
        M: (K, K) symmetric positive definite.
        q: (B, K) linear terms, one problem per row.
        simplex: add the constraint sum(z) = 1.
        tol: relative tolerance of the KKT checks.
        max_iter: block-pivoting steps (default 3K + 10); the compiled op then finishes unsettled problems with an
            active-set method, the torch ops with Murty's single swaps.
    Returns:
        (B, K) float64 solutions, z >= 0 exactly (and summing to 1 for ``simplex``).
    """
    K = q.shape[1]
    return _ops.nonneg_qp(M, q, simplex, tol, max_iterations(K) if max_iter is None else max_iter, patience(K))


def qp_weights(G: Tensor, pref: Optional[Tensor], method: str) -> Tensor:
    """weights(G) of 'mgda', 'dualproj' or 'upgrad' (see :func:`mtl_fast.reference.qp_weights`)."""
    K = G.shape[0]
    return _ops.qp_weights(G, pref, method, QP_REGULARIZATION, QP_TOLERANCE, max_iterations(K), patience(K))


class PreferenceQPWeighting(Weighting):
    """The weights of a dual-cone method (DualProj, UPGrad) for a preference vector u over the tasks.

    Args:
        pref_vector: K non-negative weights u; default the mean.
    """

    method: str  # the method's name for :func:`qp_weights`

    def __init__(self, pref_vector: Optional[Sequence[float]] = None) -> None:
        self.pref_vector = check_preference(pref_vector)

    def preference(self, K: int, device: torch.device) -> Tensor:
        """The (K,) float64 preference weights u on ``device`` (a subclass may define its own)."""
        return preference(self.pref_vector, K, device)

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        return qp_weights(G, self.preference(K, G.device), self.method)

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"{type(self).__name__}(pref_vector={pref})"
