"""MGDA (Desideri 2012; Sener & Koltun 2018): the minimum-norm point of the convex hull of the task gradients."""
from __future__ import annotations

from torch import Tensor

from .._checks import check_gram
from ._qp import qp_weights
from .bases import GramAggregator, Weighting

__all__ = ["MGDA", "MGDAWeighting"]


class MGDAWeighting(Weighting):
    """MGDA's weights from G (see :class:`MGDA`)."""

    def __call__(self, G: Tensor) -> Tensor:
        check_gram(G)
        return qp_weights(G, None, "mgda")


class MGDA(GramAggregator):
    """MGDA: "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization" (Desideri 2012), as used
    for MTL in "Multi-Task Learning as Multi-Objective Optimization" (Sener & Koltun, NeurIPS 2018).

    The update is the minimum-norm point of the convex hull of the task gradients:
    w = argmin_{w >= 0, sum(w) = 1} w^T G w,  d = sum_k w_k g_k. The weights sum to 1 (no rescaling: the paper's
    MGDA-UB normalisation of the losses is not applied). d . g_k >= |d|^2 >= 0 for every task.

    Solver: K = 2 in closed form, w_1 = clip((G22 - G12) / (G11 + G22 - 2 G12), 0, 1); K > 2 by block principal
    pivoting of min 1/2 z^T M z - sum(z), z >= 0, w = z / sum(z), with M = G / trace(G) + 1e-6 I, exact to KKT
    tolerance 1e-9 (relative). Identical tasks share the weight equally; all-zero gradients give the uniform
    weights.
    """

    def __init__(self) -> None:
        super().__init__(MGDAWeighting())
