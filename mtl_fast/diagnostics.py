"""Gradient-conflict diagnostics, read off the K x K Gram matrix G = J J^T and the weights an aggregator chose.

G already holds every pairwise inner product of the task gradients, so the norms, the cosines and each task's
directional derivative along the update cost K x K work and no pass over any gradient. Every function returns
tensors on G's device and never synchronises with the host: a training loop pays for the values only when it
reads them (``Diagnostics.to_dict()``, or a :class:`Monitor` writing a row every ``every`` steps).

A G with a NaN or infinite entry (an overflowed step, the one AMP's GradScaler skips) gives all-NaN norms,
cosines and directional derivatives, and no exception, like the aggregators' all-NaN weights.

    >>> import torch, mtl_fast as mf
    >>> from mtl_fast import diagnostics
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 4.0]])
    >>> diagnostics.cosine_matrix(G)
    tensor([[ 1.0000, -0.5000],
            [-0.5000,  1.0000]], dtype=torch.float64)
    >>> recorder = diagnostics.Recorder(mf.UPGrad())   # then mf.backward(..., aggregator=recorder)
"""
from __future__ import annotations

import csv as _csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, TextIO, Union

import torch
from torch import Tensor

from . import GramAggregator

__all__ = ["gradient_norms", "cosine_matrix", "conflicting_pairs", "directional_derivatives", "summary",
           "Diagnostics", "Recorder", "Monitor"]

PathLike = Union[str, "os.PathLike[str]"]


def _checked_gram(G: Tensor) -> Tensor:
    """G as float64 after checking it is a square floating (K, K) matrix, K >= 1."""
    if not isinstance(G, Tensor):
        raise TypeError(f"G: expected a Tensor, got {type(G).__name__}")
    if G.dim() != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 1:
        raise ValueError(f"G: expected a square (K, K) Gram matrix with K >= 1, got shape {tuple(G.shape)}")
    if not G.is_floating_point():
        raise TypeError(f"G: expected a floating dtype, got {G.dtype}")
    # float64 like the aggregators' weights: K x K values cost nothing, and the cosines of nearly parallel
    # gradients need the precision.
    return G.detach().double()


