"""Parameter-level multi-task backward: aggregate the per-task gradients of the shared parameters.

The stages: the per-task gradients (:mod:`mtl_fast.jacobian`), G = J J^T, the weights, and their combination
written into ``.grad`` (:mod:`mtl_fast._grad`). Across ranks, the per-task gradients are summed over the ranks
first (:mod:`mtl_fast.distributed`).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

from . import _ops
from ._grad import accumulate_grads
from .aggregation import Aggregator, GramAggregator, Sum
from .distributed import GlobalGram, GradientReducer, agreed_weights, world_size
from .jacobian import (JACOBIAN_MODES, TaskRows, check_losses, check_params, per_task_gradients, split_parameters,
                       warn_if_unshared)

__all__ = ["backward"]


def _weighted_sum(aggregator: GramAggregator, losses: List[Tensor]) -> Tensor:
    """sum(w_k * L_k) with Python-float w_k, exactly as a user writes it; read from a CPU copy, never the device."""
    scales = aggregator.fixed_weights(len(losses), torch.device("cpu")).tolist()
    return sum(s * loss for s, loss in zip(scales, losses))


def _fixed_weights(aggregator: Aggregator, K: int, device: torch.device) -> Optional[Tensor]:
    """The weights of an aggregator whose weights do not depend on G (Sum, Mean, Weighted), else None."""
    return aggregator.fixed_weights(K, device) if isinstance(aggregator, GramAggregator) else None


def backward(losses: Union[Tensor, Sequence[Tensor]], shared_params: Iterable[Tensor], *,
             aggregator: Aggregator = Sum(), retain_graph: bool = False, jacobian: str = "auto",
             process_group: Optional[dist.ProcessGroup] = None, warn_unshared: bool = True) -> Optional[Tensor]:
    """Backpropagates K task losses, combining their gradients on the shared parameters with ``aggregator``.

    Shared parameters get the aggregate of their K per-task gradients; every other parameter the losses reach
    gets its ordinary gradient of the loss sum. Gradients accumulate into ``.grad`` as ``loss.backward()``
    does. With ``Sum``, ``Mean`` or ``Weighted`` no Jacobian is formed at all: this is exactly
    ``sum(w_k * L_k).backward()``. Parameters no loss reaches get no gradient.

    It holds the K x P Jacobian of the shared parameters while it aggregates. For a large trunk or many tasks,
    :class:`mtl_fast.GramEngine` gives the same gradients without it (docs/engine.md).

    Args:
        losses: K scalar losses (a sequence, or a 1-D tensor of them).
        shared_params: the parameters shared by the tasks (e.g. ``model.trunk.parameters()``).
        aggregator: how to combine the task gradients (``Sum()``, ``PCGrad(seed=0)``, ...).
        retain_graph: keep the graph for another backward, as in ``Tensor.backward``.
        jacobian: how the per-task gradients are obtained: 'batched' (one vmapped backward,
            ``is_grads_batched``), 'loop' (K backward passes) or 'auto': batched on GPUs, where one large
            batched backward beats K small ones, falling back to the loop for models vmap cannot handle;
            the loop on CPUs, where vmap's overhead costs more than it saves.
        process_group: a ``torch.distributed`` group (e.g. ``torch.distributed.group.WORLD``) whose ranks each
            hold an equal share of the batch: every gradient (per task, for the shared parameters) is averaged
            over the ranks before it is aggregated, so every rank writes the bitwise same gradients, those of one
            process on the whole batch when each loss is its rank's mean over an equal local batch. Every rank
            must call this with the same ``shared_params`` and aggregator, in the same order. Under
            DistributedDataParallel, run the forward and this call inside ``ddp_model.no_sync()``. See
            docs/distributed.md and :mod:`mtl_fast.distributed`.
        warn_unshared: warn when some ``shared_params`` are reached by one loss only (task-specific parameters
            passed as shared: the aggregator would change their gradients). Set False where that is meant.
    An aggregator that reads the losses too (``aggregator.needs_losses``, e.g. DBMTL) is handed them, detached,
    through ``aggregator.update_losses`` before its weights are computed (with ``process_group``, their mean over
    the ranks).

    Returns:
        The (K,) float64 weights applied to the shared gradients (None for an aggregator that is not
        Gram-based).
    Raises:
        ValueError / TypeError on bad input, before anything is written to ``.grad``; with ``process_group``,
        whatever a failed or timed-out collective raises (the group's timeout bounds the wait for a rank that
        never arrives), also before anything is written.
    """
    losses = check_losses(losses)
    shared = check_params(shared_params)
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator: expected an mtl_fast Aggregator (e.g. mtl_fast.PCGrad()), got "
                        f"{type(aggregator).__name__}")
    if isinstance(aggregator, GlobalGram):
        raise TypeError("aggregator: GlobalGram is for mtl_fast.fork; mtl_fast.backward averages the task "
                        "gradients itself when given process_group")
    if jacobian not in JACOBIAN_MODES:
        raise ValueError(f"jacobian: expected one of {JACOBIAN_MODES}, got {jacobian!r}")
    if process_group is not None:
        world_size(process_group)
    K = len(losses)
    for i, p in enumerate(shared):
        if p.device != losses[0].device:
            raise ValueError(f"shared_params[{i}]: is on {p.device} but the losses are on {losses[0].device}")

    if process_group is not None:
        return _backward_across_ranks(losses, shared, aggregator, retain_graph, jacobian, process_group,
                                      warn_unshared)

    fixed = _fixed_weights(aggregator, K, losses[0].device)
    if fixed is not None:
        torch.autograd.backward(_weighted_sum(aggregator, losses), retain_graph=retain_graph)
        return fixed.clone()  # the caller may modify it

    split = split_parameters(losses, shared)
    if not split.shared:
        raise ValueError("shared_params: none of them is reached by the losses")
    if warn_unshared:
        warn_if_unshared(losses, split.shared)
    if aggregator.needs_losses:
        aggregator.update_losses([loss.detach() for loss in losses])
    rows = TaskRows(split.shared, len(split.others), K)
    per_task_gradients(losses, split.shared + split.others, retain_graph, jacobian, rows.add_row)
    with torch.no_grad():
        if isinstance(aggregator, GramAggregator):
            weights = aggregator.weights(_ops.gram(rows.J))
            accumulate_grads(split.shared, rows.J, weights)
        else:
            weights = None
            accumulate_grads(split.shared, aggregator.aggregate_chunks(rows.J))
        reached_others = [(p, total) for p, total in zip(split.others, rows.other_sums) if total is not None]
        accumulate_grads([p for p, _ in reached_others], [total for _, total in reached_others])
    return weights


def _backward_across_ranks(losses: List[Tensor], shared: List[Tensor], aggregator: Aggregator, retain_graph: bool,
                           jacobian: str, group: dist.ProcessGroup, warn_unshared: bool) -> Optional[Tensor]:
    """backward() with every gradient averaged over the R ranks of ``group`` before it is aggregated.

    The gradients are summed over the ranks (:class:`~mtl_fast.distributed.GradientReducer`) and the 1/R of the
    mean is folded into the K x K math rather than spent on a pass over J: the mean J/R has Gram G/R^2 and its
    combination with weights w is that of J with w/R. All shared parameters are communicated on every rank, even
    those this rank's losses do not reach (as zeros), so that the ranks' collectives match. Even Sum/Mean/Weighted
    compute their gradient with autograd.grad rather than into ``.grad``: averaging ``.grad`` in place would also
    average what earlier calls accumulated there, and could leave it half-reduced on failure.
    """
    K, device = len(losses), losses[0].device
    split = split_parameters(losses, shared)
    inputs = split.shared + split.others
    fixed = _fixed_weights(aggregator, K, device)
    if fixed is None and warn_unshared:
        warn_if_unshared(losses, split.shared)
    if aggregator.needs_losses:
        # the losses of the global batch, so that every rank computes the same weights
        mean_losses = torch.stack([loss.detach() for loss in losses])
        dist.all_reduce(mean_losses, group=group)
        aggregator.update_losses(mean_losses / dist.get_world_size(group))
    reducer = GradientReducer(shared, split.reached, split.others, K if fixed is None else 1, group)
    R = reducer.world_size
    if fixed is not None:
        reducer.add_row(0, torch.autograd.grad(_weighted_sum(aggregator, losses), inputs, retain_graph=retain_graph,
                                               allow_unused=True, materialize_grads=True))
    else:
        per_task_gradients(losses, inputs, retain_graph, jacobian, sink=reducer.add_row)
    mean_of_one_row = torch.full((1,), 1.0 / R, dtype=torch.float64, device=device)
    with torch.no_grad():
        J = reducer.shared_sums()
        if fixed is not None:
            weights = fixed.clone()  # returned: the caller may modify it
            combined = _ops.combine(J, mean_of_one_row)
        elif isinstance(aggregator, GramAggregator):
            weights = agreed_weights(aggregator, _ops.gram(J) / R ** 2, group)
            combined = _ops.combine(J, weights / R)
        else:
            # Not Gram-based: no weights to agree on, so a random aggregator (GradDrop) must be seeded alike.
            weights = None
            combined = aggregator.aggregate_chunks([j.div_(R) for j in J])
        # The task-specific sums were still in flight while the shared ones were aggregated.
        others_combined = _ops.combine(reducer.other_sums(), mean_of_one_row) if split.others else []
        reducer.accumulate(combined, others_combined)
    return weights
