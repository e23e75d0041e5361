"""Hand-written oracles and data makers shared by the tests."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from mtl_fast.models import MultiTaskNet


def random_chunks(K: int, shapes: Sequence[tuple], dtype=torch.float32, scale: float = 1.0) -> List[Tensor]:
    """Chunks of shape (K, *s) whose rows have different norms, at an overall scale."""
    row_scale = torch.logspace(-1, 1, K, dtype=torch.float64).view(K, *([1]))
    chunks = []
    for s in shapes:
        c = torch.randn(K, *s, dtype=torch.float64) * row_scale.view(K, *([1] * len(s))) * scale
        chunks.append(c.to(dtype))
    return chunks


def pcgrad_by_hand(flat: Sequence[Tensor], orders: Tensor) -> Tensor:
    """PCGrad on flattened gradient vectors: Algorithm 1 of Yu et al. 2020, the sum of the projections."""
    flat = [f.double() for f in flat]
    total = torch.zeros_like(flat[0])
    for i, g_i in enumerate(flat):
        g = g_i.clone()
        for j in orders[i].tolist():
            dot = g @ flat[j]
            if dot < 0:
                g = g - dot / (flat[j] @ flat[j]) * flat[j]
        total += g
    return total


def origin_batch(K: int = 3, batch: int = 8, seed: int = 0):
    """The origin document's network with K 10-class heads and a random batch."""
    torch.manual_seed(seed)
    model = MultiTaskNet([10] * K).double()
    x = torch.randn(batch, 3, 28, 28, dtype=torch.float64)
    ys = [torch.randint(0, 10, (batch,)) for _ in range(K)]
    return model, x, ys


def grads_of(params) -> List[Tensor]:
    return [None if p.grad is None else p.grad.clone() for p in params]


def without_compiled_kernel(monkeypatch, module):
    """A runner that calls fn(*args) with ``module``'s compiled op switched off (its ``_DEVICES`` emptied), as on a
    device or install without it: the torch-ops path the kernel is checked against."""
    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(module, "_DEVICES", frozenset())
            return fn(*args, **kwargs)
    return run
