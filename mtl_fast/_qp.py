"""The compiled nonnegative-QP ops (csrc/kernels/nonneg_qp.h) from Python: fake kernels and dispatchers.

``nonneg_qp`` is the batched solver behind :func:`mtl_fast.aggregators.solve_nonnegative_qp`; ``qp_weights`` is
the whole ``weights(G)`` of MGDA, DualProj and UPGrad in one op (normalisation, QPs and final weights).
``qp_weights`` returns None where no kernel serves G's device, and callers of ``nonneg_qp`` check
:func:`has_kernel`; either way they then take the torch-ops solver. Their arguments arrive validated; the
stopping rules ``max_iter`` and ``patience`` are the caller's (mtl_fast.aggregators defines them).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _ops


_DEVICES = _ops.kernel_devices("nonneg_qp")


def has_kernel(device_type: str) -> bool:
    """True when the compiled QP ops have kernels for this device type ('cpu', 'cuda')."""
    return device_type in _DEVICES


if _DEVICES:

    @torch.library.register_fake("mtl_fast::nonneg_qp")
    def _nonneg_qp_fake(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int, patience: int) -> Tensor:
        return q.new_empty(q.shape)

    @torch.library.register_fake("mtl_fast::qp_weights")
    def _qp_weights_fake(gram: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
                         max_iter: int, patience: int) -> Tensor:
        return gram.new_empty((gram.shape[0],), dtype=torch.float64)


def nonneg_qp(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int, patience: int) -> Tensor:
    """The (B, K) solutions of min_z 1/2 z^T M z + q_b^T z, z >= 0 (sum(z) = 1 when ``simplex``), in q's dtype."""
    return torch.ops.mtl_fast.nonneg_qp.default(M, q, simplex, tol, max_iter, patience)


def qp_weights(G: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float, max_iter: int,
               patience: int) -> Optional[Tensor]:
    """The (K,) float64 weights of ``method`` ('mgda', 'dualproj', 'upgrad') on G / trace(G) + regularization I,
    through the op, or None where G's device has no compiled kernel."""
    if G.device.type in _DEVICES:
        return torch.ops.mtl_fast.qp_weights.default(G, pref, method, regularization, tol, max_iter, patience)
    return None
