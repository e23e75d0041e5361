"""Aggregators: how the K task gradients of the shared parameters become one update.

Every aggregator here except the ones that act elementwise is Gram-based: its update is sum_k w_k g_k with
weights w = weights(G) computed from the K x K Gram matrix G = J J^T alone. That is what lets one fast path
(gram -> weights -> combine, two passes over J) serve them all.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import _ops
from ._checks import as_float_tensor, check_gram

__all__ = ["Aggregator", "GramAggregator", "Sum", "Mean", "Weighted", "PCGrad", "draw_pcgrad_orders"]


class Aggregator(ABC):
    """Maps the per-task gradients J (K rows) of the shared parameters to one combined gradient."""

    @abstractmethod
    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        """Combines validated chunks of shape (K, ...) into one tensor per chunk (shape without the K dim)."""

    def __call__(self, J):
        """Same as :func:`mtl_fast.aggregate` (J, self)."""
        from .functional import aggregate
        return aggregate(J, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GramAggregator(Aggregator):
    """An aggregator whose update is sum_k w_k g_k with w = weights(G), G = J J^T."""

    @abstractmethod
    def weights(self, G: Tensor) -> Tensor:
        """The (K,) float64 combination weights for the Gram matrix G (K x K)."""

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        return _ops.combine(chunks, self.weights(_ops.gram(chunks)))


class _FixedWeights(GramAggregator):
    """Weights that do not depend on G: the update is a fixed linear combination, so the fast paths skip the
    Gram matrix (and :func:`mtl_fast.backward` skips the Jacobian: one ordinary backward of the weighted sum)."""

    @abstractmethod
    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        """The (K,) float64 weights for K tasks."""

    def weights(self, G: Tensor) -> Tensor:
        return self.fixed_weights(check_gram(G), G.device)

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        return _ops.combine(chunks, self.fixed_weights(chunks[0].shape[0], chunks[0].device))


class Sum(_FixedWeights):
    """The plain sum of the task gradients: what ``sum(losses).backward()`` gives."""

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        return torch.ones(K, dtype=torch.float64, device=device)


class Mean(_FixedWeights):
    """The mean of the task gradients: what ``(sum(losses) / K).backward()`` gives."""

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)


class Weighted(_FixedWeights):
    """sum_k weights[k] g_k: what ``sum(w_k * L_k).backward()`` gives.

    Args:
        weights: one finite number per task (a sequence or a 1-D tensor).
    """

    def __init__(self, weights: Sequence[float]) -> None:
        self._weights = as_float_tensor(weights, "weights")

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        if K != self._weights.numel():
            raise ValueError(f"weights: Weighted has {self._weights.numel()} weights but there are {K} tasks")
        return self._weights.to(device)

    def __repr__(self) -> str:
        return f"Weighted({self._weights.tolist()})"


def draw_pcgrad_orders(K: int, device: torch.device, generator: Optional[torch.Generator] = None) -> Tensor:
    """(K, K-1) int64: row i is a uniformly random order of the tasks other than i, drawn on ``device``."""
    keys = torch.rand(K, K, device=device, generator=generator)
    keys.diagonal().fill_(2.0)  # rand is < 1, so task i sorts last and is cut off
    return keys.argsort(dim=1)[:, : K - 1]


class PCGrad(GramAggregator):
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), Algorithm 1.

    For each task i, the other tasks j are visited in a random order drawn independently for every i; when the
    running g_i^PC conflicts with the ORIGINAL g_j (g_i^PC . g_j < 0) it is projected onto g_j's normal plane,
    g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j. The update is the SUM of the g_i^PC (as in the paper; use
    ``Weighted``-style scaling on the losses, or divide the learning rate, for a mean). Zero gradients are
    never projected onto, so zero or tiny task gradients give finite results.

    Args:
        seed: seeds this aggregator's own random generator (one per device), making the sequence of visiting
            orders reproducible; ``None`` draws from torch's global generator.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        self.seed = seed
        self._generators: Dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def orders(self, K: int, device: torch.device) -> Tensor:
        """Draws the next (K, K-1) visiting orders."""
        return draw_pcgrad_orders(K, device, self._generator(torch.device(device)))

    def weights(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """PCGrad weights for G; ``orders`` (K, K-1) int64 pins the visiting orders (drawn when None)."""
        K = check_gram(G)
        if orders is None:
            orders = self.orders(K, G.device)
        elif not isinstance(orders, Tensor) or orders.dtype != torch.int64 or tuple(orders.shape) != (K, K - 1):
            raise ValueError(f"orders: expected an int64 tensor of shape ({K}, {K - 1}), got "
                             f"{getattr(orders, 'dtype', type(orders).__name__)} {tuple(getattr(orders, 'shape', ()))}")
        return _ops.pcgrad_weights(G, orders)

    def __repr__(self) -> str:
        return f"PCGrad(seed={self.seed})"
