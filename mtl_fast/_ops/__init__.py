"""The op layer: the compiled ``torch.ops.mtl_fast.*`` operators where a kernel serves the tensors' device, their
:mod:`mtl_fast.reference` twins (same arguments, same contract) everywhere else.

- :mod:`.registry`: loading the extension, :func:`has_kernel`, :func:`backend`;
- :mod:`.linalg`: gram and combine, the two passes over a Jacobian;
- :mod:`.weights`: PCGrad, GradVac and the QPs, from the Gram matrix to weights;
- :mod:`.heads`: the fused heads' losses;
- :mod:`.ghost`: the Gram engine's per-layer product.

Each module registers its ops' fakes and autograd beside the wrappers that call them. Callers pass validated
arguments.
"""
from .ghost import ghost_gram
from .heads import heads_loss
from .linalg import combine, combine_into, gram
from .registry import (backend, backend_info, extension_error, has_kernel, kernels_built, needs_derivative,
                       reference_only)
from .weights import gradvac_weights, nonneg_qp, pcgrad_weights, qp_weights

__all__ = ["backend", "backend_info", "combine", "combine_into", "extension_error", "ghost_gram", "gradvac_weights",
           "gram",
           "has_kernel", "heads_loss", "kernels_built", "needs_derivative", "nonneg_qp", "pcgrad_weights",
           "qp_weights", "reference_only"]
