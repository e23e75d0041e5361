"""UPGrad (Quinton & Rey 2024): each task gradient projected onto the dual cone, then combined."""
from __future__ import annotations

from typing import Optional, Sequence

from ._qp import PreferenceQPWeighting
from .bases import GramAggregator

__all__ = ["UPGrad", "UPGradWeighting"]


class UPGradWeighting(PreferenceQPWeighting):
    """UPGrad's weights from G (see :class:`UPGrad`)."""

    method = "upgrad"


class UPGrad(GramAggregator):
    """UPGrad, "Jacobian Descent for Multi-Objective Optimization" (Quinton & Rey, 2024).

    Each task gradient g_i is projected onto the dual cone {d : J d >= 0}, and the projections are combined with
    the preference weights (default the mean): d = sum_i u_i pi(g_i). The projection of g_i = J^T e_i is J^T v_i
    with v_i = argmin_{v >= e_i} v^T G v, so the weights are w = sum_i u_i v_i, and J d = G w >= 0.
    Without conflicts it is the mean gradient; it is invariant to scaling G, and equivariant to permuting tasks.

    Solver: the K projections as one batch of block-principal-pivoting QPs on G / trace(G) + 1e-6 I, KKT
    tolerance 1e-9 relative (TorchJD's default adds 1e-4 I: agreement to about 1e-3).

    Args:
        pref_vector: K non-negative weights u; default the mean.
    """

    def __init__(self, pref_vector: Optional[Sequence[float]] = None) -> None:
        super().__init__(UPGradWeighting(pref_vector))
