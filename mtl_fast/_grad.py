"""The one place that writes ``.grad``: accumulation as autograd does it."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from . import _ops


def accumulate_grads(params: Sequence[Tensor], values: Sequence[Tensor], weights: Optional[Tensor] = None) -> None:
    """Adds to every ``params[i].grad`` (or makes it) ``values[i]``, or with ``weights`` the combination
    sum_k weights[k] values[i][k] of a (K, *shape) tensor, computed straight into an existing ``.grad``.

    A new ``.grad`` is ``values[i]`` itself (no copy), as autograd hands over a gradient it owns."""
    if weights is None:
        for p, value in zip(params, values):
            p.grad = value if p.grad is None else p.grad.add_(value)
        return
    existing = [i for i, p in enumerate(params) if p.grad is not None]
    if existing:
        _ops.combine_into([values[i] for i in existing], weights, [params[i].grad for i in existing])
    missing = [i for i, p in enumerate(params) if p.grad is None]
    if missing:
        for i, grad in zip(missing, _ops.combine([values[i] for i in missing], weights)):
            params[i].grad = grad
