"""The pure-PyTorch oracle: every operation written straight from its definition, slow and obvious.

It is what the tests compare the kernels against, and the implementation mtl_fast falls back to when its
C++ extension is not available (``mtl_fast.backend() == 'python'``). No Python branch depends on a tensor's
value, so it never synchronises with a GPU and torch.compile can trace it.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

__all__ = ["gram", "combine", "pcgrad_weights", "pcgrad"]


def _rows(chunk: Tensor) -> Tensor:
    return chunk.reshape(chunk.shape[0], -1)


def gram(chunks: Sequence[Tensor]) -> Tensor:
    """G = J J^T in float64, J being the chunks' rows laid side by side: G[a, b] = sum_c <J_c[a], J_c[b]>."""
    K = chunks[0].shape[0]
    G = torch.zeros(K, K, dtype=torch.float64, device=chunks[0].device)
    for chunk in chunks:
        rows = _rows(chunk).double()
        G = G + rows @ rows.T
    return G


def combine(chunks: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    """out_c = sum_k weights[k] * J_c[k], accumulated in float64, returned in each chunk's dtype."""
    w = weights.double()
    return [torch.einsum("k,k...->...", w, chunk.double()).to(chunk.dtype) for chunk in chunks]


def pcgrad_weights(G: Tensor, orders: Tensor) -> Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1) carried out on coefficients of the task gradients.

    g_i^PC = sum_a C[i, a] g_a. Task i visits the tasks orders[i] in turn; when g_i^PC . g_j < 0 for the
    original g_j, g_i^PC loses its component along g_j: C[i, j] -= (g_i^PC . g_j) / |g_j|^2. Returns w with
    sum_i g_i^PC = sum_j w_j g_j.
    """
    G = G.double()
    K = G.shape[0]
    C = torch.eye(K, dtype=torch.float64, device=G.device)
    for i in range(K):
        for step in range(K - 1):
            j = orders[i, step]
            dot = C[i] @ G[:, j]
            norm_sq = G[j, j]
            # Only a strictly conflicting, nonzero g_j is projected out; a finite guard keeps extreme
            # ratios from producing inf.
            ratio = dot / torch.where(norm_sq > 0, norm_sq, torch.ones_like(norm_sq))
            project = (dot < 0) & (norm_sq > 0) & torch.isfinite(ratio)
            C[i, j] = C[i, j] - torch.where(project, ratio, torch.zeros_like(ratio))
    return C.sum(dim=0)


def pcgrad(J: Tensor, orders: Tensor) -> Tensor:
    """PCGrad on the gradient vectors themselves (J: (K, P)), exactly as Algorithm 1 states it.

    Independent of the coefficient trick used everywhere else; the tests hold the two against each other.
    """
    J = J.double()
    K = J.shape[0]
    projected = []
    for i in range(K):
        g = J[i].clone()
        for step in range(K - 1):
            g_j = J[orders[i, step]]
            dot = g @ g_j
            norm_sq = g_j @ g_j
            if dot < 0 and norm_sq > 0:
                g = g - dot / norm_sq * g_j
        projected.append(g)
    return torch.stack(projected).sum(dim=0)
