"""Representation-level aggregation: an autograd barrier between a shared trunk and the task heads."""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .aggregation import Aggregator, Sum

__all__ = ["fork"]


class _Fork(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, num_tasks: int, aggregator: Aggregator) -> Tuple[Tensor, ...]:
        ctx.aggregator = aggregator
        # An alias no loss used then arrives as None, not as zeros: it is reported below.
        ctx.set_materialize_grads(False)
        return tuple(features.view_as(features) for _ in range(num_tasks))

    @staticmethod
    def backward(ctx, *grads: Optional[Tensor]):
        unused = [k for k, g in enumerate(grads) if g is None]
        if len(unused) == len(grads):
            return None, None, None
        if unused:
            # A zero gradient for a task is a task that wants nothing: a conflict-averse method (MGDA) then
            # shrinks the whole update towards zero. Almost always a head that was fed the wrong alias.
            warnings.warn(f"mtl_fast.fork: the aliases of tasks {unused} received no gradient in this backward, so "
                          f"the aggregator sees a zero gradient for them; feed feats[k] to head k for every one of "
                          f"the {len(grads)} tasks (or fork into fewer tasks).", UserWarning, stacklevel=2)
        template = next(g for g in grads if g is not None)
        # Row k is task k's whole feature gradient (batch x features), as the Gram at this level is defined.
        J = torch.stack([torch.zeros_like(template).reshape(-1) if g is None else g.reshape(-1) for g in grads])
        combined = ctx.aggregator.aggregate_chunks([J])[0]
        return combined.view_as(template), None, None


def fork(features: Tensor, num_tasks: int, *, aggregator: Aggregator = Sum()) -> Tuple[Tensor, ...]:
    """Splits shared features into one alias per task head; on backward, aggregates the heads' gradients.

    Feed ``feats[k]`` to head k and call ``loss.backward()`` on the summed (or any) loss as usual: the trunk
    then receives ``aggregator``'s combination of the K per-task feature gradients, each flattened over batch
    and features, in a single trunk backward. With ``Sum`` this is the plain backward.

    Args:
        features: the trunk's output.
        num_tasks: K, the number of heads (>= 1).
        aggregator: how to combine the K feature gradients. One that reads the losses too
            (``aggregator.needs_losses``, e.g. DBMTL) must be handed them with ``aggregator.update_losses(losses)``
            before the backward; one whose ``representation_level_ok`` is False (ExcessMTL, MoCo: per-coordinate
            state across steps) is refused.
    Returns:
        A tuple of K tensors aliasing ``features`` (do not modify them in place).
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features: expected a Tensor, got {type(features).__name__}")
    if not features.dtype.is_floating_point:
        raise TypeError(f"features: expected a floating dtype, got {features.dtype}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int):
        raise TypeError(f"num_tasks: expected an int, got {type(num_tasks).__name__}")
    if num_tasks < 1:
        raise ValueError(f"num_tasks: expected at least 1 task, got {num_tasks}")
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator: expected an mtl_fast Aggregator (e.g. mtl_fast.PCGrad()), got "
                        f"{type(aggregator).__name__}")
    if not aggregator.representation_level_ok:
        raise TypeError(f"aggregator: {type(aggregator).__name__} keeps per-coordinate state across steps, which "
                        "on feature gradients (other samples every step) means nothing; use it with "
                        "mtl_fast.backward on the shared parameters")
    return _Fork.apply(features, num_tasks, aggregator)
