"""Aligned-MTL (Senushkin et al. 2023): the task gradients aligned to an orthogonal, equal-norm system."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._checks import check_gram
from .._nonfinite import finite_or_zero, nan_unless
from ._utils import check_preference, preference
from .bases import GramAggregator, Weighting

__all__ = ["AlignedMTL", "AlignedMTLWeighting"]

_SCALE_MODES = ("min", "median", "rmse")


class AlignedMTLWeighting(Weighting):
    """Aligned-MTL's weights from G (see :class:`AlignedMTL`)."""

    def __init__(self, pref_vector: Optional[Sequence[float]] = None, scale_mode: str = "min") -> None:
        if scale_mode not in _SCALE_MODES:
            raise ValueError(f"scale_mode: expected one of {_SCALE_MODES}, got {scale_mode!r}")
        self.pref_vector = check_preference(pref_vector)
        self.scale_mode = scale_mode

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = finite_or_zero(G.double())  # eigh would raise on a NaN
        u = preference(self.pref_vector, K, G.device)
        eigenvalues, vectors = torch.linalg.eigh(G)
        cutoff = eigenvalues.amax() * K * torch.finfo(G.dtype).eps
        keep = eigenvalues > cutoff.clamp_min(torch.finfo(G.dtype).tiny)
        if self.scale_mode == "min":
            sigma = torch.where(keep, eigenvalues, float("inf")).amin()
        elif self.scale_mode == "median":
            sigma = torch.where(keep, eigenvalues, float("nan")).nanmedian()
        else:
            sigma = torch.where(keep, eigenvalues, 0.0).sum() / keep.sum().clamp_min(1)
        scaled = torch.where(keep, (sigma / torch.where(keep, eigenvalues, 1.0)).sqrt(), 0.0)
        w = vectors @ (scaled * (vectors.T @ u))
        return nan_unless(finite, torch.where(keep.any(), w, u))

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return f"AlignedMTLWeighting(pref_vector={pref}, scale_mode={self.scale_mode!r})"


class AlignedMTL(GramAggregator):
    """Aligned-MTL, "Independent Component Alignment for Multi-Task Learning" (Senushkin et al., CVPR 2023),
    Algorithm 1.

    With G = V diag(lambda) V^T (eigenvalues above K * eps * max kept), the balance transformation
    B = sqrt(sigma) V diag(lambda)^-1/2 V^T makes the aligned gradients J_hat = B J orthogonal with equal norms
    sqrt(sigma) (the condition number of the system becomes 1); the update is J_hat^T u, so w = B u with u the
    preference vector (default the mean 1/K, as TorchJD). sigma, the scale: 'min' the smallest kept eigenvalue
    (the paper), 'median' their (lower) median, 'rmse' their mean (as TorchJD names the official code's mode).
    Scale and rotation invariant in G; all-zero gradients give w = u.

    Args:
        pref_vector: K non-negative weights; default the mean.
        scale_mode: 'min', 'median' or 'rmse'.
    """

    def __init__(self, pref_vector: Optional[Sequence[float]] = None, scale_mode: str = "min") -> None:
        super().__init__(AlignedMTLWeighting(pref_vector, scale_mode))
