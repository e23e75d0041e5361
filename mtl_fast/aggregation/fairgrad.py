"""FairGrad (Ban & Ji 2024): alpha-fair weights, G w = w^(-1/alpha); Nash-MTL is alpha = 1."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from .bases import GramAggregator, Weighting

__all__ = ["FairGrad", "FairGradWeighting", "solve_alpha_fair", "FAIR_TOLERANCE"]

#: The solver stops once |M w - w^(-1/alpha)| <= this * max_k w_k^(-1/alpha) on the normalised problem.
FAIR_TOLERANCE = 1e-10
#: The I term added to G / |G|_F: it keeps the problem bounded when the gradients are linearly dependent.
FAIR_REGULARIZATION = 1e-10


#: The step lengths the line search tries at once: 1, 1/2, ..., 2^-30.
_STEP_LENGTHS = 2.0 ** -torch.arange(31, dtype=torch.float64)


def _barrier(W: Tensor, alpha: float) -> Tensor:
    """sum_k h(W_k) along the last dimension, h' = w^(-1/alpha) (log for alpha = 1)."""
    if alpha == 1.0:
        return W.log().sum(-1)
    power = 1.0 - 1.0 / alpha
    return (W ** power).sum(-1) / power


def solve_alpha_fair(G: Tensor, alpha: float, max_iter: int) -> Tensor:
    """w > 0 with G w = w^(-1/alpha) (elementwise), up to the 1e-10 |G|_F I term; zeros for G = 0.

    G w = w^(-1/alpha) is the stationarity condition of the strictly convex
    f(w) = 1/2 w^T M w - sum_k h(w_k), h' = w^(-1/alpha) (h = log for alpha = 1), on M = G / |G|_F + 1e-10 I.
    For alpha = 1 damped Newton steps (1 / (1 + decrement) until the decrement is below 1/4, then full steps);
    otherwise, where h is not self-concordant, Newton steps with an exact line search over the step lengths 1,
    1/2, ..., 2^-30, all tried in one batched evaluation of f (points outside w > 0 count as +inf), so that f
    decreases at every step without a host sync (full steps once the squared Newton decrement is below 1e-6,
    where f is too flat to rank them). Newton systems are Jacobi-scaled. At most ``max_iter`` steps, stopping
    when |M w - w^(-1/alpha)| <= 1e-10 max_k w_k^(-1/alpha). The solution for G is that for M times
    |G|_F^(-alpha / (1 + alpha)).
    """
    G = G.double()
    K = G.shape[0]
    norm = torch.linalg.matrix_norm(G)
    safe_norm = torch.where(norm > 0, norm, 1.0)
    identity = torch.eye(K, dtype=G.dtype, device=G.device)
    M = torch.where(norm > 0, G / safe_norm, 0.0) + FAIR_REGULARIZATION * identity
    lengths = _STEP_LENGTHS.to(G.device)[:, None]
    exponent = -1.0 / alpha
    w = M.diagonal() ** (-alpha / (1.0 + alpha))  # exact when the gradients are orthogonal
    for iteration in range(max_iter):
        target = w ** exponent
        gradient = M @ w - target
        if reference.should_stop(gradient.abs().amax() <= FAIR_TOLERANCE * target.amax(), iteration):
            break
        hessian = M + torch.diag(-exponent * w ** (exponent - 1.0))
        # Jacobi scaling: the barrier's curvature spans many decades when the weights do (large alpha)
        scale = hessian.diagonal().rsqrt()
        step = scale * torch.linalg.solve_ex(scale[:, None] * hessian * scale[None, :], scale * gradient)[0]
        decrement_sq = (step * gradient).sum()
        if alpha == 1.0:
            # The log barrier is self-concordant: the damped step 1 / (1 + decrement) stays inside w > 0 and
            # converges (Nesterov & Nemirovski), at the cost of one scalar per step.
            w = w - torch.where(decrement_sq < 0.0625, 1.0, 1.0 / (1.0 + decrement_sq.clamp_min(0.0).sqrt())) * step
            continue
        candidates = w - lengths * step
        inside = (candidates > 0).all(1)
        safe = torch.where(inside[:, None], candidates, 1.0)
        values = torch.where(inside, 0.5 * ((safe @ M) * safe).sum(1) - _barrier(safe, alpha), float("inf"))
        # Near the solution f is flat to rounding and cannot rank the steps: there the full step is taken.
        near = (decrement_sq < 1e-6) & inside[0]
        w = candidates[torch.where(near, 0, values.argmin())]
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

    Solver: :func:`solve_alpha_fair`, Newton with an exact line search on the convex problem whose
    stationarity condition is the equation (instead of the official code's scipy least_squares from 1/K, which
    TorchJD also runs), on G / |G|_F + 1e-10 I, then rescaled, so the answer is scale-equivariant: G -> s G
    gives w -> s^(-alpha / (1 + alpha)) w.
    Tolerance: it stops when the residual of the regularised equation is at most 1e-10 max_k w_k^(-1/alpha)
    (on G / |G|_F), or after ``max_iter`` steps (default 50). That is typically reached in 3-12 steps; for
    alpha > 2 rounding puts a floor under the residual which grows with G's condition number (the tests hold
    it to 1e-9 for alpha <= 2 and 1e-5 for alpha = 5, 10 at K <= 32, cond(G) up to 1e5); the raw equation
    differs from the regularised one by the 1e-10 |G|_F w term. The regularisation keeps linearly dependent
    gradients (which have no exact solution: opposite gradients, say) finite; a zero gradient gets a large but
    finite weight (on a zero vector); all-zero gradients give w = 0.

    Args:
        alpha: the fairness exponent, alpha > 0 (default 1, the paper's and the official code's).
        max_iter: Newton steps at most (>= 1).
    """

    def __init__(self, alpha: float = 1.0, max_iter: int = 50) -> None:
        super().__init__(FairGradWeighting(alpha, max_iter))

    @property
    def alpha(self) -> float:
        return self.weighting.alpha
