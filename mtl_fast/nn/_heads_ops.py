"""The fused heads' loss ops (csrc/cpu/heads.cpp, csrc/cuda/heads.cpp): fake kernels, autograd, and the
pure-PyTorch reference they fall back to on devices (or installs) without a compiled kernel.

``heads_loss`` computes every task's loss and its gradient with respect to the logits in one pass; the
backward only scales that saved gradient by the incoming per-task (or per-sample) gradients.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _ops

__all__ = ["heads_loss", "reference_heads_loss", "accumulation_dtype"]

REDUCTIONS = ("none", "mean", "sum")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the losses come in: float64 for float64 logits, float32 otherwise (as under autocast)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_heads_loss(logits: Tensor, class_targets: Tensor, value_targets: Tensor, sizes: Sequence[int],
                         regression: Sequence[bool], ignore_index: int, reduction: str) -> Tensor:
    """The oracle of ``mtl_fast::heads_loss``'s losses: one F.cross_entropy or F.mse_loss per task.

    For 'none', a regression task's per-sample loss is its squared error summed over the task's outputs.
    """
    acc = accumulation_dtype(logits.dtype)
    regression_sizes = [s for s, r in zip(sizes, regression) if r]
    classes = iter(class_targets.unbind(0))
    values = iter(value_targets.split(regression_sizes, dim=1))
    losses: List[Tensor] = []
    for z, is_regression in zip(logits.split(list(sizes), dim=1), regression):
        z = z.to(acc)
        if is_regression:
            t = next(values)
            losses.append(F.mse_loss(z, t, reduction="none").sum(1) if reduction == "none"
                          else F.mse_loss(z, t, reduction=reduction))
        else:
            losses.append(F.cross_entropy(z, next(classes), ignore_index=ignore_index, reduction=reduction))
    return torch.stack(losses)


# Fixed at import; a plain set lookup keeps heads_loss traceable by torch.compile.
_KERNEL_DEVICES = _ops.kernel_devices("heads_loss")


def has_kernel(device_type: str) -> bool:
    """True when the compiled heads_loss has a kernel for this device type ('cpu', 'cuda')."""
    return device_type in _KERNEL_DEVICES


if _KERNEL_DEVICES:

    @torch.library.register_fake("mtl_fast::heads_loss")
    def _heads_loss_fake(logits: Tensor, class_targets: Tensor, value_targets: Tensor, sizes: List[int],
                         regression: List[bool], ignore_index: int, reduction: str):
        shape = (len(sizes), logits.shape[0]) if reduction == "none" else (len(sizes),)
        losses = logits.new_empty(shape, dtype=accumulation_dtype(logits.dtype))
        return losses, logits.new_empty(logits.shape)

    @torch.library.register_fake("mtl_fast::heads_loss_backward")
    def _heads_loss_backward_fake(grad_losses: Tensor, grad: Tensor, sizes: List[int]) -> Tensor:
        return grad.new_empty(grad.shape)

    def _heads_loss_setup(ctx, inputs, output) -> None:
        logits, class_targets, value_targets, sizes, regression, ignore_index, reduction = inputs
        ctx.sizes, ctx.regression, ctx.ignore_index, ctx.reduction = sizes, regression, ignore_index, reduction
        ctx.mark_non_differentiable(output[1])
        # The gradient output carries no gradient of its own: without this autograd would hand backward a
        # zero tensor of the logits' size (tens of MB at C = 1000) for it on every step.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(output[1], logits, class_targets, value_targets)

    def _heads_loss_backward(ctx, grad_losses: Optional[Tensor], _unused: Optional[Tensor]):
        if grad_losses is None:
            return (None,) * 7
        grad, logits, class_targets, value_targets = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (e.g. GradNorm): the saved gradient is a constant to autograd, so the
            # differentiable gradient comes from the reference instead.
            losses = reference_heads_loss(logits, class_targets, value_targets, ctx.sizes, ctx.regression,
                                          ctx.ignore_index, ctx.reduction)
            grad_logits = torch.autograd.grad(losses, logits, grad_losses, create_graph=True)[0]
        else:
            grad_logits = torch.ops.mtl_fast.heads_loss_backward(grad_losses, grad, ctx.sizes)
        return grad_logits, None, None, None, None, None, None

    torch.library.register_autograd("mtl_fast::heads_loss", _heads_loss_backward, setup_context=_heads_loss_setup)


def heads_loss(logits: Tensor, class_targets: Tensor, value_targets: Tensor, sizes: Sequence[int],
               regression: Sequence[bool], ignore_index: int, reduction: str) -> Tensor:
    """Per-task losses of the side-by-side logits (arguments as ``mtl_fast::heads_loss``, already checked)."""
    if has_kernel(logits.device.type):
        return torch.ops.mtl_fast.heads_loss(logits, class_targets, value_targets, list(sizes), list(regression),
                                             ignore_index, reduction)[0]
    return reference_heads_loss(logits, class_targets, value_targets, sizes, regression, ignore_index, reduction)
