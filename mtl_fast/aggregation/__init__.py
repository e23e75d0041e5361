"""How the K task gradients of the shared parameters become one update: one module per method.

Every method is an :class:`Aggregator`. The Gram-based ones (all but GradDrop, TrimmedMean, ExcessMTL and MoCo) are
:class:`GramAggregator`\\ s holding a :class:`Weighting`, the map from the K x K Gram matrix G to the K weights of
the update sum_k w_k g_k; ``aggregator.weights(G)`` calls it, and any state the method keeps lives on the weighting.
"""
from ._qp import QP_REGULARIZATION, QP_TOLERANCE, solve_nonnegative_qp
from .aligned_mtl import AlignedMTL, AlignedMTLWeighting
from .bases import Aggregator, FixedWeighting, GramAggregator, SeededWeighting, Weighting
from .cagrad import CAGrad, CAGradWeighting
from .config import ConFIG, ConFIGWeighting
from .crmogm import CRMOGM, CRMOGMWeighting
from .dbmtl import DBMTL, DBMTLWeighting
from .excess_mtl import ExcessMTL
from .fairgrad import FairGrad, FairGradWeighting
from .constant import ConstantWeighting, Mean, MeanWeighting, Sum, SumWeighting, Weighted
from .dualproj import DualProj, DualProjWeighting
from .graddrop import GradDrop
from .gradvac import GradVac, GradVacWeighting
from .imtlg import IMTLG, IMTLGWeighting
from .krum import Krum, KrumWeighting
from .mgda import MGDA, MGDAWeighting
from .moco import MoCo
from .modo import MoDo, MoDoWeighting
from .nash_mtl import NashMTL, NashMTLWeighting
from .pcgrad import PCGrad, PCGradWeighting, draw_pcgrad_orders
from .random_weighting import Random, RandomWeighting
from .sdmgrad import SDMGrad, SDMGradWeighting
from .trimmed_mean import TrimmedMean
from .upgrad import UPGrad, UPGradWeighting

__all__ = [
    "Aggregator", "GramAggregator", "Weighting", "SeededWeighting", "FixedWeighting",
    "Sum", "Mean", "Weighted", "SumWeighting", "MeanWeighting", "ConstantWeighting",
    "PCGrad", "PCGradWeighting", "draw_pcgrad_orders",
    "MGDA", "MGDAWeighting", "DualProj", "DualProjWeighting", "UPGrad", "UPGradWeighting",
    "CAGrad", "CAGradWeighting", "IMTLG", "IMTLGWeighting", "GradVac", "GradVacWeighting",
    "AlignedMTL", "AlignedMTLWeighting", "NashMTL", "NashMTLWeighting", "GradDrop",
    "ConFIG", "ConFIGWeighting", "FairGrad", "FairGradWeighting", "SDMGrad", "SDMGradWeighting", "MoDo",
    "MoDoWeighting", "CRMOGM", "CRMOGMWeighting", "Krum", "KrumWeighting", "TrimmedMean", "ExcessMTL", "MoCo",
    "DBMTL", "DBMTLWeighting", "Random", "RandomWeighting",
    "QP_REGULARIZATION", "QP_TOLERANCE", "solve_nonnegative_qp",
]
