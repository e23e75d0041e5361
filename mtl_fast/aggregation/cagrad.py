"""CAGrad (Liu et al. 2021): the conflict-averse update within a ball around the mean gradient."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from ._qp import QP_REGULARIZATION, solve_nonnegative_qp
from .bases import GramAggregator, Weighting

__all__ = ["CAGrad", "CAGradWeighting"]

_ROUNDS = 30  # alternations of the simplex QP and rho's equation; they converge in a few


class CAGradWeighting(Weighting):
    """CAGrad's weights from G (see :class:`CAGrad`).

    Args:
        c: the radius factor, c >= 0 (0 gives the mean).
    """

    def __init__(self, c: float = 0.5) -> None:
        self.c = float(check_number(c, "c", low=0.0))

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = finite_or_zero(G)
        M = reference.normalized_gram(G, QP_REGULARIZATION)
        mean = torch.full((K,), 1.0 / K, dtype=M.dtype, device=M.device)
        if self.c == 0.0 or K == 1:
            return nan_unless(finite, mean)
        b = M @ mean
        radius = self.c * (mean @ b).sqrt()
        rho = torch.full((), self.c, dtype=M.dtype, device=M.device)  # exact when the optimum is w* = mean
        ones = torch.ones(1, K, 1, dtype=M.dtype, device=M.device)
        for round_ in range(_ROUNDS):
            w = solve_nonnegative_qp(rho * M, b[None], simplex=True)
            # On the support F: w_F = p + s dir with s = 1 / rho, from the KKT system of the quadratic above.
            x = reference.masked_solve(M, w > 0, torch.cat([b[None, :, None], ones], dim=2))[0]
            x1, x2 = x[:, 0], x[:, 1]
            p = x2 / x2.sum()
            direction = x2 * x1.sum() / x2.sum() - x1
            alpha, beta, gamma = p @ M @ p, p @ M @ direction, direction @ M @ direction
            # |g_w(s)|^2 = alpha + 2 beta s + gamma s^2 must equal (radius s)^2.
            a = radius ** 2 - gamma
            s = (beta + (beta ** 2 + a * alpha).clamp_min(0.0).sqrt()) / a
            new_rho = torch.where((a > 0) & (s > 0), 1.0 / s, rho / 10).clamp(1e-12, 1e12)
            done = (new_rho - rho).abs() <= 1e-10 * rho
            rho = new_rho
            if reference.should_stop(done, round_):
                break
        w = w[0]
        norm = (w @ M @ w).clamp_min(0.0).sqrt()
        stationary = norm <= 1e-12 * radius
        correction = torch.where(stationary, torch.zeros_like(norm), radius / torch.where(stationary, 1.0, norm))
        return nan_unless(finite, mean + correction * w)

    def __repr__(self) -> str:
        return f"CAGradWeighting(c={self.c})"


class CAGrad(GramAggregator):
    """CAGrad, "Conflict-Averse Gradient Descent for Multi-task Learning" (Liu et al., NeurIPS 2021), Algorithm 1.

    With g0 the mean gradient and phi = c^2 |g0|^2, solve the dual
    w* = argmin_{w >= 0, sum(w) = 1} g_w . g0 + sqrt(phi) |g_w|   (g_w = sum_k w_k g_k)
    and update with d = g0 + sqrt(phi) / |g_w*| g_w*, i.e. weights 1/K + sqrt(phi) / |g_w*| w*. This is the paper's
    d (the official code's default additionally divides it by 1 + c^2: scale the learning rate to match). When
    g_w* = 0 (a Pareto-stationary point) the correction has no direction and d = g0.

    Solver: at the optimum w* also minimises the quadratic rho/2 |g_w|^2 + g_w . g0 on the simplex with
    rho = sqrt(phi) / |g_w*|; on a fixed support that minimiser is affine in 1/rho, so rho solves a quadratic
    equation. Alternate exact simplex QPs (block principal pivoting, on G / trace(G) + 1e-6 I) and that equation
    until rho moves by less than 1e-10 relative (at most 30 rounds). Scale invariant in G.

    Args:
        c: the radius factor, c >= 0 (0 gives the mean).
    """

    def __init__(self, c: float = 0.5) -> None:
        super().__init__(CAGradWeighting(c))

    @property
    def c(self) -> float:
        return self.weighting.c
