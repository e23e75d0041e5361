"""mtl_fast: a fast multi-task-learning backward for PyTorch.

Per-task gradients of the shared parameters are combined through their K x K Gram matrix with C++/CUDA
kernels: ``gram -> weights -> combine``, two passes over the Jacobian, no host synchronisation.
"""
from . import aggregation, diagnostics, distributed, engine, loss_weighting, nn, reference
from ._ops import backend, backend_info
from .aggregation import (CRMOGM, DBMTL, MGDA, IMTLG, AlignedMTL, Aggregator, CAGrad, ConFIG, DualProj, ExcessMTL,
                          FairGrad, GradDrop, GradVac, GramAggregator, Krum, Mean, MoCo, MoDo, NashMTL, PCGrad, Random,
                          SDMGrad, Sum, TrimmedMean, UPGrad, Weighted, Weighting)
from .backward import backward
from .engine import GramEngine
from .fork import fork
from .functional import aggregate, combine, gram

__version__ = "0.1.0"

__all__ = [
    "Aggregator", "GramAggregator", "Weighting", "Mean", "PCGrad", "Sum", "Weighted", "diagnostics",
    "AlignedMTL", "CAGrad", "DualProj", "GradDrop", "GradVac", "IMTLG", "MGDA", "NashMTL", "UPGrad",
    "ConFIG", "CRMOGM", "DBMTL", "ExcessMTL", "FairGrad", "Krum", "MoCo", "MoDo", "Random", "SDMGrad", "TrimmedMean",
    "GramEngine", "aggregate", "aggregation", "backend", "backend_info", "backward", "combine", "distributed",
    "engine", "fork", "gram", "loss_weighting", "nn", "reference",
]
