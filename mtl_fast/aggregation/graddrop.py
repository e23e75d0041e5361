"""GradDrop (Chen et al. 2020): sign dropout per coordinate. Elementwise, so not Gram-based."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .._checks import as_float_tensor
from ._utils import DeviceGenerators
from .bases import Aggregator

__all__ = ["GradDrop"]


class GradDrop(Aggregator):
    """GradDrop, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout" (Chen et al.,
    NeurIPS 2020), Algorithm 1. Elementwise, so not Gram-based: it has no weights, and :func:`mtl_fast.backward`
    returns None for it.

    For every coordinate, the positive sign purity P = 1/2 (1 + sum_k g_k / sum_k |g_k|) (1/2 where all g_k are
    0) is compared with U ~ Uniform(0, 1) drawn per coordinate: where P > U only the positive entries g_k > 0 are
    kept, elsewhere only the negative ones; the update is the sum of what is kept, plus a ``leak`` fraction of
    every task's gradient: sum_k (leak_k + (1 - leak_k) mask_k) g_k. Meant for the gradients w.r.t. shared
    activations (use it with :func:`mtl_fast.fork`); at the parameter level it acts on each parameter entry.
    It runs as vectorised torch ops, one pass over each chunk: since the mask only depends on the sign, the sum
    splits into the (leak-weighted) positive and negative parts of the column sums.

    Args:
        leak: K values in [0, 1] (default 0: no leak).
        seed: seeds this aggregator's own generator (per device) for U; None uses torch's global one.
    """

    def __init__(self, leak: Optional[Sequence[float]] = None, seed: Optional[int] = None) -> None:
        self.leak = None if leak is None else as_float_tensor(leak, "leak")
        if self.leak is not None and ((self.leak < 0) | (self.leak > 1)).any():
            raise ValueError(f"leak: every value must be in [0, 1], got {self.leak.tolist()}")
        self.generators = DeviceGenerators(seed)

    def aggregate_chunks(self, J: List[Tensor]) -> List[Tensor]:
        K, device = J[0].shape[0], J[0].device
        if self.leak is not None and self.leak.numel() != K:
            raise ValueError(f"leak: has {self.leak.numel()} values but there are {K} tasks")
        generator = self.generators.get(device)
        out = []
        for chunk in J:
            dtype = torch.promote_types(chunk.dtype, torch.float32)  # half inputs: sums in fp32
            g = chunk.to(dtype)
            positive, negative = g.clamp_min(0.0), g.clamp_max(0.0)
            purity = 0.5 * (1.0 + (positive.sum(0) + negative.sum(0))
                            / (positive.sum(0) - negative.sum(0)).clamp_min(torch.finfo(dtype).tiny))
            draw = torch.rand(chunk.shape[1:], dtype=dtype, device=device, generator=generator)
            if self.leak is None:
                kept = torch.where(purity > draw, positive.sum(0), negative.sum(0))
            else:
                leak = self.leak.to(device=device, dtype=dtype).reshape((K,) + (1,) * (chunk.dim() - 1))
                kept = torch.where(purity > draw, ((1 - leak) * positive).sum(0), ((1 - leak) * negative).sum(0))
                kept = kept + (leak * g).sum(0)
            out.append(kept.to(chunk.dtype))
        return out

    def state_dict(self) -> Dict[str, object]:
        """The generators' state: a resumed seeded run draws what an uninterrupted one would."""
        return {"generators": self.generators.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.generators.load_state_dict(state["generators"])

    def __repr__(self) -> str:
        leak = None if self.leak is None else self.leak.tolist()
        return f"GradDrop(leak={leak}, seed={self.generators.seed})"
