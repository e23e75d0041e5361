"""The coordinate-wise trimmed mean (Yin et al. 2018). Elementwise, so not Gram-based."""
from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import torch
from torch import Tensor

from .._checks import check_number
from .bases import Aggregator

__all__ = ["TrimmedMean", "sort_rows", "NETWORK_MIN_ROW"]

#: Rows at least this long are ordered by :func:`sort_rows`; shorter ones by torch.sort, where the network's
#: O(K log^2 K) op calls would cost more than the strided sort (at K = 64, 256-entry rows: 6 ms against 2 ms).
NETWORK_MIN_ROW = 4096


@lru_cache(maxsize=None)
def bitonic_layers(n: int) -> Tuple[Tuple[Tuple[int, ...], Tuple[int, ...]], ...]:
    """Batcher's bitonic sorting network for n (a power of 2) rows: per layer, the rows that receive the minimum
    and those that receive the maximum of each compared pair (every row in exactly one pair)."""
    layers = []
    size = 2
    while size <= n:
        stride = size // 2
        while stride >= 1:
            low, high = [], []
            for i in range(n):
                partner = i ^ stride
                if partner > i:
                    ascending = (i & size) == 0
                    low.append(i if ascending else partner)
                    high.append(partner if ascending else i)
            layers.append((tuple(low), tuple(high)))
            stride //= 2
        size *= 2
    return tuple(layers)


def sort_rows(x: Tensor) -> List[Tensor]:
    """The K rows of x (K, ...) sorted coordinate by coordinate (row 0 the smallest), by a bitonic network of
    elementwise min/max over whole rows: O(K log^2 K) torch ops, each one pass over a row, where torch.sort along
    dim 0 gathers each coordinate's K values with a stride (on one CPU thread the network is 5-80x faster for
    rows of 20k-420k entries; for rows of ~100 entries its op calls make it slower). The rows are padded to a
    power of 2 with +inf, which sorts last: a comparison with padding only moves rows. Every comparison of a NaN
    gives NaN on both sides, so a NaN is not sorted away as torch.sort would put it last."""
    K = x.shape[0]
    n = 1 << (K - 1).bit_length()
    rows: List[Tensor] = list(x.unbind(0)) + [x.new_full(x.shape[1:], float("inf"))] * (n - K)
    padded = [k >= K for k in range(n)]
    for low, high in bitonic_layers(n):
        for i, j in zip(low, high):
            if padded[i] and padded[j]:
                continue
            if padded[i] or padded[j]:  # min(a, inf) = a: the real row goes low, the padding high
                real, pad = (j, i) if padded[i] else (i, j)
                rows[i], rows[j] = rows[real], rows[pad]
                padded[i], padded[j] = False, True
            else:
                rows[i], rows[j] = torch.minimum(rows[i], rows[j]), torch.maximum(rows[i], rows[j])
    return rows[:K]


class TrimmedMean(Aggregator):
    """The coordinate-wise trimmed mean, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates" (Yin et al., ICML 2018), Algorithm 1 (option II).

    For every coordinate, the ``trim_number`` largest and the ``trim_number`` smallest of the K task values are
    dropped and the remaining K - 2 trim_number averaged. Elementwise, so not Gram-based: it has no weights
    (:func:`mtl_fast.backward` returns None for it, and the Gram engine cannot run it); it works on the feature
    gradients of :func:`mtl_fast.fork` as on parameters. Half-precision inputs are averaged in float32. The
    values are ordered by :func:`sort_rows` (torch.sort for chunks with rows shorter than 4096 entries). Same
    definition as TorchJD 0.18's, except for a NaN: on rows of 4096 entries or more it makes its coordinate NaN
    (so AMP's GradScaler sees the overflowed step), where a sort puts it last and may trim it away (as on
    shorter rows).

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
            dtype = torch.promote_types(chunk.dtype, torch.float32)
            if self.trim_number == 0:
                rows = chunk.unbind(0)
            elif chunk[0].numel() >= NETWORK_MIN_ROW:
                rows = sort_rows(chunk)[self.trim_number: K - self.trim_number]
            else:
                rows = chunk.sort(dim=0).values[self.trim_number: K - self.trim_number].unbind(0)
            out.append((sum(row.to(dtype) for row in rows) / kept).to(chunk.dtype))
        return out

    def __repr__(self) -> str:
        return f"TrimmedMean(trim_number={self.trim_number})"
