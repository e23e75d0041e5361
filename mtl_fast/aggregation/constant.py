"""Fixed weights: the sum, the mean and a given weighting of the task gradients. No Gram matrix, no Jacobian:
:func:`mtl_fast.backward` runs one ordinary backward of the weighted loss sum."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

from .._checks import as_float_tensor
from .bases import FixedWeighting, GramAggregator

__all__ = ["Sum", "Mean", "Weighted", "SumWeighting", "MeanWeighting", "ConstantWeighting"]


class SumWeighting(FixedWeighting):
    """w = 1 for every task."""

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        return torch.ones(K, dtype=torch.float64, device=device)


class MeanWeighting(FixedWeighting):
    """w = 1/K for every task."""

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)


class ConstantWeighting(FixedWeighting):
    """Given weights, one finite number per task (a sequence or a 1-D tensor)."""

    def __init__(self, weights: Sequence[float]) -> None:
        self.weights = as_float_tensor(weights, "weights")
        # One copy per device, made once: a host-to-device copy on every step would be a hidden sync (and
        # cannot be captured in a CUDA graph).
        self._on_device: Dict[torch.device, Tensor] = {}

    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        if K != self.weights.numel():
            raise ValueError(f"weights: Weighted has {self.weights.numel()} weights but there are {K} tasks")
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = self.weights.to(device)
        return self._on_device[device]

    def __repr__(self) -> str:
        return f"ConstantWeighting({self.weights.tolist()})"


class Sum(GramAggregator):
    """The plain sum of the task gradients: what ``sum(losses).backward()`` gives."""

    def __init__(self) -> None:
        super().__init__(SumWeighting())


class Mean(GramAggregator):
    """The mean of the task gradients: what ``(sum(losses) / K).backward()`` gives."""

    def __init__(self) -> None:
        super().__init__(MeanWeighting())


class Weighted(GramAggregator):
    """sum_k weights[k] g_k: what ``sum(w_k * L_k).backward()`` gives.

    Args:
        weights: one finite number per task (a sequence or a 1-D tensor).
    """

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__(ConstantWeighting(weights))

    def __repr__(self) -> str:
        return f"Weighted({self.weighting.weights.tolist()})"
