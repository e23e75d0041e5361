"""The two passes over a Jacobian: ``gram`` (G = J J^T) and ``combine`` (sum_k w_k J[k]), with their fakes and
autograd. J is a list of chunks of shape (K, ...) (its rows laid side by side); arguments arrive validated."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import reference
from .registry import defined, has_kernel

if defined("gram"):

    @torch.library.register_fake("mtl_fast::gram")
    def _gram_fake(J: List[Tensor]) -> Tensor:
        K = J[0].shape[0]
        return J[0].new_empty((K, K), dtype=torch.float64)

    @torch.library.register_fake("mtl_fast::combine")
    def _combine_fake(J: List[Tensor], weights: Tensor) -> List[Tensor]:
        return [chunk.new_empty(chunk.shape[1:]) for chunk in J]

    @torch.library.register_fake("mtl_fast::combine_into")
    def _combine_into_fake(J: List[Tensor], weights: Tensor, out: List[Tensor]) -> None:
        return None

    # d<J_a, J_b>/dJ and d(sum_k w_k J_k) are plain matrix products, written with torch ops so that they are
    # differentiable again.
    def _gram_setup(ctx, inputs, output) -> None:
        (J,) = inputs
        ctx.save_for_backward(*J)

    def _gram_backward(ctx, grad: Tensor):
        J = ctx.saved_tensors
        sym = grad + grad.mT
        return ([(sym.to(c.dtype) @ c.reshape(c.shape[0], -1)).reshape(c.shape) for c in J],)

    def _combine_setup(ctx, inputs, output) -> None:
        J, weights = inputs
        ctx.save_for_backward(weights, *J)

    def _combine_backward(ctx, grads: List[Optional[Tensor]]):
        weights, *J = ctx.saved_tensors
        grad_J, grad_w = [], torch.zeros_like(weights)
        for chunk, g in zip(J, grads):
            if g is None:
                grad_J.append(torch.zeros_like(chunk))
                continue
            grad_J.append((weights.to(chunk.dtype)[:, None] * g.reshape(1, -1)).reshape(chunk.shape))
            grad_w = grad_w + (chunk.reshape(chunk.shape[0], -1) @ g.reshape(-1).to(chunk.dtype)).to(weights.dtype)
        return grad_J, grad_w

    torch.library.register_autograd("mtl_fast::gram", _gram_backward, setup_context=_gram_setup)
    torch.library.register_autograd("mtl_fast::combine", _combine_backward, setup_context=_combine_setup)


def gram(J: Sequence[Tensor]) -> Tensor:
    """G = J J^T in float64 over all chunks."""
    if has_kernel("gram", J[0].device.type):
        return torch.ops.mtl_fast.gram.default(list(J))
    return reference.gram(J)


def combine(J: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    """sum_k weights[k] * chunk[k] for every chunk, in the chunk's dtype."""
    if has_kernel("combine", J[0].device.type):
        return list(torch.ops.mtl_fast.combine.default(list(J), weights))
    return reference.combine(J, weights)


def combine_into(J: Sequence[Tensor], weights: Tensor, out: Sequence[Tensor]) -> None:
    """out[c] += sum_k weights[k] * chunks[c][k], in place."""
    if has_kernel("combine_into", J[0].device.type):
        torch.ops.mtl_fast.combine_into.default(list(J), weights, list(out))
        return
    for o, c in zip(out, reference.combine(J, weights)):
        o.add_(c)
