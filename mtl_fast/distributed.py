"""Communication for multi-task aggregation across the ranks of a ``torch.distributed`` process group.

:func:`mtl_fast.backward` with ``process_group=`` averages the K per-task gradients of the shared parameters over
the ranks *before* the Gram matrix, so that every rank applies PCGrad / MGDA / ... of the global-batch task
gradients (see docs/distributed.md). This module holds the parts that talk to the other ranks:

- :class:`GradientReducer`: per-task gradients packed row by row into flat (K, n) buffers, one per dtype and
  device, and summed over the ranks in buckets of at most :data:`BUCKET_BYTES` with asynchronous all-reduces;
  a bucket is sent as soon as it is packed, so the reduction of task k overlaps the backward of task k + 1;
- :func:`agreed_weights`: the aggregator's weights computed on every rank and replaced by those of the group's
  rank 0, so that random visiting orders (PCGrad, GradVac) can never make the ranks disagree;
- :class:`GlobalGram`: for :func:`mtl_fast.fork` under DistributedDataParallel, an aggregator whose weights come
  from the Gram matrix of the global batch (K x K numbers communicated per step).

Every rank must take part in every collective, in the same order and with the same buffer sizes: the reducer
therefore lays out *all* shared parameters on every rank (zeros where a rank's losses do not reach one), and
checks first, with one fixed-size collective, that the ranks agree on that layout.
"""
from __future__ import annotations

import zlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ._grad import accumulate_grads
from .aggregation import GramAggregator

__all__ = ["BUCKET_BYTES", "GradientReducer", "GlobalGram", "agreed_weights", "world_size"]

#: Upper bound on the bytes of one all-reduce (DDP's default bucket size); a parameter larger than this is sent
#: alone. Large buckets amortise the per-collective latency; several let packing overlap the communication.
BUCKET_BYTES = 25 * 2 ** 20


