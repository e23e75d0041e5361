"""The coordinate-wise trimmed mean (Yin et al. 2018). Elementwise, so not Gram-based."""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .._checks import check_number
from .bases import Aggregator

__all__ = ["TrimmedMean"]


class TrimmedMean(Aggregator):
    """The coordinate-wise trimmed mean, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates" (Yin et al., ICML 2018), Algorithm 1 (option II).

    For every coordinate, the ``trim_number`` largest and the ``trim_number`` smallest of the K task values are
    dropped and the remaining K - 2 trim_number averaged. Elementwise, so not Gram-based: it has no weights
    (:func:`mtl_fast.backward` returns None for it, and the Gram engine cannot run it); it works on the feature
    gradients of :func:`mtl_fast.fork` as on parameters. Half-precision inputs are averaged in float32. Same
    definition as TorchJD 0.18's.

    Args:
        trim_number: how many values to drop at each end, >= 0 (0: the mean); needs K >= 2 trim_number + 1.
    """

    def __init__(self, trim_number: int) -> None:
        self.trim_number = check_number(trim_number, "trim_number", low=0, integer=True)

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        K = chunks[0].shape[0]
        if K < 2 * self.trim_number + 1:
            raise ValueError(f"J: TrimmedMean with trim_number = {self.trim_number} needs at least "
                             f"{2 * self.trim_number + 1} tasks (2 trim_number + 1), got K = {K}")
        kept = K - 2 * self.trim_number
        out = []
        for chunk in chunks:
            ordered = chunk.sort(dim=0).values.narrow(0, self.trim_number, kept)
            out.append(ordered.to(torch.promote_types(chunk.dtype, torch.float32)).mean(0).to(chunk.dtype))
        return out

    def __repr__(self) -> str:
        return f"TrimmedMean(trim_number={self.trim_number})"
