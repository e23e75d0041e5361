"""The Gram engine's per-layer product ``mtl_fast::ghost_gram``: its fake, its dispatcher and its oracle.

For a layer whose task-k weight gradient is A^T delta_k (a Linear layer with input rows A, a Conv layer with its
unfolded input), ``ghost_gram(A, delta)`` is the (K, K) float64 Gram matrix of those K gradients computed as
<delta_i, (A A^T) delta_j>: the gradients themselves are never formed. The compiled kernels live in
csrc/cpu/engine_gram.cpp (and its CUDA registration); the torch path below runs where they do not.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _ops


def _has_ghost_kernel(device_type: str) -> bool:
    return _ops.has_kernel(device_type) and device_type in _ops.kernel_devices("ghost_gram")


if "cpu" in _ops.kernel_devices("ghost_gram"):
    @torch.library.register_fake("mtl_fast::ghost_gram")
    def _ghost_gram_fake(A: Tensor, delta: Tensor) -> Tensor:
        K = delta.shape[0]
        return delta.new_empty((K, K), dtype=torch.float64)


def _ghost_gram_torch(A: Tensor, delta: Tensor) -> Tensor:
    """The kernel's algorithm in torch ops: for installs and devices without it."""
    K = delta.shape[0]
    a, d = A.double(), delta.double()
    G = d.reshape(K, -1) @ (a @ a.T @ d).reshape(K, -1).T
    return (G + G.T) * 0.5


def ghost_gram(A: Tensor, delta: Tensor) -> Tensor:
    """G (K, K) float64 with G_ij = <A^T delta_i, A^T delta_j>, for A (R, d) and delta (K, R, m)."""
    if _has_ghost_kernel(A.device.type):
        return torch.ops.mtl_fast.ghost_gram(A, delta)
    return _ghost_gram_torch(A, delta)


def reference_ghost_gram(A: Tensor, delta: Tensor) -> Tensor:
    """The oracle: the K gradients A^T delta_k formed, flattened and multiplied, in float64."""
    grads = torch.einsum("rd,krm->kdm", A.double(), delta.double()).reshape(delta.shape[0], -1)
    return grads @ grads.T
