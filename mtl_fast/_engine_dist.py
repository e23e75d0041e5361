"""The Gram engine's communication under data parallelism (``GramEngine.backward(..., process_group=...)``).

The global task gradient of a shared parameter is the mean over the R ranks, g_k = (1/R) sum_r g_k^r, so its share
of the global Gram matrix has cross-rank terms. Per layer, the engine either all-reduces the layer's K formed
gradients (K x layer elements), or, for a ghost layer, all-gathers the factors (A, Delta): the global gradient of
the summed ranks is A_all^T Delta_all with the rows of every rank stacked, R_all x (d + K m) elements. It takes the
smaller (the ranks agree, since both counts are global). Every rank ends with the same bits: the gathered factors
and the reduced sums are the same everywhere, and the weights are rank 0's (:func:`~mtl_fast.distributed.
agreed_weights`).
"""
from __future__ import annotations

import zlib
from typing import List, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .distributed import world_size


class Ranks:
    """The collectives of one engine step over ``group``, with the bytes each plan would move.

    ``bytes`` counts, per rank, what the chosen plan received ('chosen') and what all-reducing every layer's K
    gradients would have ('all_reduce'), so that the two plans can be compared.
    """

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.size = world_size(group)
        self.bytes = {"chosen": 0, "all_reduce": 0}

    def agree(self, layout: Sequence, what: str) -> None:
        """Raises ValueError on every rank when the ranks' ``layout`` differs (a fingerprint, as (x, -x) under
        MAX: the maximum and minus the minimum)."""
        digest = zlib.crc32(repr(list(layout)).encode())
        both = torch.tensor([digest, -digest], dtype=torch.int64)
        dist.all_reduce(both, dist.ReduceOp.MAX, group=self.group)
        if both[0].item() != -both[1].item():
            raise ValueError(f"process_group: the ranks disagree on {what}; every rank must run the same model "
                             "with the same GramEngine and aggregator, and its losses must reach the same "
                             "parameters")

    def sum_(self, tensors: List[Tensor], alternative: bool = True) -> List[Tensor]:
        """Sums the tensors over the ranks, in place."""
        works = [dist.all_reduce(t, group=self.group, async_op=True) for t in tensors]
        for work in works:
            work.wait()
        moved = sum(t.numel() * t.element_size() for t in tensors)
        self.bytes["chosen"] += moved
        if alternative:
            self.bytes["all_reduce"] += moved
        return tensors

    def total_rows(self, rows: int) -> int:
        total = torch.tensor([rows], dtype=torch.int64)
        dist.all_reduce(total, group=self.group)
        return int(total.item())

    def gather_rows(self, A: Tensor, delta: Tensor, formed_bytes: int) -> Tuple[Tensor, Tensor]:
        """(A, Delta) of every rank with their rows stacked in rank order: (R_all, d) and (K, R_all, m)."""
        counts = torch.zeros(self.size, dtype=torch.int64)
        counts[dist.get_rank(self.group)] = A.shape[0]
        dist.all_reduce(counts, group=self.group)
        most = int(counts.max().item())
        # all_gather needs equal shapes: pad with zero rows, which add nothing to A^T Delta, then cut them off.
        A_pad = torch.zeros(most, A.shape[1], dtype=A.dtype, device=A.device)
        A_pad[: A.shape[0]] = A
        d_pad = torch.zeros(delta.shape[0], most, delta.shape[2], dtype=delta.dtype, device=delta.device)
        d_pad[:, : A.shape[0]] = delta
        As = [torch.empty_like(A_pad) for _ in range(self.size)]
        ds = [torch.empty_like(d_pad) for _ in range(self.size)]
        dist.all_gather(As, A_pad, group=self.group)
        dist.all_gather(ds, d_pad, group=self.group)
        row_bytes = A_pad.numel() * A_pad.element_size() + d_pad.numel() * d_pad.element_size()
        self.bytes["chosen"] += self.size * row_bytes
        self.bytes["all_reduce"] += formed_bytes
        n = counts.tolist()
        return (torch.cat([a[:c] for a, c in zip(As, n)]), torch.cat([d[:, :c] for d, c in zip(ds, n)], dim=1))
