"""SDMGrad (Xiao et al. 2023): stochastic direction-oriented MGDA, weights by projected SGD on the simplex."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from ._stateful import VectorStateWeighting
from ._utils import check_preference, preference, project_onto_simplex
from .bases import GramAggregator

__all__ = ["SDMGrad", "SDMGradWeighting"]


class SDMGradWeighting(VectorStateWeighting):
    """SDMGrad's weights from G, and its inner weights w; the arguments are :class:`SDMGrad`'s."""

    def __init__(self, lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20,
                 pref_vector: Optional[Sequence[float]] = None) -> None:
        self.lambda_ = float(check_number(lambda_, "lambda_", low=0.0))
        self.lr = float(check_number(lr, "lr", low=0.0, low_open=True))
        self.momentum = float(check_number(momentum, "momentum", low=0.0, high=1.0))
        if self.momentum == 1.0:
            raise ValueError("momentum: expected a value in [0, 1), got 1.0")
        self.n_iter = check_number(n_iter, "n_iter", low=1, integer=True)
        self.pref_vector = check_preference(pref_vector)

    def __call__(self, G: Tensor) -> Tensor:
        """The weights for G; G may also be J_1 J_2^T from two independent batches (not symmetric), the paper's
        unbiased estimate."""
        K = check_gram(G)
        G, finite = finite_or_zero(G.double())
        target = preference(self.pref_vector, K, G.device).double()
        previous = self.current_state(K, G.device)
        if previous is None:
            previous = torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)
        # Scale normalisation (paper section 6.1, official code): the step size then does not depend on the
        # gradients' magnitude.
        scale = G.diagonal().clamp_min(0.0).sqrt().mean() ** 2
        A = torch.where(scale > 0, G / torch.where(scale > 0, scale, 1.0), 0.0)
        w, velocity = previous, torch.zeros_like(previous)
        for _ in range(self.n_iter):
            velocity = self.momentum * velocity + A @ (w + self.lambda_ * target)
            w = project_onto_simplex(w - self.lr * velocity)
        self.keep(finite, w, previous)
        return nan_unless(finite, (w + self.lambda_ * target) / (1.0 + self.lambda_))

    def __repr__(self) -> str:
        pref = None if self.pref_vector is None else self.pref_vector.tolist()
        return (f"SDMGradWeighting(lambda_={self.lambda_}, lr={self.lr}, momentum={self.momentum}, "
                f"n_iter={self.n_iter}, pref_vector={pref})")


class SDMGrad(GramAggregator):
    """SDMGrad, "Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms" (Xiao et
    al., NeurIPS 2023), Algorithm 1.

    The direction-oriented MGDA subproblem w* = argmin_{w in simplex} 1/2 |g_w + lambda g~|^2 (g_w = J^T w,
    g~ = J^T w~ the target, the mean gradient by default) is solved approximately by ``n_iter`` steps of
    projected SGD with momentum on w, started from the previous call's w (the state); its gradient in w is
    A (w + lambda w~), with A = G / mean_k(sqrt(G_kk))^2 (the paper's and official code's scale normalisation).
    The update is d = (g_w + lambda g~) / (1 + lambda): weights (w + lambda w~) / (1 + lambda), on the simplex.
    The momentum restarts each call, as in the official code (a new optimiser per step).

    The paper's unbiased estimate takes A from two independent batches, J_1 J_2^T (not symmetric): pass it to
    ``weights`` yourself; :func:`mtl_fast.backward` and the engine pass the one-batch G (the official code's
    deterministic variant). Objective scale: the step is the gradient of 1/2 |.|^2, the paper's and TorchJD's;
    the official code differentiates |.|^2, twice that (its lr 10 is lr = 20 here). Defaults: lambda 0.3 (the
    official experiments', LibMTL's and TorchJD's), lr 10, momentum 0.5, 20 steps.

    Args:
        lambda_: the pull towards the target direction, >= 0.
        lr: the inner SGD's step size, > 0.
        momentum: the inner SGD's momentum, in [0, 1).
        n_iter: inner SGD steps per call, >= 1.
        pref_vector: the target direction's weights w~ (default the mean, 1/K each).
    State: the inner w (K,) on ``weighting`` (``state_dict()`` / ``load_state_dict()``, ``reset()``).
    """

    def __init__(self, lambda_: float = 0.3, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20,
                 pref_vector: Optional[Sequence[float]] = None) -> None:
        super().__init__(SDMGradWeighting(lambda_, lr, momentum, n_iter, pref_vector))
