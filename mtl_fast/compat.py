"""A drop-in for the popular PCGrad port's optimizer wrapper (``PCGrad(optimizer)``, ``pc_backward``), done right.

That port projects every parameter, heads included, and ignores its ``reduction`` argument. Here only the
shared parameters are projected (found automatically: those reached by more than one loss, unless given),
heads keep their ordinary gradients, ``reduction`` is honoured, and the whole step runs on mtl_fast's kernels.

    optimizer = PCGradOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
    optimizer.zero_grad()
    optimizer.pc_backward(losses)
    optimizer.step()
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

import torch
from torch import Tensor

from .aggregation import PCGrad
from .backward import backward
from .jacobian import check_losses, check_params, reach_counts, reachable_leaves

__all__ = ["PCGradOptimizer"]


class _MeanPCGrad(PCGrad):
    """PCGrad whose update is the mean, not the sum, of the projected task gradients."""

    def weights(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        return super().weights(G, orders) / G.shape[0]


class PCGradOptimizer:
    """Wraps a torch optimizer with the PCGrad port's interface: ``zero_grad()``, ``pc_backward(losses)``,
    ``step()``.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        shared_params: the parameters to project; by default, on each ``pc_backward``, the parameters that more
            than one loss reaches.
        reduction: 'sum' (the paper's update, the sum of the projected gradients) or 'mean' (divided by K).
        seed: seeds the random visiting orders (see ``mtl_fast.PCGrad``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, shared_params: Optional[Iterable[Tensor]] = None,
                 reduction: str = "sum", seed: Optional[int] = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
        self.optimizer = optimizer
        self.shared_params = None if shared_params is None else check_params(shared_params)
        self.reduction = reduction
        self.aggregator = PCGrad(seed) if reduction == "sum" else _MeanPCGrad(seed)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> Any:
        return self.optimizer.step(closure)

    def pc_backward(self, objectives: Sequence[Tensor]) -> Tensor:
        """Backpropagates the K task losses with PCGrad on the shared parameters; returns the (K,) weights."""
        losses = check_losses(objectives)
        shared = self.shared_params if self.shared_params is not None else self._shared_by_several(losses)
        if not shared:
            raise ValueError("objectives: no parameter is reached by more than one loss, so nothing is shared; "
                             "pass shared_params explicitly")
        return backward(losses, shared, aggregator=self.aggregator)

    @staticmethod
    def _shared_by_several(losses: List[Tensor]) -> List[Tensor]:
        counts = reach_counts(losses)
        return [p for p in reachable_leaves(losses) if counts[id(p)] > 1]

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)
