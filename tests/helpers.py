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
