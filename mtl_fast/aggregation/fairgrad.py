"""FairGrad (Ban & Ji 2024): alpha-fair weights, G w = w^(-1/alpha); Nash-MTL is alpha = 1."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from .bases import GramAggregator, Weighting

__all__ = ["FairGrad", "FairGradWeighting", "solve_alpha_fair", "FAIR_DECREMENT_TOLERANCE"]

#: The solver stops once the squared Newton decrement of the normalised problem is below this.
FAIR_DECREMENT_TOLERANCE = 1e-20
#: The I term added to G / |G|_F: it keeps the problem bounded when the gradients are linearly dependent.
FAIR_REGULARIZATION = 1e-10


def solve_alpha_fair(G: Tensor, alpha: float, max_iter: int) -> Tensor:
    """w > 0 with G w = w^(-1/alpha) (elementwise), up to the 1e-10 |G|_F I term; zeros for G = 0.

    G w = w^(-1/alpha) is the stationarity condition of the strictly convex
    f(w) = 1/2 w^T M w - sum_k h(w_k), h' = w^(-1/alpha) (h = log for alpha = 1), solved on M = G / |G|_F
    + 1e-10 I by damped Newton steps (step 1 / (1 + decrement) until the decrement is below 1/4, then full
    steps; never more than 0.9 of the way to the boundary w = 0), at most ``max_iter`` of them, stopping when
    the squared decrement is below 1e-20. The solution for G is that for M times |G|_F^(-alpha / (1 + alpha)).
    """
    G = G.double()
    K = G.shape[0]
    norm = torch.linalg.matrix_norm(G)
    safe_norm = torch.where(norm > 0, norm, 1.0)
    M = torch.where(norm > 0, G / safe_norm, 0.0) + FAIR_REGULARIZATION * torch.eye(K, dtype=G.dtype, device=G.device)
    exponent = -1.0 / alpha
    w = M.diagonal() ** (-alpha / (1.0 + alpha))  # exact when the gradients are orthogonal
    for iteration in range(max_iter):
        gradient = M @ w - w ** exponent
        hessian = M + torch.diag(-exponent * w ** (exponent - 1.0))
        step = torch.linalg.solve_ex(hessian, gradient)[0]
        decrement_sq = (step @ gradient).clamp_min(0.0)
        length = torch.where(decrement_sq < 0.0625, 1.0, 1.0 / (1.0 + decrement_sq.sqrt()))
        to_boundary = torch.where(step > 0, w / torch.where(step > 0, step, 1.0), float("inf")).amin()
        w = w - torch.minimum(length, 0.9 * to_boundary) * step
        if reference.should_stop(decrement_sq < FAIR_DECREMENT_TOLERANCE, iteration):
            break
    return torch.where(norm > 0, w * safe_norm ** (-alpha / (1.0 + alpha)), 0.0)


class FairGradWeighting(Weighting):
    """FairGrad's weights from G (see :class:`FairGrad`).

    Args:
        alpha: the fairness exponent, alpha > 0.
        max_iter: Newton steps at most (>= 1).
    """

    def __init__(self, alpha: float = 1.0, max_iter: int = 50) -> None:
        self.alpha = float(check_number(alpha, "alpha", low=0.0, low_open=True))
        self.max_iter = check_number(max_iter, "max_iter", low=1, integer=True)

    def __call__(self, G: Tensor) -> Tensor:
        check_gram(G)
        G, finite = finite_or_zero(G.double())
        return nan_unless(finite, solve_alpha_fair(G, self.alpha, self.max_iter))

    def __repr__(self) -> str:
        return f"FairGradWeighting(alpha={self.alpha}, max_iter={self.max_iter})"


class FairGrad(GramAggregator):
    """FairGrad, "Fair Resource Allocation in Multi-Task Learning" (Ban & Ji, ICML 2024), Algorithm 1.

    The update d = sum_k w_k g_k maximises the alpha-fair utility of the tasks' improvement rates g_k . d, which
    at the optimum means (G w)_k = w_k^(-1/alpha) for every task, w > 0. alpha = 1 is proportional fairness
    (Nash-MTL's G w = 1 / w); alpha -> infinity tends to max-min fairness; alpha -> 0 to the plain sum.
    No normalisation of d (the official code clips the gradient norm separately; do that in the optimiser).

    Solver: :func:`solve_alpha_fair`, damped Newton on the convex problem whose stationarity condition is the
    equation (instead of the official code's scipy least_squares from 1/K, which TorchJD also runs), on
    G / |G|_F + 1e-10 I, then rescaled, so the answer is scale-equivariant: G -> s G gives
    w -> s^(-alpha / (1 + alpha)) w. Tolerance: stops when the squared Newton decrement is below 1e-20 (at most
    ``max_iter`` steps, default 50); the residual |G w - w^(-1/alpha)| is then within ~1e-8 of |w^(-1/alpha)|,
    apart from the 1e-10 |G|_F w of the regularisation. The regularisation keeps linearly dependent gradients
    (which have no exact solution: opposite gradients, say) finite; a zero gradient gets a large but finite
    weight (on a zero vector); all-zero gradients give w = 0.

    Args:
        alpha: the fairness exponent, alpha > 0 (default 1, the paper's and the official code's).
        max_iter: Newton steps at most (>= 1).
    """

    def __init__(self, alpha: float = 1.0, max_iter: int = 50) -> None:
        super().__init__(FairGradWeighting(alpha, max_iter))

    @property
    def alpha(self) -> float:
        return self.weighting.alpha
