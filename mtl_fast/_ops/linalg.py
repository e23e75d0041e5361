"""The two passes over a Jacobian: ``gram`` (G = J J^T) and ``combine`` (sum_k w_k J[k]), with their fakes and
autograd. J is a list of chunks of shape (K, ...), arguments arrive validated."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import reference
from .registry import defined, has_kernel

if defined("gram"):

    @torch.library.register_fake("mtl_fast::gram")
    def _gram_fake(jac: List[Tensor]) -> Tensor:
        K = jac[0].shape[0]
        return jac[0].new_empty((K, K), dtype=torch.float64)

    @torch.library.register_fake("mtl_fast::combine")
    def _combine_fake(jac: List[Tensor], weights: Tensor) -> List[Tensor]:
        return [chunk.new_empty(chunk.shape[1:]) for chunk in jac]

    @torch.library.register_fake("mtl_fast::combine_into")
    def _combine_into_fake(jac: List[Tensor], weights: Tensor, out: List[Tensor]) -> None:
        return None

    # d<J_a, J_b>/dJ and d(sum_k w_k J_k) are plain matrix products, written with torch ops so that they are
    # differentiable again.
    def _gram_setup(ctx, inputs, output) -> None:
        (jac,) = inputs
        ctx.save_for_backward(*jac)

    def _gram_backward(ctx, grad: Tensor):
        jac = ctx.saved_tensors
        sym = grad + grad.mT
        return ([(sym.to(c.dtype) @ c.reshape(c.shape[0], -1)).reshape(c.shape) for c in jac],)

    def _combine_setup(ctx, inputs, output) -> None:
        jac, weights = inputs
        ctx.save_for_backward(weights, *jac)

    def _combine_backward(ctx, grads: List[Optional[Tensor]]):
        weights, *jac = ctx.saved_tensors
        grad_jac, grad_w = [], torch.zeros_like(weights)
        for chunk, g in zip(jac, grads):
            if g is None:
                grad_jac.append(torch.zeros_like(chunk))
                continue
            grad_jac.append((weights.to(chunk.dtype)[:, None] * g.reshape(1, -1)).reshape(chunk.shape))
            grad_w = grad_w + (chunk.reshape(chunk.shape[0], -1) @ g.reshape(-1).to(chunk.dtype)).to(weights.dtype)
        return grad_jac, grad_w

    torch.library.register_autograd("mtl_fast::gram", _gram_backward, setup_context=_gram_setup)
    torch.library.register_autograd("mtl_fast::combine", _combine_backward, setup_context=_combine_setup)


def gram(chunks: Sequence[Tensor]) -> Tensor:
    """G = J J^T in float64 over all chunks."""
    if has_kernel("gram", chunks[0].device.type):
        return torch.ops.mtl_fast.gram(list(chunks))
    return reference.gram(chunks)


def combine(chunks: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    """sum_k weights[k] * chunk[k] for every chunk, in the chunk's dtype."""
    if has_kernel("combine", chunks[0].device.type):
        return list(torch.ops.mtl_fast.combine(list(chunks), weights))
    return reference.combine(chunks, weights)


def combine_into(chunks: Sequence[Tensor], weights: Tensor, out: Sequence[Tensor]) -> None:
    """out[c] += sum_k weights[k] * chunks[c][k], in place."""
    if has_kernel("combine_into", chunks[0].device.type):
        torch.ops.mtl_fast.combine_into(list(chunks), weights, list(out))
        return
    for o, c in zip(out, reference.combine(chunks, weights)):
        o.add_(c)
