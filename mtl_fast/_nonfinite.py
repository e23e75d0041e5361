"""The rule for a Gram matrix with a NaN or infinite entry (an overflowed or NaN gradient, as fp16 training under
AMP has now and then): every method that reads G returns all-NaN weights, which GradScaler detects, and a stateful
method keeps its state. The compiled ops apply it themselves (``gram_is_finite`` in csrc/kernels/common.h); the
torch-ops paths use these two functions. torch.where rather than a branch: no host synchronisation."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def finite_or_zero(G: Tensor) -> Tuple[Tensor, Tensor]:
    """(G, or zeros in its place when any entry is NaN or infinite; whether G was all finite, a 0-dim bool).

    A method computes on the zeroed G, which every one handles finitely (no solver failure), then
    :func:`nan_unless` marks the result."""
    finite = torch.isfinite(G).all()
    return torch.where(finite, G, torch.zeros_like(G)), finite


def nan_unless(finite: Tensor, values: Tensor) -> Tensor:
    """``values`` where ``finite`` (from :func:`finite_or_zero`) holds, else NaN of the same shape."""
    return torch.where(finite, values, torch.full_like(values, float("nan")))
