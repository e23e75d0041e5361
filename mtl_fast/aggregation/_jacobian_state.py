"""What ExcessMTL and MoCo share: state shaped like the Jacobian's chunks (K x P in all), carried across steps.

A step writes its candidate state into a spare set of buffers and then commits it (:func:`commit`); the buffers
are kept, so that a step allocates nothing of size K x P. The state is never differentiated through: it is
built from the detached Jacobian, so that no step's autograd graph lives on in it."""
from __future__ import annotations

from typing import List, Optional, Tuple

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


def zero_state(chunks: List[Tensor]) -> List[Tensor]:
    """Zeros shaped like the chunks, in the state dtype."""
    return [torch.zeros(c.shape, dtype=state_dtype(c), device=c.device) for c in chunks]


def spare_buffers(state: List[Tensor]) -> List[Tensor]:
    """Uninitialised buffers laid out like ``state``, for a step's candidate state or its scratch."""
    return [torch.empty_like(s) for s in state]


def commit(finite: Tensor, new: List[Tensor], state: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    """The state after a step, and the spare buffers: ``new`` if the step was finite, else ``state`` as it was.

    On the CPU the flag is read and the two sets of buffers swap; on another device reading it would be a host
    sync, so one ``torch.where`` writes ``new`` into ``state`` where the step was finite, which costs a pass over
    K x P instead."""
    if finite.device.type == "cpu":
        return (new, state) if bool(finite) else (state, new)
    for n, s in zip(new, state):
        torch.where(finite, n, s, out=s)
    return state, new
