"""Hand-written oracles and data makers shared by the tests."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from mtl_fast import _ops
from mtl_fast.apps.models import MultiTaskNet


def random_chunks(K: int, shapes: Sequence[tuple], dtype=torch.float32, scale: float = 1.0) -> List[Tensor]:
    """Chunks of shape (K, *s) whose rows have different norms, at an overall scale."""
    row_scale = torch.logspace(-1, 1, K, dtype=torch.float64).view(K, *([1]))
    chunks = []
    for s in shapes:
        c = torch.randn(K, *s, dtype=torch.float64) * row_scale.view(K, *([1] * len(s))) * scale
        chunks.append(c.to(dtype))
    return chunks


def cuda_gram_rtol(dtype: torch.dtype, scale: float = 1.0) -> float:
    """Tolerance of the CUDA gram against the float64 reference, relative to |g_a| |g_b|: float64 input takes
    float64 products (other sums than the reference's: 1e-12); narrower input takes float32 ones where the range
    rule of csrc/kernels/common.h allows (sums of at most 128 of them: 2e-6, as the CPU kernel's float32 tiles),
    and float64 ones again for rows out of its range (gradients near 1e+-30)."""
    in_float32_range = 2.0 ** -48 <= scale <= 2.0 ** 50
    return 2e-6 if dtype != torch.float64 and in_float32_range else 1e-12


def origin_batch(K: int = 3, batch: int = 8, seed: int = 0):
    """The classic MTL network with K 10-class heads and a random batch."""
    torch.manual_seed(seed)
    model = MultiTaskNet([10] * K).double()
    x = torch.randn(batch, 3, 28, 28, dtype=torch.float64)
    ys = [torch.randint(0, 10, (batch,)) for _ in range(K)]
    return model, x, ys


def grads_of(params) -> List[Tensor]:
    return [None if p.grad is None else p.grad.clone() for p in params]


def on_reference_path(fn, *args, **kwargs):
    """fn(*args, **kwargs) with every compiled op switched off, as on a device or install without them: the
    torch-ops path the kernels are checked against."""
    with _ops.reference_only():
        return fn(*args, **kwargs)
