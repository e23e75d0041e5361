"""The compiled nonnegative-QP ops (csrc/kernels/nonneg_qp.h) from Python: fake kernels and dispatchers.

``nonneg_qp`` is the batched solver behind :func:`mtl_fast.aggregators.solve_nonnegative_qp`; ``qp_weights`` is
the whole ``weights(G)`` of MGDA, DualProj and UPGrad in one op (normalisation, QPs and final weights), because at
K = 16 every extra torch op around the solve would cost more than the solve itself. ``qp_weights`` returns None
where no kernel serves G's device, and callers of ``nonneg_qp`` check :func:`has_kernel`; either way they then take
the torch-ops solver. Their arguments arrive validated. ``direct_cpu_weights`` (where ``"cpu" in _DEVICES``) is
the eager CPU fast path in front of them all: the CPU kernel itself, which declines what it does not serve.
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
    def _nonneg_qp_fake(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int) -> Tensor:
        return q.new_empty(q.shape)

    @torch.library.register_fake("mtl_fast::qp_weights")
    def _qp_weights_fake(gram: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
                         max_iter: int) -> Tensor:
        return gram.new_empty((gram.shape[0],), dtype=torch.float64)

    # The overloads themselves: resolving torch.ops.mtl_fast.<name> on every call costs about a microsecond.
    _NONNEG_QP = torch.ops.mtl_fast.nonneg_qp.default
    _QP_WEIGHTS = torch.ops.mtl_fast.qp_weights.default
    # direct_cpu_weights(G, pref, method, regularization, tol, max_iter or None): the same CPU kernel without the
    # dispatcher (csrc/python_module.cpp), called by the aggregators themselves: at K = 16 the dispatch costs more
    # than the whole solve, and a Python function in between a tenth of it. It returns NotImplemented for
    # anything but plain eager CPU tensors of a shape and dtype the op takes (fake, functional or vmapped tensors,
    # an active dispatch mode, a G that needs a gradient or carries a forward-mode tangent, malformed arguments):
    # the caller then checks its arguments and calls qp_weights. The profiler does not see this call.
    from ._C import qp_weights as direct_cpu_weights

    def _direct_cpu_weights_traced(G: Tensor, pref: Optional[Tensor], method: str, regularization: float,
                                   tol: float, max_iter: Optional[int]) -> Tensor:
        """What torch.compile traces in place of the direct call: it declines, so the graph records the op."""
        return NotImplemented

    if hasattr(torch.compiler, "substitute_in_graph"):  # torch >= 2.5
        torch.compiler.substitute_in_graph(direct_cpu_weights, skip_signature_check=True)(_direct_cpu_weights_traced)
    else:  # older torch: a Python check in front of the kernel (a little slower in eager mode)
        _kernel = direct_cpu_weights

        def direct_cpu_weights(G: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
                               max_iter: Optional[int]) -> Tensor:
            if torch.compiler.is_dynamo_compiling():
                return NotImplemented
            return _kernel(G, pref, method, regularization, tol, max_iter)


def nonneg_qp(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int) -> Tensor:
    """The (B, K) solutions of min_z 1/2 z^T M z + q_b^T z, z >= 0 (sum(z) = 1 when ``simplex``), in q's dtype."""
    return _NONNEG_QP(M, q, simplex, tol, max_iter)


def qp_weights(G: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
               max_iter: int) -> Optional[Tensor]:
    """The (K,) float64 weights of ``method`` ('mgda', 'dualproj', 'upgrad') on G / trace(G) + regularization I,
    through the op, or None where G's device has no compiled kernel."""
    if G.device.type in _DEVICES:
        return _QP_WEIGHTS(G, pref, method, regularization, tol, max_iter)
    return None
