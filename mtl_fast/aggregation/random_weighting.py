"""Random weights (RLW at the gradient level, Lin et al. 2022)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._checks import check_gram
from .._nonfinite import nan_unless
from .bases import GramAggregator, SeededWeighting

__all__ = ["Random", "RandomWeighting"]


class RandomWeighting(SeededWeighting):
    """w = softmax(z), z ~ N(0, I_K), drawn on G's device (see :class:`Random`).

    Args:
        seed: seeds this weighting's generator (one per device); None: torch's global one.
    """


    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        z = torch.randn(K, dtype=torch.float64, device=G.device, generator=self.generators.get(G.device))
        return nan_unless(torch.isfinite(G).all(), torch.softmax(z, 0))

    def __repr__(self) -> str:
        return f"RandomWeighting(seed={self.generators.seed})"


class Random(GramAggregator):
    """Random weighting of the gradients, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning" (Lin et al., TMLR 2022), Algorithm 2 (RGW): each step w = softmax(z), z ~ N(0, I_K);
    the weights sum to 1. The weights ignore G's values, but a G with a NaN or infinite entry still gives
    all-NaN weights, like every Gram-based method; the generator advances on such a step all the same (keeping
    it would need a host sync, and the next draw is as random either way). For the same method at loss level,
    see :class:`mtl_fast.loss_weighting.RLW`. Deviation from TorchJD 0.18: its draw is in G's dtype from
    torch's global generator; here float64 from this object's own (seeded) one.

    Args:
        seed: seeds this aggregator's generator (one per device); None: torch's global one.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        super().__init__(RandomWeighting(seed))
