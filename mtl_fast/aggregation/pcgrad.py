"""PCGrad (Yu et al. 2020): gradient surgery, run on coefficients of the task gradients."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ops
from .._checks import check_gram
from .bases import GramAggregator, SeededWeighting

__all__ = ["PCGrad", "PCGradWeighting", "draw_pcgrad_orders", "check_orders"]


def draw_pcgrad_orders(K: int, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    """(K, K-1) int64: row i is a uniformly random order of the tasks other than i, drawn on ``device``."""
    keys = torch.rand(K, K, device=device, generator=generator)
    keys.diagonal().fill_(2.0)  # rand is < 1, so task i sorts last and is cut off
    return keys.argsort(dim=1)[:, : K - 1]


def check_orders(orders: Tensor, K: int) -> None:
    """Visiting orders pinned by the caller: (K, K-1) int64."""
    if not isinstance(orders, Tensor) or orders.dtype != torch.int64 or tuple(orders.shape) != (K, K - 1):
        raise ValueError(f"orders: expected an int64 tensor of shape ({K}, {K - 1}), got "
                         f"{getattr(orders, 'dtype', type(orders).__name__)} {tuple(getattr(orders, 'shape', ()))}")


class PCGradWeighting(SeededWeighting):
    """PCGrad's weights from G (see :class:`PCGrad`).

    Args:
        seed: seeds the visiting orders (one generator per device); None draws from torch's global generator.
    """

    def orders(self, K: int, device: torch.device) -> Tensor:
        """Draws the next (K, K-1) visiting orders."""
        return draw_pcgrad_orders(K, device, self.generators.get(device))

    def __call__(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """PCGrad weights for G; ``orders`` (K, K-1) int64 pins the visiting orders (drawn when None)."""
        K = check_gram(G)
        if orders is None:
            orders = self.orders(K, G.device)
        else:
            check_orders(orders, K)
        return _ops.pcgrad_weights(G, orders)

    def __repr__(self) -> str:
        return f"PCGradWeighting(seed={self.seed})"


class PCGrad(GramAggregator):
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), Algorithm 1.

    For each task i, the other tasks j are visited in a random order drawn independently for every i; when the
    running g_i^PC conflicts with the ORIGINAL g_j (g_i^PC . g_j < 0) it is projected onto g_j's normal plane,
    g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j. The update is the SUM of the g_i^PC (as in the paper; use
    ``Weighted``-style scaling on the losses, or divide the learning rate, for a mean). Zero gradients are
    never projected onto, so zero or tiny task gradients give finite results. It runs on coefficients of the task
    gradients, g_i^PC = sum_a C[i, a] g_a, so it needs nothing but G.

    Args:
        seed: seeds this aggregator's own random generator (one per device), making the sequence of visiting
            orders reproducible; ``None`` draws from torch's global generator.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(PCGradWeighting(seed))

    @property
    def seed(self) -> Optional[int]:
        return self.weighting.seed

    def orders(self, K: int, device: torch.device) -> Tensor:
        """Draws the next (K, K-1) visiting orders."""
        return self.weighting.orders(K, device)

    def weights(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """PCGrad weights for G; ``orders`` (K, K-1) int64 pins the visiting orders (drawn when None)."""
        return self.weighting(G, orders)
