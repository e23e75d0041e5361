"""The fused heads' loss op (csrc/cpu/heads.cpp, csrc/cuda/heads.cpp): its fakes, autograd and dispatcher.

``heads_loss`` computes every task's loss and its gradient with respect to the logits in one pass; the backward
only scales that saved gradient by the incoming per-task (or per-sample) gradients.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import reference
from .registry import defined, has_kernel

if defined("heads_loss"):

    @torch.library.register_fake("mtl_fast::heads_loss")
    def _heads_loss_fake(logits: Tensor, class_targets: Tensor, value_targets: Tensor, sizes: List[int],
                         regression: List[bool], ignore_index: int, reduction: str):
        shape = (len(sizes), logits.shape[0]) if reduction == "none" else (len(sizes),)
        losses = logits.new_empty(shape, dtype=reference.heads_accumulation_dtype(logits.dtype))
        return losses, logits.new_empty(logits.shape)

    @torch.library.register_fake("mtl_fast::heads_loss_backward")
    def _heads_loss_backward_fake(grad_losses: Tensor, grad: Tensor, sizes: List[int]) -> Tensor:
        return grad.new_empty(grad.shape)

    def _heads_loss_setup(ctx, inputs, output) -> None:
        logits, class_targets, value_targets, sizes, regression, ignore_index, reduction = inputs
        ctx.sizes, ctx.regression, ctx.ignore_index, ctx.reduction = sizes, regression, ignore_index, reduction
        ctx.mark_non_differentiable(output[1])
        # The gradient output carries no gradient of its own: without this autograd would hand backward a
        # zero tensor of the logits' size for it on every step.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1], logits, class_targets, value_targets)

    def _heads_loss_backward(ctx, grad_losses: Optional[Tensor], _unused: Optional[Tensor]):
        if grad_losses is None:
            return (None,) * 7
        grad, logits, class_targets, value_targets = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (e.g. GradNorm): the saved gradient is a constant to autograd, so the
            # differentiable gradient comes from the reference instead.
            losses = reference.heads_loss(logits, class_targets, value_targets, ctx.sizes, ctx.regression,
                                          ctx.ignore_index, ctx.reduction)
            grad_logits = torch.autograd.grad(losses, logits, grad_losses, create_graph=True)[0]
        else:
            grad_logits = torch.ops.mtl_fast.heads_loss_backward.default(grad_losses, grad, ctx.sizes)
        return grad_logits, None, None, None, None, None, None

    torch.library.register_autograd("mtl_fast::heads_loss", _heads_loss_backward, setup_context=_heads_loss_setup)


def heads_loss(logits: Tensor, class_targets: Tensor, value_targets: Tensor, sizes: Sequence[int],
               regression: Sequence[bool], ignore_index: int, reduction: str) -> Tensor:
    """Per-task losses of the side-by-side logits (arguments as ``mtl_fast::heads_loss``, already checked)."""
    if has_kernel("heads_loss", logits.device.type):
        return torch.ops.mtl_fast.heads_loss.default(logits, class_targets, value_targets, list(sizes),
                                                     list(regression), ignore_index, reduction)[0]
    return reference.heads_loss(logits, class_targets, value_targets, sizes, regression, ignore_index, reduction)
