"""What ExcessMTL and MoCo share: state shaped like the Jacobian's chunks (K x P in all), carried across steps."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


def state_dtype(chunk: Tensor) -> torch.dtype:
    """The dtype a chunk's running state is kept in: at least float32, so half-precision sums do not stall."""
    return torch.promote_types(chunk.dtype, torch.float32)


def check_state_shapes(state: Optional[List[Tensor]], chunks: List[Tensor], method: str) -> bool:
    """Whether ``state`` (None before the first step) matches the chunks' shapes; a different Jacobian layout
    would silently mix unrelated coordinates, so it raises instead."""
    if state is None:
        return False
    if [tuple(s.shape) for s in state] != [tuple(c.shape) for c in chunks]:
        raise ValueError(f"J: {method} holds state for chunks of shapes {[tuple(s.shape) for s in state]} but got "
                         f"{[tuple(c.shape) for c in chunks]}; call reset() before changing the model or K")
    return True


def keep_where(finite: Tensor, new: List[Tensor], old: List[Tensor]) -> List[Tensor]:
    """``new`` where the step was finite, else ``old``, chunk by chunk."""
    return [torch.where(finite, n, o) for n, o in zip(new, old)]
