"""The Gram engine's per-layer product ``mtl_fast::ghost_gram`` (csrc/cpu/engine_gram.cpp, its CUDA registration in
csrc/cuda/engine_gram.cpp): its fake and dispatcher. Arguments arrive validated."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .registry import defined, has_kernel

if defined("ghost_gram"):

    @torch.library.register_fake("mtl_fast::ghost_gram")
    def _ghost_gram_fake(A: Tensor, delta: Tensor) -> Tensor:
        K = delta.shape[0]
        return delta.new_empty((K, K), dtype=torch.float64)


def ghost_gram(A: Tensor, delta: Tensor) -> Tensor:
    """G (K, K) float64 with G_ij = <A^T delta_i, A^T delta_j>, for A (R, d) and delta (K, R, m)."""
    if has_kernel("ghost_gram", A.device.type):
        return torch.ops.mtl_fast.ghost_gram.default(A, delta)
    return reference.ghost_gram(A, delta)
