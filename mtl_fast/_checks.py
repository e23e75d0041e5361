"""Argument validation shared by the public functions: clear ValueError/TypeError naming the argument."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Jacobian = Union[Tensor, Sequence[Tensor]]
Losses = Union[Tensor, Sequence[Tensor]]


def as_chunks(J: Jacobian, name: str = "J") -> Tuple[List[Tensor], int, bool]:
    """Returns (chunks, K, was_a_single_tensor) for a (K, P) tensor or a sequence of (K, ...) tensors."""
    if isinstance(J, Tensor):
        if J.dim() != 2:
            raise ValueError(f"{name}: expected a (K, P) tensor or a sequence of (K, ...) tensors, "
                             f"got a tensor of shape {tuple(J.shape)}")
        chunks, single = [J], True
    elif isinstance(J, (list, tuple)):
        if len(J) == 0:
            raise ValueError(f"{name}: expected at least one (K, ...) tensor, got an empty sequence")
        for c, chunk in enumerate(J):
            if not isinstance(chunk, Tensor):
                raise TypeError(f"{name}[{c}]: expected a Tensor, got {type(chunk).__name__}")
            if chunk.dim() < 1:
                raise ValueError(f"{name}[{c}]: expected shape (K, ...), got a 0-d tensor")
        chunks, single = list(J), False
    else:
        raise TypeError(f"{name}: expected a Tensor or a sequence of Tensors, got {type(J).__name__}")
    K = chunks[0].shape[0]
    for c, chunk in enumerate(chunks):
        label = name if single else f"{name}[{c}]"
        if not chunk.dtype.is_floating_point:
            raise TypeError(f"{label}: expected a floating dtype, got {chunk.dtype}")
        if chunk.shape[0] != K:
            raise ValueError(f"{label}: has {chunk.shape[0]} tasks in dim 0 (shape {tuple(chunk.shape)}) but "
                             f"{name}[0] has {K}")
        if chunk.device != chunks[0].device:
            raise ValueError(f"{label}: is on {chunk.device} but {name}[0] is on {chunks[0].device}")
    if K < 1:
        raise ValueError(f"{name}: expected at least one task (K >= 1), got K = 0")
    return chunks, K, single


def check_task_weights(weights: Tensor, K: int, name: str = "weights") -> None:
    """A (K,) floating tensor of task weights."""
    if not isinstance(weights, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(weights).__name__}")
    if weights.dim() != 1 or weights.shape[0] != K:
        raise ValueError(f"{name}: expected shape ({K},), one weight per task, got {tuple(weights.shape)}")
    if not weights.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating dtype, got {weights.dtype}")


def check_gram(G: Tensor, name: str = "G") -> int:
    """A square (K, K) floating matrix; returns K."""
    if not isinstance(G, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(G).__name__}")
    shape = G.shape
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise ValueError(f"{name}: expected a square (K, K) matrix with K >= 1, got shape {tuple(shape)}")
    if not G.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype, got {G.dtype}")
    return shape[0]


def _all_real_numbers(values) -> bool:
    return isinstance(values, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in values)


def as_float_tensor(values, name: str) -> Tensor:
    """A 1-D, finite, floating tensor from a sequence or tensor of numbers (checked once, on construction)."""
    try:
        # Python numbers straight to float64: torch's default float32 would round 0.1 to 0.10000000149
        t = values if isinstance(values, Tensor) or not _all_real_numbers(values) else \
            torch.as_tensor(values, dtype=torch.float64)
        t = torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name}: expected a sequence of numbers or a 1-D tensor ({exc})") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if not (t.dtype.is_floating_point or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                      torch.uint8)):
        raise TypeError(f"{name}: expected real numbers, got dtype {t.dtype}")
    t = t.detach().to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: every value must be finite, got {t.tolist()}")
    return t


def check_number(value, name: str, *, low: float = float("-inf"), high: float = float("inf"),
                 low_open: bool = False, integer: bool = False):
    """A real (or int) argument within [low, high] ((low, high] when ``low_open``); returns it."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name}: expected {'an int' if integer else 'a real number'}, got {type(value).__name__}")
    if value != value or value < low or value > high or (low_open and value == low):
        bound = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"{name}: expected a value in {bound}, got {value}")
    return value


def stack_losses(losses: Losses, num_tasks: Optional[int] = None) -> Tensor:
    """The K scalar losses as a (K,) tensor (still attached to the graph)."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(f"losses: expected K scalar losses or a 1-D tensor, got shape {tuple(losses.shape)}")
        stacked = losses
    elif isinstance(losses, (list, tuple)) and losses:
        for k, loss in enumerate(losses):
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError(f"losses[{k}]: expected a scalar Tensor, got "
                                 f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
        stacked = torch.stack([loss.reshape(()) for loss in losses])
    else:
        raise TypeError(f"losses: expected a non-empty sequence of scalar tensors, got {type(losses).__name__}")
    if not stacked.dtype.is_floating_point:
        raise TypeError(f"losses: expected a floating dtype, got {stacked.dtype}")
    if num_tasks is not None and stacked.numel() != num_tasks:
        raise ValueError(f"losses: expected {num_tasks} losses (num_tasks), got {stacked.numel()}")
    return stacked
