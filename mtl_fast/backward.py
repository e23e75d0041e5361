"""Parameter-level multi-task backward: aggregate the per-task gradients of the shared parameters."""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

from . import _ops
from .aggregators import Aggregator, GramAggregator, Sum, _FixedWeights
from .distributed import GlobalGram, GradientReducer, agreed_weights, world_size

__all__ = ["backward", "reachable_leaves"]

_JACOBIAN_MODES = ("auto", "batched", "loop")


def _check_losses(losses: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(f"losses: expected a sequence of scalar losses or a 1-D tensor of them, got a tensor "
                             f"of shape {tuple(losses.shape)}")
        losses = list(losses.unbind())
    elif isinstance(losses, (list, tuple)):
        losses = list(losses)
    else:
        raise TypeError(f"losses: expected a sequence of scalar tensors, got {type(losses).__name__}")
    if not losses:
        raise ValueError("losses: expected at least one loss, got an empty sequence")
    for k, loss in enumerate(losses):
        if not isinstance(loss, Tensor):
            raise TypeError(f"losses[{k}]: expected a scalar Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"losses[{k}]: expected a scalar loss, got shape {tuple(loss.shape)} "
                             "(reduce it, e.g. with .mean(), first)")
        if not loss.dtype.is_floating_point:
            raise TypeError(f"losses[{k}]: expected a floating dtype, got {loss.dtype}")
        if not loss.requires_grad:
            raise ValueError(f"losses[{k}]: does not require grad (computed under torch.no_grad(), or from "
                             "tensors that do not require grad?)")
        if loss.device != losses[0].device:
            raise ValueError(f"losses[{k}]: is on {loss.device} but losses[0] is on {losses[0].device}")
    return [loss.reshape(()) for loss in losses]


def _check_params(params: Iterable[Tensor], name: str = "shared_params") -> List[Tensor]:
    if isinstance(params, Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"{name}: expected an iterable of tensors (e.g. model.trunk.parameters()), got "
                        f"{type(params).__name__}") from None
    if not params:
        raise ValueError(f"{name}: expected at least one parameter, got none")
    unique, seen = [], set()
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}]: expected a Tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"{name}[{i}]: does not require grad (shape {tuple(p.shape)})")
        if not p.is_leaf:
            raise ValueError(f"{name}[{i}]: is not a leaf tensor (it has a grad_fn); pass the parameters "
                             "themselves")
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def reachable_leaves(roots: Sequence[Tensor]) -> List[Tensor]:
    """The leaf tensors requiring grad that backpropagating from ``roots`` reaches, in a fixed order."""
    leaves: List[Tensor] = []
    seen_nodes, seen_leaves = set(), set()
    stack = []
    for root in roots:
        if root.grad_fn is not None:
            stack.append(root.grad_fn)
        elif root.requires_grad and id(root) not in seen_leaves:
            seen_leaves.add(id(root))
            leaves.append(root)
    while stack:
        node = stack.pop()
        if node in seen_nodes:
            continue
        seen_nodes.add(node)
        variable = getattr(node, "variable", None)  # set on AccumulateGrad nodes, the leaves' entry points
        if variable is not None and id(variable) not in seen_leaves:
            seen_leaves.add(id(variable))
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return leaves


#: Receives task k's gradients (one per input, None where task k does not reach it) as soon as they exist.
TaskSink = Callable[[int, Sequence[Optional[Tensor]]], None]


def _per_task_gradients(losses: List[Tensor], inputs: List[Tensor], retain_graph: bool, mode: str,
                        sink: TaskSink) -> None:
    """Hands task k's gradient of every input to ``sink(k, grads)``: from one batched backward, or from one
    backward per task, as soon as each exists, so that a consumer such as the distributed reducer can start
    sending task k while task k + 1 is still being computed."""
    K = len(losses)
    if mode == "batched" or (mode == "auto" and K > 1 and losses[0].device.type != "cpu"):
        stacked = torch.stack(losses)
        try:
            grads = torch.autograd.grad(
                stacked, inputs, grad_outputs=torch.eye(K, dtype=stacked.dtype, device=stacked.device),
                retain_graph=retain_graph, allow_unused=True, is_grads_batched=True)
        except RuntimeError as batched_error:
            if mode == "batched":
                raise
            try:
                return _per_task_loop(losses, inputs, retain_graph, sink)
            except RuntimeError as loop_error:
                raise RuntimeError(
                    f"mtl_fast.backward: the batched backward failed ({batched_error}) and the per-task fallback "
                    f"then failed too ({loop_error}); call it with jacobian='loop'") from loop_error
        for k in range(K):
            sink(k, [None if g is None else g[k] for g in grads])
        return None
    return _per_task_loop(losses, inputs, retain_graph, sink)


