"""DualProj (Lopez-Paz & Ranzato 2017; Quinton & Rey 2024): the mean gradient projected onto the dual cone."""
from __future__ import annotations

from typing import Optional, Sequence

from ._qp import PreferenceQPWeighting
from .bases import GramAggregator

__all__ = ["DualProj", "DualProjWeighting"]


class DualProjWeighting(PreferenceQPWeighting):
    """DualProj's weights from G (see :class:`DualProj`)."""

    method = "dualproj"


class DualProj(GramAggregator):
    """DualProj: the preference-weighted mean gradient projected onto the dual cone of the task gradients,
    {d : g_k . d >= 0 for all k} (Equation 11 of "Gradient Episodic Memory for Continual Learning", Lopez-Paz &
    Ranzato 2017; named DualProj in "Jacobian Descent for Multi-Objective Optimization", Quinton & Rey 2024).

    By the dual form (Quinton & Rey, Proposition 1) the projection of J^T u is J^T v with
    v = argmin_{v >= u} v^T G v, so d = sum_k v_k g_k satisfies J d = G v >= 0: it conflicts with no task.
    u is the preference vector (default the mean, 1/K each), so with no conflict d is the mean gradient.

    Solver: block principal pivoting on G / trace(G) + 1e-6 I (the projection does not depend on G's scale),
    KKT tolerance 1e-9 relative. TorchJD's default solver adds 1e-4 I instead: results agree to about 1e-3.

    Args:
        pref_vector: K non-negative weights u; default the mean.
    """

    def __init__(self, pref_vector: Optional[Sequence[float]] = None) -> None:
        super().__init__(DualProjWeighting(pref_vector))
