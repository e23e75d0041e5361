"""The compiled GradVac step (csrc/kernels/gradvac.h) from Python: its fake kernel and dispatcher.

The op has a CPU kernel; elsewhere :class:`mtl_fast.aggregators.GradVac` runs its torch-ops loop.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _ops

_DEVICES = _ops.kernel_devices("gradvac_weights")

if _DEVICES:

    @torch.library.register_fake("mtl_fast::gradvac_weights")
    def _gradvac_weights_fake(gram: Tensor, orders: Tensor, phi_hat: Tensor, beta: float) -> Tuple[Tensor, Tensor]:
        K = gram.shape[0]
        return gram.new_empty((K,), dtype=torch.float64), gram.new_empty((K, K), dtype=torch.float64)

    _GRADVAC_WEIGHTS = torch.ops.mtl_fast.gradvac_weights.default


def gradvac_weights(G: Tensor, orders: Tensor, phi_hat: Tensor, beta: float) -> Optional[Tuple[Tensor, Tensor]]:
    """One GradVac step: the (K,) float64 weights and the (K, K) float64 EMA targets after it, or None where G's
    device has no compiled kernel or a derivative through G will be asked for (the op has none). Arguments arrive
    validated."""
    if G.device.type in _DEVICES and not _ops.needs_derivative(G):
        return _GRADVAC_WEIGHTS(G, orders, phi_hat, beta)
    return None