def _checked_weights(w: Tensor, G: Tensor) -> Tensor:
    """w as float64 after checking it is a floating (K,) vector on G's device."""
    if not isinstance(w, Tensor):
        raise TypeError(f"w: expected a Tensor, got {type(w).__name__}")
    if tuple(w.shape) != (G.shape[0],):
        raise ValueError(f"w: expected shape ({G.shape[0]},) (one weight per task of G), got {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"w: expected a floating dtype, got {w.dtype}")
    if w.device != G.device:
        raise ValueError(f"w: is on {w.device} but G is on {G.device}")
    return w.detach().double()


def _nan_unless_finite(G: Tensor, value: Tensor) -> Tensor:
    """``value``, or all NaN where G has a non-finite entry (decided on the device, without a sync)."""
    return torch.where(torch.isfinite(G).all(), value, torch.full_like(value, float("nan")))


def gradient_norms(G: Tensor) -> Tensor:
    """The (K,) float64 task-gradient norms |g_k| = sqrt(G_kk).

    Args:
        G: the (K, K) Gram matrix of the task gradients (any floating dtype).
    """
    G = _checked_gram(G)
    # clamp: rounding can leave a zero gradient's G_kk a hair below 0
    return _nan_unless_finite(G, G.diagonal().clamp_min(0.0).sqrt())


def _cosines(G: Tensor, norms: Tensor) -> Tensor:
    """cos(g_i, g_j) from a checked float64 G and its norms; 0 where either norm is 0."""
    positive = norms > 0
    safe = torch.where(positive, norms, 1.0)
    # dividing by each norm in turn rather than by their product, which can underflow for tiny gradients
    cosines = G / safe.unsqueeze(1) / safe.unsqueeze(0)
    # the two orders of division round differently: averaging makes the matrix exactly symmetric, and a
    # gradient's cosine with itself is exactly 1
    cosines = ((cosines + cosines.T) * 0.5).clamp(-1.0, 1.0)
    cosines = torch.where(torch.eye(G.shape[0], dtype=torch.bool, device=G.device), 1.0, cosines)
    both = positive.unsqueeze(1) & positive.unsqueeze(0)
    return _nan_unless_finite(G, torch.where(both, cosines, 0.0))


def cosine_matrix(G: Tensor) -> Tensor:
    """The (K, K) float64 matrix of cosines cos(g_i, g_j) = G_ij / (|g_i| |g_j|).

    Entries with a zero gradient are 0 (also on the diagonal), so a finite G never gives NaN.

    Args:
        G: the (K, K) Gram matrix of the task gradients.
    """
    G = _checked_gram(G)
    return _cosines(G, gradient_norms(G))


def _conflicts(cosines: Tensor) -> Tensor:
    return (cosines.triu(diagonal=1) < 0).sum()


def conflicting_pairs(G: Tensor) -> Tensor:
    """The number of task pairs i < j whose gradients conflict (negative cosine), a 0-dim int64 tensor.

    A G with a non-finite entry has NaN cosines, which count as no conflict.

    Args:
        G: the (K, K) Gram matrix of the task gradients.
    """
    return _conflicts(cosine_matrix(G))


def directional_derivatives(G: Tensor, w: Tensor) -> Tensor:
    """The (K,) float64 vector G w: entry k is g_k . d for the update d = sum_j w_j g_j.

    A positive entry means that a descent step along d (parameters -= lr * d) lowers task k's loss to first
    order; a negative one, that the update sacrifices task k.

    Args:
        G: the (K, K) Gram matrix of the task gradients.
        w: the (K,) weights of the update (what ``aggregator.weights(G)`` or ``mf.backward`` returned).
    """
    G = _checked_gram(G)
    return _nan_unless_finite(G, G @ _checked_weights(w, G))


@dataclass(frozen=True)
class Diagnostics:
    """One step's diagnostics, all tensors on G's device (reading them synchronises, nothing else does).

    Attributes:
        norms: (K,) task-gradient norms.
        cosines: (K, K) cosine matrix.
        conflicts: 0-dim int64, the pairs i < j with a negative cosine.
        weights: (K,) the weights the update applied.
        directional: (K,) each task's directional derivative along the update, G w.
    """

    norms: Tensor
    cosines: Tensor
    conflicts: Tensor
    weights: Tensor
    directional: Tensor

    @property
    def num_tasks(self) -> int:
        return self.norms.shape[0]

    def to_dict(self) -> Dict[str, object]:
        """Python floats and lists, for logging (one host sync for all the values)."""
        K = self.num_tasks
        norms, cosines, conflicts, weights, directional = _split(_flat(self).cpu().tolist(), K)
        return {"norms": norms, "cosines": [cosines[i * K:(i + 1) * K] for i in range(K)],
                "conflicts": int(conflicts), "weights": weights, "directional": directional}


def _flat(d: Diagnostics) -> Tensor:
    """Every value of ``d`` in one float64 vector (norms, cosines row by row, conflicts, weights, directional):
    one layout for reading them in a single copy and for summing steps."""
    return torch.cat([d.norms, d.cosines.reshape(-1), d.conflicts.reshape(1).double(), d.weights, d.directional])


def _split(flat, K: int):
    """The inverse of :func:`_flat` on a flat tensor or list: (norms, cosines row by row, conflicts, weights,
    directional)."""
    cosines_end = K + K * K
    return (flat[:K], flat[K:cosines_end], flat[cosines_end], flat[cosines_end + 1:cosines_end + 1 + K],
            flat[cosines_end + 1 + K:])


def summary(G: Tensor, w: Tensor) -> Diagnostics:
    """All the diagnostics of one step from its Gram matrix G and the weights w applied.

    Args:
        G: the (K, K) Gram matrix of the task gradients.
        w: the (K,) weights of the update.
    """
    norms = gradient_norms(G)
    cosines = _cosines(_checked_gram(G), norms)
    return Diagnostics(norms=norms, cosines=cosines, conflicts=_conflicts(cosines), weights=_checked_weights(w, G),
                       directional=directional_derivatives(G, w))


class Recorder(GramAggregator):
    """Wraps a Gram-based aggregator and records the diagnostics of every step it aggregates.

    ``mf.backward``, ``mf.fork`` and the Gram engine all call ``aggregator.weights(G)``, so passing a Recorder
    there makes the diagnostics of each step available with no change to them and no extra pass over the
    gradients. A fixed-weight aggregator (``Sum``, ``Weighted``) works too: wrapped, it is handed the real G
    (``mf.backward`` then forms the Jacobian, which it skips for a bare ``Sum``).

    Args:
        aggregator: the Gram-based aggregator whose weights are applied (e.g. ``mf.UPGrad()``).
        monitor: optional :class:`Monitor` that each step's diagnostics are also handed to.
    Attributes:
        aggregator: the wrapped aggregator (``state_dict()``, ``load_state_dict()`` and ``reset()`` are its).
        last: the last step's :class:`Diagnostics` (None before the first).
        steps: how many times the weights were computed.
    """

    def __init__(self, aggregator: GramAggregator, monitor: Optional["Monitor"] = None) -> None:
        if not isinstance(aggregator, GramAggregator):
            raise TypeError(f"aggregator: Recorder needs a Gram-based aggregator (an mtl_fast.GramAggregator such "
                            f"as mtl_fast.UPGrad()); {type(aggregator).__name__} does not combine the gradients "
                            "through their Gram matrix")
        if monitor is not None and not isinstance(monitor, Monitor):
            raise TypeError(f"monitor: expected an mtl_fast.diagnostics.Monitor, got {type(monitor).__name__}")
        super().__init__()
        self.aggregator = aggregator
        self.monitor = monitor
        self.last: Optional[Diagnostics] = None
        self.steps = 0

    def weights(self, G: Tensor) -> Tensor:
        """The wrapped aggregator's weights for G; records their :class:`Diagnostics` in ``last``."""
        w = self.aggregator.weights(G)
        self.last = summary(G, w)
        self.steps += 1
        if self.monitor is not None:
            self.monitor.update(self.last)
        return w

    def state_dict(self) -> Dict[str, object]:
        """The wrapped aggregator's state, so that a checkpoint does not depend on the wrapping."""
        return self.aggregator.state_dict()

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores the wrapped aggregator's state."""
        self.aggregator.load_state_dict(state)

    def reset(self) -> None:
        """Resets the wrapped aggregator; the diagnostics recorded so far stay."""
        self.aggregator.reset()

    def __repr__(self) -> str:
        return f"Recorder({self.aggregator!r})"


class Monitor:
    """Aggregates :class:`Diagnostics` over training steps and writes their means to CSV, JSONL, TensorBoard.

    Every ``every`` steps it writes one row: the means over the steps since the previous row of the conflicts,
    every task's gradient norm, weight and directional derivative, and every pair's cosine. Columns: ``step``
    (steps seen so far), ``skipped`` (steps in the row with a non-finite value, e.g. an overflowed AMP step,
    left out of the means; a row of skipped steps only has NaN means), ``conflicts``, ``norm_k``, ``weight_k``,
    ``directional_k`` and ``cosine_i_j`` (i < j). Between rows, :meth:`update` only adds tensors on the device;
    values are read (one host sync) when a row is written.

    Args:
        csv: path of a CSV file to write the rows to (overwritten).
        jsonl: path of a JSON-lines file to write the rows to, one object per row (overwritten).
        tensorboard: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with its ``add_scalar``, e.g. a
            Lightning TensorBoardLogger's ``experiment``), or a log directory to open one in.
        every: write a row every this many steps (>= 1).
        prefix: TensorBoard tag prefix (tags are ``prefix/column``).
    Attributes:
        rows: the rows written so far (dicts of floats), also what :meth:`plot` draws.
        steps: the number of steps seen.

    Use it as a context manager, or call :meth:`close`, so that the last partial window is written too.
    """

    def __init__(self, *, csv: Optional[PathLike] = None, jsonl: Optional[PathLike] = None, tensorboard=None,
                 every: int = 1, prefix: str = "mtl_fast") -> None:
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"every: expected an int, got {type(every).__name__}")
        if every < 1:
            raise ValueError(f"every: expected at least 1, got {every}")
        self.every = every
        self.prefix = prefix
        self.rows: List[Dict[str, float]] = []
        self.steps = 0
        self._tensorboard, self._owns_tensorboard = _summary_writer(tensorboard)
        self._csv_file: Optional[TextIO] = None if csv is None else open(csv, "w", newline="")
        self._jsonl_file: Optional[TextIO] = None if jsonl is None else open(jsonl, "w")
        self._csv_writer = None
        self._num_tasks: Optional[int] = None
        self._columns: Dict[str, int] = {}
        # sums of the finite steps' flat values (see _flat) and their counts, on the device: since the last row,
        # and since the start
        self._window_sum: Optional[Tensor] = None
        self._window_count: Optional[Tensor] = None
        self._total_sum: Optional[Tensor] = None
        self._total_count: Optional[Tensor] = None
        self._window_steps = 0

    def update(self, diagnostics: Diagnostics) -> None:
        """Adds one step's diagnostics; writes a row when ``every`` steps have gathered."""
        if not isinstance(diagnostics, Diagnostics):
            raise TypeError(f"diagnostics: expected an mtl_fast.diagnostics.Diagnostics, got "
                            f"{type(diagnostics).__name__}")
        if self._num_tasks is None:
            self._start(diagnostics)
        elif diagnostics.num_tasks != self._num_tasks:
            raise ValueError(f"diagnostics: has {diagnostics.num_tasks} tasks but this Monitor has seen "
                             f"{self._num_tasks}")
        flat = _flat(diagnostics).to(self._window_sum.device)
        finite = torch.isfinite(flat).all()
        kept = torch.where(finite, flat, 0.0)
        self._window_sum += kept
        self._window_count += finite
        self._total_sum += kept
        self._total_count += finite
        self.steps += 1
        self._window_steps += 1
        if self._window_steps == self.every:
            self._write_row()

    def mean(self) -> Diagnostics:
        """The means over every finite step so far, as device tensors (``conflicts`` is a float64 mean, and
        ``cosines`` the mean cosine matrix); NaN before the first finite step."""
        if self._num_tasks is None:
            raise ValueError("mean: no step has been recorded yet")
        K = self._num_tasks
        norms, cosines, conflicts, weights, directional = _split(self._total_sum / self._total_count, K)
        return Diagnostics(norms=norms, cosines=cosines.reshape(K, K), conflicts=conflicts, weights=weights,
                           directional=directional)

    def flush(self) -> None:
        """Writes a row for the steps since the last row, if there are any."""
        if self._window_steps:
            self._write_row()
        for file in (self._csv_file, self._jsonl_file):
            if file is not None:
                file.flush()
        if self._tensorboard is not None and hasattr(self._tensorboard, "flush"):
            self._tensorboard.flush()

    def close(self) -> None:
        """Flushes, then closes the files (and the SummaryWriter this Monitor opened)."""
        self.flush()
        for file in (self._csv_file, self._jsonl_file):
            if file is not None:
                file.close()
        self._csv_file = self._jsonl_file = None
        if self._owns_tensorboard:
            self._tensorboard.close()
        self._tensorboard = None

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def plot(self, path: PathLike) -> None:
        """Saves a figure of the rows: cosines per pair, gradient norms and weights per task over the steps,
        and the mean cosine matrix. Needs matplotlib (``pip install matplotlib``)."""
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError("Monitor.plot needs matplotlib: pip install matplotlib") from error
        self.flush()
        if not self.rows:
            raise ValueError("plot: no step has been recorded yet")
        K = self._num_tasks
        steps = [row["step"] for row in self.rows]
        figure = Figure(figsize=(14, 3.6), layout="constrained")
        axes = figure.subplots(1, 4)
        panels = [("cosine between task gradients", [(f"cosine_{i}_{j}", f"tasks {i}, {j}")
                                                    for i in range(K) for j in range(i + 1, K)]),
                  ("gradient norm", [(f"norm_{k}", f"task {k}") for k in range(K)]),
                  ("weight", [(f"weight_{k}", f"task {k}") for k in range(K)])]
        for ax, (title, series) in zip(axes, panels):
            for column, label in series:
                ax.plot(steps, [row[column] for row in self.rows], label=label)
            ax.set_title(title)
            ax.set_xlabel("step")
            if series:
                ax.legend(fontsize="small")
        axes[0].axhline(0.0, color="grey", linewidth=0.8)
        image = axes[3].imshow(self.mean().cosines.cpu().numpy(), vmin=-1.0, vmax=1.0, cmap="RdBu")
        axes[3].set_title("mean cosine matrix")
        axes[3].set_xticks(range(K))
        axes[3].set_yticks(range(K))
        figure.colorbar(image, ax=axes[3])
        figure.savefig(path)

    def _start(self, diagnostics: Diagnostics) -> None:
        K = diagnostics.num_tasks
        self._num_tasks = K
        zeros = torch.zeros_like(_flat(diagnostics))
        count = torch.zeros((), dtype=torch.float64, device=zeros.device)
        self._window_sum, self._total_sum = zeros, zeros.clone()
        self._window_count, self._total_count = count, count.clone()
        # column -> index into the flat layout of _flat; each pair's cosine once (the matrix is symmetric with a
        # unit diagonal)
        conflicts = K + K * K
        self._columns = {"conflicts": conflicts}
        self._columns.update((f"norm_{k}", k) for k in range(K))
        self._columns.update((f"weight_{k}", conflicts + 1 + k) for k in range(K))
        self._columns.update((f"directional_{k}", conflicts + 1 + K + k) for k in range(K))
        self._columns.update((f"cosine_{i}_{j}", K + i * K + j) for i in range(K) for j in range(i + 1, K))

    def _write_row(self) -> None:
        values = torch.cat([self._window_sum / self._window_count, self._window_count.reshape(1)]).cpu().tolist()
        row: Dict[str, float] = {"step": self.steps, "skipped": self._window_steps - int(values[-1])}
        row.update((name, values[index]) for name, index in self._columns.items())
        self._window_sum.zero_()
        self._window_count.zero_()
        self._window_steps = 0
        self.rows.append(row)
        if self._csv_file is not None:
            if self._csv_writer is None:
                self._csv_writer = _csv.DictWriter(self._csv_file, fieldnames=list(row))
                self._csv_writer.writeheader()
            self._csv_writer.writerow(row)
        if self._jsonl_file is not None:
            self._jsonl_file.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            for name, value in row.items():
                if name != "step":
                    self._tensorboard.add_scalar(f"{self.prefix}/{name}", value, row["step"])


def _summary_writer(tensorboard):
    """(writer, whether this Monitor opened it) for the ``tensorboard`` argument."""
    if tensorboard is None:
        return None, False
    if hasattr(tensorboard, "add_scalar"):
        return tensorboard, False
    if not isinstance(tensorboard, (str, os.PathLike)):
        raise TypeError(f"tensorboard: expected a SummaryWriter or a log directory, got {type(tensorboard).__name__}")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError("tensorboard: writing to TensorBoard needs the tensorboard package: "
                          "pip install tensorboard") from error
    return SummaryWriter(log_dir=os.fspath(tensorboard)), True
