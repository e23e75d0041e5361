"""The Jacobian stage: which parameters the losses reach, split into shared and task-specific, and the per-task
gradients, handed to a sink as soon as each exists. Used by :func:`mtl_fast.backward` locally and across ranks."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["JACOBIAN_MODES", "ParameterSplit", "TaskRows", "TaskSink", "check_losses", "check_params",
           "per_task_gradients", "reach_counts", "reachable_leaves", "split_parameters", "warn_if_unshared"]

JACOBIAN_MODES = ("auto", "batched", "loop")

#: Receives task k's gradients (one per input, None where task k does not reach it) as soon as they exist.
TaskSink = Callable[[int, Sequence[Optional[Tensor]]], None]


def check_losses(losses: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
    """K scalar losses (a sequence, or a 1-D tensor of them), as 0-d tensors."""
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
                             "tensors that do not require grad?). To skip a task in this step, leave its loss "
                             "out of the list (the aggregator then sees one task fewer)")
        if loss.device != losses[0].device:
            raise ValueError(f"losses[{k}]: is on {loss.device} but losses[0] is on {losses[0].device}")
    return [loss.reshape(()) for loss in losses]


def check_params(params: Iterable[Tensor], name: str = "shared_params") -> List[Tensor]:
    """The parameters as a list of distinct leaf tensors that require grad, in their first order."""
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


def reach_counts(losses: Sequence[Tensor]) -> Dict[int, int]:
    """For every leaf the losses reach, by id, how many of the losses reach it (one graph walk per loss)."""
    counts: Dict[int, int] = {}
    for loss in losses:
        for p in reachable_leaves([loss]):
            counts[id(p)] = counts.get(id(p), 0) + 1
    return counts


def warn_if_unshared(losses: Sequence[Tensor], shared: Sequence[Tensor]) -> None:
    """Warns when some of the shared parameters are reached by one loss only: task-specific parameters (a head's)
    passed as shared, which the aggregator would then change (by PCGrad's projections, say) instead of giving them
    their ordinary gradient."""
    if len(losses) < 2:
        return
    counts = reach_counts(losses)
    single = [p for p in shared if counts.get(id(p), 0) == 1]
    if single:
        warnings.warn(
            f"mtl_fast: {len(single)} of the {len(shared)} shared_params are reached by one loss only, so they look "
            "task-specific (a head's?); the aggregator changes their gradients instead of leaving them their "
            "ordinary ones. Pass only the shared trunk's parameters (e.g. model.trunk.parameters()), or "
            "warn_unshared=False if this is meant.", UserWarning, stacklevel=3)


@dataclass
class ParameterSplit:
    """The parameters a backward of the losses touches.

    Attributes:
        shared: the shared parameters the losses reach, in the order given.
        reached: for every shared parameter given, whether the losses reach it.
        others: every other parameter the losses reach (the task-specific ones, e.g. the heads).
    """

    shared: List[Tensor]
    reached: List[bool]
    others: List[Tensor]


def split_parameters(losses: Sequence[Tensor], shared: Sequence[Tensor]) -> ParameterSplit:
    """Splits what the losses reach into the given shared parameters and the others."""
    shared_ids = {id(p) for p in shared}
    leaves = reachable_leaves(losses)
    reached_ids = {id(p) for p in leaves}
    reached = [id(p) in reached_ids for p in shared]
    return ParameterSplit(shared=[p for p, r in zip(shared, reached) if r], reached=reached,
                          others=[p for p in leaves if id(p) not in shared_ids])


def per_task_gradients(losses: List[Tensor], inputs: List[Tensor], retain_graph: bool, mode: str,
                       sink: TaskSink) -> None:
    """Hands task k's gradient of every input to ``sink(k, grads)``: from one batched backward ('batched', or
    'auto' on accelerators), or from one backward per task ('loop', or 'auto' on CPUs, where vmap's overhead costs
    more than it saves), as soon as each exists, so that a consumer such as the distributed reducer can start
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


class TaskRows:
    """The local sink: row k of each shared parameter's (K, *shape) Jacobian, and the task sum of every other
    parameter's gradient (what plain autograd would give it), filled as the per-task gradients arrive."""

    def __init__(self, shared: List[Tensor], num_others: int, K: int) -> None:
        self.J = [torch.empty((K, *p.shape), dtype=p.dtype, device=p.device) for p in shared]
        self.other_sums: List[Optional[Tensor]] = [None] * num_others

    def add_row(self, k: int, grads: Sequence[Optional[Tensor]]) -> None:
        n = len(self.J)
        for rows, g in zip(self.J, grads[:n]):
            if g is None:
                rows[k].zero_()
            else:
                rows[k].copy_(g)
        for i, g in enumerate(grads[n:]):
            if g is not None:
                # autograd.grad's results are ours to modify.
                self.other_sums[i] = g if self.other_sums[i] is None else self.other_sums[i].add_(g)
