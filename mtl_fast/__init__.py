"""mtl_fast: a fast multi-task-learning backward for PyTorch.

Per-task gradients of the shared parameters are combined through their K x K Gram matrix with C++/CUDA
kernels: ``gram -> weights -> combine``, two passes over the Jacobian, no host synchronisation.
"""
from . import distributed, loss_weighting, nn, reference
from ._ops import backend
from .aggregators import (MGDA, IMTLG, AlignedMTL, Aggregator, CAGrad, DualProj, GradDrop, GradVac, GramAggregator,
                          Mean, NashMTL, PCGrad, Sum, UPGrad, Weighted)
from .backward import backward
from .engine import GramEngine
from .fork import fork
from .functional import aggregate, combine, gram

__version__ = "0.1.0"

__all__ = [
    "Aggregator", "GramAggregator", "Mean", "PCGrad", "Sum", "Weighted",
    "AlignedMTL", "CAGrad", "DualProj", "GradDrop", "GradVac", "IMTLG", "MGDA", "NashMTL", "UPGrad",
    "GramEngine", "aggregate", "backend", "backward", "combine", "distributed", "fork", "gram", "nn", "reference",
    "loss_weighting",
]
