"""CR-MOGM (Zhou et al. 2022): an exponential moving average of another Gram-based method's weights."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from .._checks import Losses, check_gram, check_number
from .._nonfinite import nan_unless
from ._stateful import VectorStateWeighting
from .bases import GramAggregator

__all__ = ["CRMOGM", "CRMOGMWeighting"]


class CRMOGMWeighting(VectorStateWeighting):
    """CR-MOGM's smoothed weights (see :class:`CRMOGM`).

    Args:
        aggregator: the Gram-based method whose weights are smoothed.
        alpha: the weight of the previous smoothed weights, in [0, 1].
    """

    def __init__(self, aggregator: GramAggregator, alpha: float = 0.9) -> None:
        if not isinstance(aggregator, GramAggregator):
            raise TypeError(f"aggregator: expected a Gram-based mtl_fast aggregator (e.g. mtl_fast.MGDA()), got "
                            f"{type(aggregator).__name__}")
        self.aggregator = aggregator
        self.alpha = float(check_number(alpha, "alpha", low=0.0, high=1.0))

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        current = self.aggregator.weights(G).double()
        finite = torch.isfinite(G).all()
        previous = self.current_state(K, G.device)
        if previous is None:
            previous = current  # lambda_0 = the first weights: the first output is the method's own
        smoothed = self.alpha * previous + (1.0 - self.alpha) * current
        self.keep(finite, smoothed, previous)
        return nan_unless(finite, smoothed)

    def reset(self) -> None:
        """Forgets the moving average and the wrapped method's state."""
        super().reset()
        self.aggregator.reset()

    def state_dict(self) -> Dict[str, object]:
        """The moving average and the wrapped method's state."""
        return {**super().state_dict(), "inner": self.aggregator.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.aggregator.load_state_dict(state["inner"])

    def __repr__(self) -> str:
        return f"CRMOGMWeighting({self.aggregator!r}, alpha={self.alpha})"


class CRMOGM(GramAggregator):
    """CR-MOGM, "On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond" (Zhou et al.,
    NeurIPS 2022): the weights of any Gram-based method, smoothed across steps.

    lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda^_t, with lambda^_t = aggregator.weights(G_t) and
    lambda_0 = lambda^_1 (so the first step is the method's own); the update is sum_k lambda_t,k g_k. alpha
    weighs the PREVIOUS average, as TorchJD 0.18 reads the paper (alpha = 0: no smoothing, 1: frozen); set
    ``weighting.alpha`` between steps for the paper's schedule (e.g. alpha = 1 - lr_t / lr_0, Corollary 1, as
    TorchJD suggests). A step with a NaN or infinite G gives
    all-NaN weights and leaves the average as it was (the wrapped method keeps its own state by the same rule;
    of the existing ones, GradVac's generator and Nash-MTL's step count still advance).

    Args:
        aggregator: a Gram-based mtl_fast aggregator (MGDA, UPGrad, PCGrad, ...).
        alpha: the weight of the previous average, in [0, 1] (default 0.9).
    State: the average (K,) and the wrapped aggregator's state, on ``weighting``.
    """

    def __init__(self, aggregator: GramAggregator, alpha: float = 0.9) -> None:
        super().__init__(CRMOGMWeighting(aggregator, alpha))

    @property
    def needs_losses(self) -> bool:  # type: ignore[override]
        """Whether the wrapped method reads the losses (e.g. DBMTL)."""
        return self.weighting.aggregator.needs_losses

    def update_losses(self, losses: Losses) -> None:
        """Hands the losses on to the wrapped method (see :class:`~mtl_fast.aggregation.bases.Aggregator`)."""
        self.weighting.aggregator.update_losses(losses)

    def __repr__(self) -> str:
        return f"CRMOGM({self.weighting.aggregator!r}, alpha={self.weighting.alpha})"