def _per_task_loop(losses: List[Tensor], inputs: List[Tensor], retain_graph: bool, sink: TaskSink) -> None:
    for k, loss in enumerate(losses):
        # Unreached inputs stay None (no zeros are materialised): the sinks skip them.
        sink(k, torch.autograd.grad(loss, inputs, retain_graph=retain_graph or k + 1 < len(losses),
                                    allow_unused=True))


class _TaskRows:
    """The local sink: row k of each shared parameter's (K, *shape) Jacobian, and the task sum of every other
    parameter's gradient (what plain autograd would give it), filled as the per-task gradients arrive."""

    def __init__(self, shared: List[Tensor], num_others: int, K: int) -> None:
        self.shared_J = [torch.empty((K, *p.shape), dtype=p.dtype, device=p.device) for p in shared]
        self.other_sums: List[Optional[Tensor]] = [None] * num_others

    def add_row(self, k: int, grads: Sequence[Optional[Tensor]]) -> None:
        n = len(self.shared_J)
        for J, g in zip(self.shared_J, grads[:n]):
            if g is None:
                J[k].zero_()
            else:
                J[k].copy_(g)
        for i, g in enumerate(grads[n:]):
            if g is not None:
                # autograd.grad's results are ours to modify.
                self.other_sums[i] = g if self.other_sums[i] is None else self.other_sums[i].add_(g)


def _weighted_sum(aggregator: _FixedWeights, losses: List[Tensor]) -> Tensor:
    """sum(w_k * L_k) with Python-float w_k, exactly as a user writes it; read from a CPU copy, never the device."""
    scales = aggregator.fixed_weights(len(losses), torch.device("cpu")).tolist()
    return sum(s * loss for s, loss in zip(scales, losses))


def _accumulate(params: List[Tensor], chunks: List[Tensor], weights: Tensor) -> None:
    """p.grad += sum_k weights[k] chunk[k] as autograd would: in place where a .grad exists, else a new one."""
    existing = [i for i, p in enumerate(params) if p.grad is not None]
    if existing:
        _ops.combine_into([chunks[i] for i in existing], weights, [params[i].grad for i in existing])
    missing = [i for i, p in enumerate(params) if p.grad is None]
    if missing:
        for i, grad in zip(missing, _ops.combine([chunks[i] for i in missing], weights)):
            params[i].grad = grad


