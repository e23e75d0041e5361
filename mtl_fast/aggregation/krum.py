"""Krum and Multi-Krum (Blanchard et al. 2017): the gradients closest to their neighbours, from G's distances."""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from .bases import GramAggregator, Weighting

__all__ = ["Krum", "KrumWeighting"]


def squared_distances(G: Tensor) -> Tensor:
    """|g_i - g_j|^2 = G_ii + G_jj - 2 G_ij, clamped at 0 against rounding."""
    diagonal = G.diagonal()
    return (diagonal[:, None] + diagonal[None, :] - 2.0 * G).clamp_min(0.0)


class KrumWeighting(Weighting):
    """Krum's weights from G (see :class:`Krum`).

    Args:
        n_byzantine: f, the number of gradients that may be adversarial (>= 0).
        n_selected: m, how many gradients are averaged (>= 1; 1 is Krum, more is Multi-Krum).
    """

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        self.n_byzantine = check_number(n_byzantine, "n_byzantine", low=0, integer=True)
        self.n_selected = check_number(n_selected, "n_selected", low=1, integer=True)

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        if K < self.n_byzantine + 3:
            raise ValueError(f"G: Krum with n_byzantine = {self.n_byzantine} needs at least "
                             f"{self.n_byzantine + 3} tasks (n_byzantine + 3), got K = {K}")
        if K < self.n_selected:
            raise ValueError(f"n_selected: is {self.n_selected} but there are only {K} tasks")
        G, finite = finite_or_zero(G.double())
        distances = squared_distances(G)
        distances.diagonal().fill_(float("inf"))  # a gradient is not its own neighbour
        neighbours = K - self.n_byzantine - 2
        scores = distances.topk(neighbours, dim=1, largest=False).values.sum(1)
        # stable: among equal scores the first task wins, on every device
        selected = scores.argsort(stable=True)[: self.n_selected]
        w = torch.zeros(K, dtype=G.dtype, device=G.device).index_fill(0, selected, 1.0 / self.n_selected)
        return nan_unless(finite, w)

    def __repr__(self) -> str:
        return f"KrumWeighting(n_byzantine={self.n_byzantine}, n_selected={self.n_selected})"


class Krum(GramAggregator):
    """Krum, "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (Blanchard et al., NeurIPS
    2017), section 4, and Multi-Krum.

    Each gradient's score is the sum of its squared distances to its K - f - 2 nearest other gradients,
    |g_i - g_j|^2 = G_ii + G_jj - 2 G_ij; Krum returns the gradient with the lowest score, Multi-Krum the mean of
    the m lowest (weights 1/m on them, 0 elsewhere). Ties go to the lower index. Needs K >= f + 3 (at least one
    neighbour); the paper's guarantee needs 2f + 2 < K. Deviation from TorchJD 0.18: it scores with the
    distances, not their squares as the paper does, so the two may select differently.

    Args:
        n_byzantine: f, the number of gradients that may be adversarial (>= 0).
        n_selected: m, how many gradients are averaged (>= 1; default 1, Krum).
    """

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        super().__init__(KrumWeighting(n_byzantine, n_selected))