def world_size(group: dist.ProcessGroup) -> int:
    """The number of ranks in ``group`` (checked to be a usable process group)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group: torch.distributed is not initialised (call "
                           "torch.distributed.init_process_group first)")
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"process_group: expected a torch.distributed ProcessGroup (e.g. "
                        f"torch.distributed.group.WORLD), got {type(group).__name__}")
    return dist.get_world_size(group)


def agreed_weights(aggregator: GramAggregator, G: Tensor, group: dist.ProcessGroup) -> Tensor:
    """``aggregator.weights(G)`` as computed on the group's rank 0, on every rank.

    G is bitwise identical on every rank (it comes from all-reduced data), so with deterministic kernels and
    identically seeded aggregators the weights agree anyway; broadcasting K numbers makes agreement hold by
    construction, also for ``PCGrad(seed=None)`` and for ranks whose generators were seeded differently.
    """
    weights = aggregator.weights(G).clone(memory_format=torch.contiguous_format)  # never broadcast into a cache
    dist.broadcast(weights, group=group, group_src=0)
    return weights


class _FlatGroup:
    """Parameters of one dtype and device whose per-task gradients are the rows of one (rows, n) buffer."""

    def __init__(self, params: List[Tensor], rows: int) -> None:
        self.params = params
        sizes = [p.numel() for p in params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.buffer = torch.empty(rows, self.offsets[-1], dtype=params[0].dtype, device=params[0].device)
        self.bucket_ends = self._bucket_ends(sizes, params[0].element_size())

    def _bucket_ends(self, sizes: List[int], element_size: int) -> List[int]:
        """Column ends of the buckets: whole parameters, at most BUCKET_BYTES each unless one alone is larger."""
        ends, start = [], 0
        for i in range(len(sizes)):
            if (self.offsets[i + 1] - start) * element_size > BUCKET_BYTES and self.offsets[i] > start:
                ends.append(self.offsets[i])
                start = self.offsets[i]
        ends.append(self.offsets[-1])
        return ends


def _flat_groups(params: List[Tensor], rows: int) -> List[_FlatGroup]:
    by_kind: Dict[Tuple[torch.dtype, torch.device], List[Tensor]] = {}
    for p in params:
        by_kind.setdefault((p.dtype, p.device), []).append(p)
    return [_FlatGroup(ps, rows) for ps in by_kind.values()]


def _layout_digest(params: Sequence[Tensor]) -> int:
    """An order-sensitive fingerprint of dtypes and shapes, the same in every process (unlike hash())."""
    return zlib.crc32(repr([(str(p.dtype), tuple(p.shape)) for p in params]).encode())


class GradientReducer:
    """Sums the rows of per-task gradients over the ranks of ``group``, bucketed and asynchronous.

    Construct it, feed it every row with :meth:`add_row` (row k: one gradient per parameter this rank reaches,
    ``shared`` then ``others``, as soon as it exists), then read the sums with :meth:`shared_sums` and
    :meth:`other_sums` and write the combined gradients with :meth:`accumulate`. Nothing is written to any ``.grad``
    before every collective has completed, so a failed or timed-out collective leaves the gradients as they were.

    Args:
        shared: the shared parameters, identical (same order, shapes, dtypes) on every rank.
        reached: for each shared parameter, whether this rank's losses reach it; a parameter reached on some
            rank only is still communicated everywhere (as zeros elsewhere), one reached on none is left alone.
        others: the task-specific parameters the losses reach; must be the same list on every rank.
        rows: the number of gradient rows per shared parameter (K, or 1 for a weighted sum of the losses); the
            task-specific parameters' rows are summed locally and sent as one.
        group: the process group.
    Raises:
        ValueError on every rank (never on some only) when the ranks disagree on the layout.
    """

    def __init__(self, shared: List[Tensor], reached: List[bool], others: List[Tensor], rows: int,
                 group: dist.ProcessGroup) -> None:
        self.group = group
        self.world_size = world_size(group)
        self.rows = rows
        self._shared = _flat_groups(shared, rows)
        # Task-specific parameters only ever need the sum over the tasks: one row, summed before it is sent.
        self._others = _flat_groups(others, 1) if others else []
        self._unreached = {id(p) for p, r in zip(shared, reached) if not r}
        self._reached = torch.tensor(reached, dtype=torch.int32)
        self._shared_work: List[dist.Work] = []
        self._other_work: List[dist.Work] = []
        # Sent now, so its latency hides behind the first backward; read before the first bucket goes out.
        # Each number travels as (x, -x) under MAX, giving the maximum and minus the minimum over the ranks.
        summary = [rows, len(shared), sum(p.numel() for p in shared), len(others), sum(p.numel() for p in others),
                   _layout_digest(shared), _layout_digest(others)]
        self._layout = torch.tensor([v for x in summary for v in (x, -x)], dtype=torch.int64)
        self._layout_work: Optional[dist.Work] = dist.all_reduce(self._layout, dist.ReduceOp.MAX, group=group,
                                                                 async_op=True)
        self._reached_work: Optional[dist.Work] = None

    def _check_layout(self) -> None:
        self._layout_work.wait()
        self._layout_work = None
        high, low = self._layout[0::2], -self._layout[1::2]
        if not torch.equal(high, low):
            names = ["gradient rows (K, or 1 for Sum/Mean/Weighted)", "shared parameters", "shared elements",
                     "task-specific parameters reached by the losses", "task-specific elements",
                     "shared shapes/dtypes", "task-specific shapes/dtypes"]
            differ = [f"{n} (from {lo} to {hi})" for n, lo, hi in zip(names, low.tolist(), high.tolist()) if lo != hi]
            raise ValueError("process_group: the ranks disagree on " + "; ".join(differ) + ". Every rank must pass "
                             "the same shared_params and aggregator, and its losses must reach the same "
                             "task-specific parameters (no rank may skip a head)")
        # The reached flags' length is only safe to use once the ranks are known to agree on it.
        self._reached_work = dist.all_reduce(self._reached, dist.ReduceOp.MAX, group=self.group, async_op=True)

    def add_row(self, k: int, grads: Sequence[Tensor]) -> None:
        """Packs row k and sends each bucket once full.

        ``grads`` has one gradient per parameter this rank reaches (shared, then others), None where task k
        does not reach it; the slices of shared parameters without a gradient are zeroed here.
        """
        if self._layout_work is not None:
            self._check_layout()
        grads = iter(grads)
        for flat in self._shared:
            self._pack(flat, flat.buffer[k], grads, add=False, send_to=self._shared_work)
        last = k == self.rows - 1
        for flat in self._others:
            self._pack(flat, flat.buffer[0], grads, add=k > 0, send_to=self._other_work if last else None)

    def _pack(self, flat: _FlatGroup, row: Tensor, grads: Iterator[Tensor], add: bool,
              send_to: Optional[List[dist.Work]]) -> None:
        """Copies (or adds) the next gradients into ``row``; with ``send_to``, starts each bucket once packed."""
        start, ends = 0, iter(flat.bucket_ends)
        end = next(ends)
        for i, p in enumerate(flat.params):
            piece = row[flat.offsets[i]: flat.offsets[i + 1]]
            g = None if id(p) in self._unreached else next(grads)
            if g is None:
                if not add:
                    piece.zero_()
            elif add:
                piece.add_(g.reshape(-1))
            else:
                piece.copy_(g.reshape(-1))
            if send_to is not None and flat.offsets[i + 1] == end:
                send_to.append(dist.all_reduce(row[start:end], group=self.group, async_op=True))
                start, end = end, next(ends, None)

    def shared_sums(self) -> List[Tensor]:
        """The (rows, n) buffers of the shared gradients summed over the ranks, one per dtype and device.

        Raises:
            ValueError (on every rank) when no rank's losses reach any shared parameter.
        """
        self._reached_work.wait()
        if not self._reached.any():
            raise ValueError("shared_params: none of them is reached by the losses on any rank")
        for work in self._shared_work:
            work.wait()
        return [flat.buffer for flat in self._shared]

    def other_sums(self) -> List[Tensor]:
        """The (1, n) buffers of the task-specific gradients summed over the tasks and the ranks."""
        for work in self._other_work:
            work.wait()
        return [flat.buffer for flat in self._others]

    def accumulate(self, shared: List[Tensor], others: List[Tensor]) -> None:
        """Adds each parameter's slice of the combined flat gradients to its ``.grad`` (or makes it the grad).

        Shared parameters that no rank reaches keep their ``.grad``, as in a local backward. A new ``.grad`` is a
        view of the combined buffer, as with DDP's ``gradient_as_bucket_view``: no extra copy.
        """
        reached = iter(self._reached.bool().tolist())
        params, grads = [], []
        for flats, combined, is_shared in ((self._shared, shared, True), (self._others, others, False)):
            for flat, values in zip(flats, combined):
                for i, p in enumerate(flat.params):
                    if is_shared and not next(reached):
                        continue
                    params.append(p)
                    grads.append(values[flat.offsets[i]: flat.offsets[i + 1]].view_as(p))
        accumulate_grads(params, grads)


class GlobalGram(GramAggregator):
    """Wraps a Gram-based aggregator so that :func:`mtl_fast.fork` uses the Gram matrix of the global batch.

    Under DistributedDataParallel each rank's fork sees the feature gradients of its own samples only. At the
    representation level the global Jacobian is the ranks' Jacobians side by side (their samples are disjoint),
    each scaled by 1/R when the losses are per-rank means over equal local batches, so the global Gram is
    sum_r G_r / R^2: one all-reduce of K x K numbers. Each rank then combines its own feature gradients with the
    global weights and DDP's usual average of the trunk gradients completes exactly the update of one process on
    the whole batch. Only for ``fork``: :func:`mtl_fast.backward` rejects it (pass ``process_group`` there).

    Args:
        aggregator: a Gram-based aggregator (``PCGrad``, ``MGDA``, ``UPGrad``, ...).
        process_group: the group to agree over (e.g. ``torch.distributed.group.WORLD``, or DDP's group).
    """

    def __init__(self, aggregator: GramAggregator, process_group: dist.ProcessGroup) -> None:
        if not isinstance(aggregator, GramAggregator):
            raise TypeError(f"aggregator: GlobalGram needs a Gram-based aggregator (e.g. mtl_fast.PCGrad()), got "
                            f"{type(aggregator).__name__}")
        world_size(process_group)
        super().__init__(None)  # the weights are the wrapped aggregator's, on the global Gram
        self.aggregator = aggregator
        self.process_group = process_group

    def weights(self, G: Tensor) -> Tensor:
        total = G.double().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=self.process_group)
        return agreed_weights(self.aggregator, total / world_size(self.process_group) ** 2, self.process_group)

    def __repr__(self) -> str:
        return f"GlobalGram({self.aggregator!r})"