def backward(losses: Union[Tensor, Sequence[Tensor]], shared_params: Iterable[Tensor], *,
             aggregator: Aggregator = Sum(), retain_graph: bool = False, jacobian: str = "auto",
             process_group: Optional[dist.ProcessGroup] = None) -> Optional[Tensor]:
    """Backpropagates K task losses, combining their gradients on the shared parameters with ``aggregator``.

    Shared parameters get the aggregate of their K per-task gradients; every other parameter the losses reach
    gets its ordinary gradient of the loss sum. Gradients accumulate into ``.grad`` as ``loss.backward()``
    does. With ``Sum``, ``Mean`` or ``Weighted`` no Jacobian is formed at all: this is exactly
    ``sum(w_k * L_k).backward()``. Parameters no loss reaches get no gradient.

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
    Returns:
        The (K,) float64 weights applied to the shared gradients (None for an aggregator that is not
        Gram-based).
    Raises:
        ValueError / TypeError on bad input, before anything is written to ``.grad``; with ``process_group``,
        whatever a failed or timed-out collective raises (the group's timeout bounds the wait for a rank that
        never arrives), also before anything is written.
    """
    losses = _check_losses(losses)
    shared = _check_params(shared_params)
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator: expected an mtl_fast Aggregator (e.g. mtl_fast.PCGrad()), got "
                        f"{type(aggregator).__name__}")
    if isinstance(aggregator, GlobalGram):
        raise TypeError("aggregator: GlobalGram is for mtl_fast.fork; mtl_fast.backward averages the task "
                        "gradients itself when given process_group")
    if jacobian not in _JACOBIAN_MODES:
        raise ValueError(f"jacobian: expected one of {_JACOBIAN_MODES}, got {jacobian!r}")
    if process_group is not None:
        world_size(process_group)
    K = len(losses)
    for i, p in enumerate(shared):
        if p.device != losses[0].device:
            raise ValueError(f"shared_params[{i}]: is on {p.device} but the losses are on {losses[0].device}")

    if process_group is not None:
        return _backward_across_ranks(losses, shared, aggregator, retain_graph, jacobian, process_group)

    if isinstance(aggregator, _FixedWeights):
        torch.autograd.backward(_weighted_sum(aggregator, losses), retain_graph=retain_graph)
        return aggregator.fixed_weights(K, losses[0].device).clone()  # the caller may modify it

    shared_ids = {id(p) for p in shared}
    leaves = reachable_leaves(losses)
    reached = {id(p) for p in leaves}
    shared = [p for p in shared if id(p) in reached]
    if not shared:
        raise ValueError("shared_params: none of them is reached by the losses")
    others = [p for p in leaves if id(p) not in shared_ids]

    rows = _TaskRows(shared, len(others), K)
    _per_task_gradients(losses, shared + others, retain_graph, jacobian, rows.add_row)
    shared_J = rows.shared_J
    with torch.no_grad():
        if isinstance(aggregator, GramAggregator):
            weights = aggregator.weights(_ops.gram(shared_J))
            _accumulate(shared, shared_J, weights)
        else:
            weights = None
            combined = aggregator.aggregate_chunks(shared_J)
            _accumulate(shared, [c.unsqueeze(0) for c in combined],
                        torch.ones(1, dtype=torch.float64, device=losses[0].device))
        for p, total in zip(others, rows.other_sums):
            if total is not None:
                p.grad = total if p.grad is None else p.grad.add_(total)
    return weights


def _backward_across_ranks(losses: List[Tensor], shared: List[Tensor], aggregator: Aggregator, retain_graph: bool,
                           jacobian: str, group: dist.ProcessGroup) -> Optional[Tensor]:
    """backward() with every gradient averaged over the R ranks of ``group`` before it is aggregated.

    The gradients are summed over the ranks (:class:`~mtl_fast.distributed.GradientReducer`) and the 1/R of the
    mean is folded into the K x K math rather than spent on a pass over J: the mean J/R has Gram G/R^2 and its
    combination with weights w is that of J with w/R. All shared parameters are communicated on every rank, even
    those this rank's losses do not reach (as zeros), so that the ranks' collectives match. Even Sum/Mean/Weighted
    compute their gradient with autograd.grad rather than into ``.grad``: averaging ``.grad`` in place would also
    average what earlier calls accumulated there, and could leave it half-reduced on failure.
    """
    K, device = len(losses), losses[0].device
    shared_ids = {id(p) for p in shared}
    leaves = reachable_leaves(losses)
    reached = {id(p) for p in leaves}
    others = [p for p in leaves if id(p) not in shared_ids]
    inputs = [p for p in shared if id(p) in reached] + others
    fixed = isinstance(aggregator, _FixedWeights)
    reducer = GradientReducer(shared, [id(p) in reached for p in shared], others, 1 if fixed else K, group)
    R = reducer.world_size
    if fixed:
        reducer.add_row(0, torch.autograd.grad(_weighted_sum(aggregator, losses), inputs, retain_graph=retain_graph,
                                               allow_unused=True, materialize_grads=True))
    else:
        _per_task_gradients(losses, inputs, retain_graph, jacobian, sink=reducer.add_row)
    mean_of_one_row = torch.full((1,), 1.0 / R, dtype=torch.float64, device=device)
    with torch.no_grad():
        J = reducer.shared_sums()
        if fixed:
            weights = aggregator.fixed_weights(K, device).clone()  # returned: the caller may modify it
            combined = _ops.combine(J, mean_of_one_row)
        elif isinstance(aggregator, GramAggregator):
            weights = agreed_weights(aggregator, _ops.gram(J) / R ** 2, group)
            combined = _ops.combine(J, weights / R)
        else:
            # Not Gram-based: no weights to agree on, so a random aggregator (GradDrop) must be seeded alike.
            weights = None
            combined = aggregator.aggregate_chunks([j.div_(R) for j in J])
        # The task-specific sums were still in flight while the shared ones were aggregated.
        others_combined = _ops.combine(reducer.other_sums(), mean_of_one_row) if others else []
        reducer.accumulate(combined, others_combined)
    return weights
