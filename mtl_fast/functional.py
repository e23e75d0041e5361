"""The functional core: Gram matrix, weights and combination of a Jacobian given as one or many chunks."""
from __future__ import annotations

from typing import List, Union

from torch import Tensor

from . import _ops
from ._checks import Jacobian, as_chunks, check_task_weights
from .aggregation import Aggregator

__all__ = ["gram", "aggregate", "combine"]


def gram(J: Jacobian) -> Tensor:
    """The K x K Gram matrix G = J J^T of the task gradients, in float64.

    Args:
        J: a (K, P) tensor, or a sequence of (K, ...) tensors (e.g. one per parameter) whose rows are read as
            laid side by side; never concatenated.
    Returns:
        (K, K) float64 tensor on J's device.
    """
    J, _, _ = as_chunks(J)
    return _ops.gram(J)


def combine(J: Jacobian, weights: Tensor) -> Union[Tensor, List[Tensor]]:
    """sum_k weights[k] * J[k] in one pass over J; the result has J's structure without the K dim."""
    J, K, single = as_chunks(J)
    check_task_weights(weights, K)
    if weights.device != J[0].device:
        raise ValueError(f"weights: is on {weights.device} but J is on {J[0].device}")
    out = _ops.combine(J, weights)
    return out[0] if single else out


def aggregate(J: Jacobian, aggregator: Aggregator) -> Union[Tensor, List[Tensor]]:
    """Combines the K task gradients J into one, as ``aggregator`` prescribes.

    Args:
        J: a (K, P) tensor or a sequence of (K, ...) tensors.
        aggregator: e.g. ``mtl_fast.Sum()``, ``mtl_fast.PCGrad(seed=0)``.
    Returns:
        A (P,) tensor for a (K, P) J, else a list with one tensor per chunk of shape chunk.shape[1:].
    """
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator: expected an mtl_fast Aggregator (e.g. mtl_fast.PCGrad()), got "
                        f"{type(aggregator).__name__}")
    return aggregator(J)
