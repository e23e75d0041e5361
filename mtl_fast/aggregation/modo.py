"""MoDo (Chen et al. 2023): one projected gradient step on the task weights per training step."""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_gram, check_number
from .._nonfinite import finite_or_zero, nan_unless
from ._stateful import VectorStateWeighting
from ._utils import project_onto_simplex
from .bases import GramAggregator

__all__ = ["MoDo", "MoDoWeighting"]


class MoDoWeighting(VectorStateWeighting):
    """MoDo's weights lambda from G (see :class:`MoDo`).

    Args:
        gamma: the step size of the lambda update, > 0.
        rho: the l2 regularisation of lambda, >= 0.
    """

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        self.gamma = float(check_number(gamma, "gamma", low=0.0, low_open=True))
        self.rho = float(check_number(rho, "rho", low=0.0))

    def __call__(self, G: Tensor) -> Tensor:
        """The weights for G; G may also be J_1 J_2^T from two independent batches (the paper's estimate)."""
        K = check_gram(G)
        G, finite = finite_or_zero(G.double())
        previous = self.current_state(K, G.device)
        if previous is None:
            previous = torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)
        lam = project_onto_simplex(previous - self.gamma * (G @ previous + self.rho * previous))
        self.keep(finite, lam, previous)
        return nan_unless(finite, lam)

    def __repr__(self) -> str:
        return f"MoDoWeighting(gamma={self.gamma}, rho={self.rho})"


class MoDo(GramAggregator):
    """MoDo, "Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
    Conflict-Avoidance" (Chen, Fernando, Ying, Chen; NeurIPS 2023, JMLR 2024), Algorithm 1.

    The weights follow one projected gradient step per training step on 1/2 |J^T lambda|^2 + rho/2 |lambda|^2:
    lambda <- Pi_simplex(lambda - gamma (G lambda + rho lambda)), from lambda = 1/K; the update is
    sum_k lambda_k g_k. G is used as given (no scale normalisation, as in the paper and TorchJD), so gamma
    depends on the gradients' scale. The paper's estimate takes G from two independent batches, J_1 J_2^T:
    pass it to ``weights`` yourself; :func:`mtl_fast.backward` and the engine pass the one-batch G.

    Args:
        gamma: the step size of the lambda update, > 0 (default 0.1, TorchJD's).
        rho: the l2 regularisation of lambda, >= 0 (default 0.1, TorchJD's).
    State: lambda (K,) on ``weighting`` (``state_dict()`` / ``load_state_dict()``, ``reset()``).
    """

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__(MoDoWeighting(gamma, rho))
