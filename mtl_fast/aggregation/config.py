"""ConFIG (Liu et al. 2024): the conflict-free update, from the task gradients' cosines."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._checks import check_gram
from .._nonfinite import finite_or_zero, nan_unless
from ._utils import check_preference, symmetric_pinv_apply
from .bases import GramAggregator, Weighting

__all__ = ["ConFIG", "ConFIGWeighting"]


class ConFIGWeighting(Weighting):
    """ConFIG's weights from G (see :class:`ConFIG`).

    Args:
        pref: K non-negative preference weights p (default: 1 each).
    """

    def __init__(self, pref: Optional[Sequence[float]] = None) -> None:
        self.pref = check_preference(pref)

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = finite_or_zero(G.double())
        if self.pref is None:
            p = torch.ones(K, dtype=G.dtype, device=G.device)
        elif self.pref.numel() != K:
            raise ValueError(f"pref: has {self.pref.numel()} entries but there are {K} tasks")
        else:
            p = self.pref.to(G.device)
        norms = G.diagonal().clamp_min(0.0).sqrt()
        # A zero gradient has no unit vector: its row of U is 0, as in the official code (nan_to_num).
        inverse_norms = torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, 1.0), 0.0)
        cosines = inverse_norms[:, None] * G * inverse_norms[None, :]  # U U^T
        a = inverse_norms * symmetric_pinv_apply(cosines, p)  # v = U^+ p = J^T a
        squared_norm = a @ G @ a
        length = (G @ a).sum()  # sum_k g_k . v
        degenerate = squared_norm <= 0
        w = torch.where(degenerate, 0.0, length / torch.where(degenerate, 1.0, squared_norm)) * a
        return nan_unless(finite, w)

    def __repr__(self) -> str:
        return f"ConFIGWeighting(pref={None if self.pref is None else self.pref.tolist()})"


class ConFIG(GramAggregator):
    """ConFIG, "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks" (Liu et al., ICLR 2025;
    arXiv 2024), equation 2.

    With U the K unit gradients u_k = g_k / |g_k| (as rows) and p the preference vector, the direction is
    v = U^+ p (so that u_k . v = p_k for every task when the gradients are linearly independent: no task is
    left behind), and the update is its unit vector scaled by the summed projections,
    d = (sum_k g_k . v^) v^, v^ = v / |v|.

    In Gram form: U U^T is the cosine matrix C = D^-1 G D^-1 (D = diag |g_k|), v = J^T a with a = D^-1 C^+ p,
    so w = (1^T G a) / (a^T G a) a. C^+ is the eigendecomposition pseudo-inverse (eigenvalues below K eps max
    treated as 0, like IMTL-G), the minimum-norm least-squares solution TorchJD's torch.linalg.pinv(U) gives.
    A zero gradient has u_k = 0 (as in the official code); all-zero gradients, or a v orthogonal to every
    gradient, give weights 0. Scale invariant in G.

    Property: for linearly independent gradients and p > 0, g_k . d = |g_k| p_k |v|^-2 (sum_i g_i . v) > 0 for
    every task.

    Args:
        pref: K non-negative preference weights p (default: 1 each, as the paper and TorchJD).
    """

    def __init__(self, pref: Optional[Sequence[float]] = None) -> None:
        super().__init__(ConFIGWeighting(pref))
