"""Nash-MTL (Navon et al. 2022): the Nash bargaining solution among the tasks."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from .bases import GramAggregator, Weighting
from .fairgrad import solve_alpha_fair

__all__ = ["NashMTL", "NashMTLWeighting"]


class NashMTLWeighting(Weighting):
    """Nash-MTL's weights from G, and its last solution (see :class:`NashMTL`)."""

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20) -> None:
        self.max_norm = float(check_number(max_norm, "max_norm", low=0.0))
        self.update_weights_every = check_number(update_weights_every, "update_weights_every", low=1, integer=True)
        self.optim_niter = check_number(optim_niter, "optim_niter", low=1, integer=True)
        self.reset()

    def reset(self) -> None:
        """Forgets the last solution and the step count."""
        self.step = 0
        self.last_beta: Optional[Tensor] = None

    def state_dict(self) -> Dict[str, object]:
        return {"step": self.step, "last_beta": None if self.last_beta is None else self.last_beta.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        last_beta = state["last_beta"]
        if last_beta is not None and (not isinstance(last_beta, Tensor) or last_beta.dim() != 1):
            raise ValueError("state: 'last_beta' must be None or a (K,) tensor")
        self.step = check_number(state["step"], "step", low=0, integer=True)
        self.last_beta = None if last_beta is None else last_beta.detach().clone().double()

    def solve(self, G: Tensor) -> Tensor:
        """beta > 0 with G beta = 1 / beta, up to the 1e-10 |G|_F I term (no clipping, no state): FairGrad's
        equation at alpha = 1."""
        return solve_alpha_fair(G, 1.0, self.optim_niter)

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        G, finite = finite_or_zero(G.double())
        if self.last_beta is None or self.last_beta.numel() != K:
            self.last_beta = self.solve(G)
        elif self.step % self.update_weights_every == 0:
            # a non-finite G keeps the last solution (a step that AMP's GradScaler skips leaves no trace)
            self.last_beta = torch.where(finite, self.solve(G), self.last_beta.to(G.device))
        self.step += 1
        beta = self.last_beta.to(G.device)
        if self.max_norm > 0:
            norm = (beta @ G @ beta).clamp_min(0.0).sqrt()
            beta = beta * torch.where(norm > self.max_norm, self.max_norm / torch.where(norm > 0, norm, 1.0), 1.0)
        return nan_unless(finite, beta)

    def __repr__(self) -> str:
        return (f"NashMTLWeighting(max_norm={self.max_norm}, update_weights_every={self.update_weights_every}, "
                f"optim_niter={self.optim_niter})")


class NashMTL(GramAggregator):
    """Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022), Algorithm 1.

    The Nash bargaining solution: beta > 0 with G beta = 1 / beta (elementwise) for the raw G, so that
    beta_k (g_k . d) = 1 and |d|^2 = K; it is solved on G / |G|_F for conditioning and rescaled by |G|_F^-1/2, as the
    official code does. d = sum_k beta_k g_k, then d is scaled down to norm ``max_norm`` when it is longer
    (the official default 1.0; 0 disables it). ``update_weights_every`` > 1 reuses the last beta in between.
    All-zero gradients give beta = 0.

    Solver: G beta = 1 / beta is the stationarity condition of the strictly convex
    f(beta) = 1/2 beta^T G beta - sum log beta_k, minimised by damped Newton steps (step 1 / (1 + Newton
    decrement) until the decrement is below 1/4, then full steps, which keeps beta > 0), at most ``optim_niter``
    steps (paper's default 20), stopping when |G beta - 1 / beta| <= 1e-10 max(1 / beta) on the normalised G:
    FairGrad's solver
    (:func:`~mtl_fast.aggregation.fairgrad.solve_alpha_fair`) at alpha = 1. A 1e-10 I term keeps
    the problem bounded when the gradients are linearly dependent (the paper assumes they are not; e.g.
    opposite gradients have no solution). Instead of the paper's sequence of convex programs (CCP via cvxpy), the
    solution is reached to Newton accuracy: results differ from the official / TorchJD ones by their CCP error.

    Args:
        max_norm: cap on |d| (>= 0; 0: no cap).
        update_weights_every: recompute beta every this many calls (>= 1).
        optim_niter: Newton steps (>= 1).
    State: the last beta and the step count, on ``weighting`` (``state_dict()`` / ``load_state_dict()``,
    ``reset()``).
    """

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20) -> None:
        super().__init__(NashMTLWeighting(max_norm, update_weights_every, optim_niter))
