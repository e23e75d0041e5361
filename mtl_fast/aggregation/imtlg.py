"""IMTL-G (Liu et al. 2021): the update with equal projections onto every task's unit gradient."""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_gram
from .._nonfinite import finite_or_zero, nan_unless
from ._utils import symmetric_pinv_apply
from .bases import GramAggregator, Weighting

__all__ = ["IMTLG", "IMTLGWeighting"]


class IMTLGWeighting(Weighting):
    """IMTL-G's weights from G (see :class:`IMTLG`)."""

    def __call__(self, G: Tensor) -> Tensor:
        check_gram(G)
        G, finite = finite_or_zero(G.double())  # eigh would raise on a NaN
        v = symmetric_pinv_apply(G, G.diagonal().clamp_min(0.0).sqrt())
        total = v.sum()
        degenerate = total.abs() <= 1e-12 * v.abs().sum()
        w = torch.where(degenerate, torch.zeros_like(v), v / torch.where(degenerate, 1.0, total))
        return nan_unless(finite, w)


class IMTLG(GramAggregator):
    """IMTL-G, "Towards Impartial Multi-task Learning" (Liu et al., ICLR 2021), gradient balancing.

    Finds d = sum_k w_k g_k with sum(w) = 1 whose projections onto every task's unit gradient are equal,
    d . g_k / |g_k| = const. In Gram form: G w is proportional to sqrt(diag G), so w = G^+ sqrt(diag G) /
    sum(G^+ sqrt(diag G)), with the pseudo-inverse (Quinton & Rey 2024's generalisation, defined for linearly
    dependent gradients; equal to the paper's closed form when they are independent). Eigenvalues below
    K * eps * max eigenvalue are treated as zero. Weights are 0 when the normalising sum vanishes (e.g. all-zero
    gradients). Scale invariant in G.
    """

    def __init__(self) -> None:
        super().__init__(IMTLGWeighting())
