"""DB-MTL (Lin et al. 2023): log-loss gradients, rescaled to the largest (moving-average) norm. Gram-based given
the K loss values, which it reads through ``update_losses``."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .._checks import Losses, check_gram, check_number
from .._nonfinite import nan_unless
from ._stateful import VectorStateWeighting
from ._utils import checked_losses
from .bases import GramAggregator

__all__ = ["DBMTL", "DBMTLWeighting"]

#: Added to the losses before the log, as in the official code and LibMTL (log(L + 1e-8)).
LOG_EPS = 1e-8


class DBMTLWeighting(VectorStateWeighting):
    """DB-MTL's weights from G and this step's losses (see :class:`DBMTL`); the state is the moving average of
    the log-loss gradients' norms.

    Args:
        beta, beta_sigma: the moving average's rate beta / t^beta_sigma, beta in [0, 1].
    """

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        self.beta = float(check_number(beta, "beta", low=0.0, high=1.0))
        self.beta_sigma = float(check_number(beta_sigma, "beta_sigma", low=0.0))
        self.pending_losses: Optional[Tensor] = None
        self.step: Optional[Tensor] = None  # finite steps so far, a tensor: counting needs no host sync

    def update_losses(self, losses: Losses) -> None:
        """Hands over this step's K losses; the next call uses (and forgets) them."""
        self.pending_losses = checked_losses(losses)

    def __call__(self, G: Tensor) -> Tensor:
        K = check_gram(G)
        if self.pending_losses is None:
            raise RuntimeError("DBMTL needs this step's losses: call aggregator.update_losses(losses) before "
                               "weights(G) (mtl_fast.backward and the Gram engine do; with mtl_fast.fork, call "
                               "it before the backward)")
        losses, self.pending_losses = checked_losses(self.pending_losses, K).to(G.device), None
        G = G.double()
        shifted = losses + LOG_EPS
        finite = torch.isfinite(G).all() & torch.isfinite(losses).all() & (shifted > 0).all()
        shifted = torch.where(finite, shifted, 1.0)
        # |grad log(L_k + eps)| = |g_k| / (L_k + eps)
        norms = torch.where(finite, G.diagonal(), 0.0).clamp_min(0.0).sqrt() / shifted
        previous = self.current_state(K, G.device)
        if previous is None or self.step is None:
            previous, self.step = torch.zeros_like(norms), torch.zeros((), dtype=G.dtype, device=G.device)
        step = self.step.to(G.device) + 1.0
        average = norms + self.beta / step ** self.beta_sigma * (previous - norms)
        self.keep(finite, average, previous)
        self.step = torch.where(finite, step, step - 1.0)
        # alpha_k = max_i m_i / m_k; a task whose average norm is 0 has nothing to scale
        alpha = torch.where(average > 0, average.amax() / torch.where(average > 0, average, 1.0), 0.0)
        return nan_unless(finite, alpha / shifted)

    def reset(self) -> None:
        """Forgets the moving average, the step count and any pending losses."""
        super().reset()
        self.pending_losses, self.step = None, None

    def state_dict(self) -> Dict[str, object]:
        return {**super().state_dict(), "step": None if self.step is None else self.step.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        super().load_state_dict(state)
        self.step = None if state["step"] is None else torch.as_tensor(state["step"], dtype=torch.float64).clone()

    def __repr__(self) -> str:
        return f"DBMTLWeighting(beta={self.beta}, beta_sigma={self.beta_sigma})"


class DBMTL(GramAggregator):
    """DB-MTL, "Dual-Balancing for Multi-Task Learning" (Lin et al., arXiv 2308.12029, 2023), Algorithm 1.

    Loss-scale balancing: each task's loss becomes log(L_k + 1e-8), whose gradient is h_k = g_k / (L_k + 1e-8).
    Gradient-magnitude balancing: with m_k a moving average of |h_k| (m <- |h| + beta_t (m - |h|), m = 0 at
    start, beta_t = beta / t^beta_sigma), the update is sum_k (max_i m_i / m_k) h_k, i.e. weights
    w_k = (max_i m_i / m_k) / (L_k + 1e-8) on the raw task gradients g_k. |g_k| = sqrt(G_kk), so the weights
    need only G and the losses.

    Deviation (what makes it Gram-based): the paper and LibMTL average the gradient VECTORS h_k (a K x P
    buffer) and combine the averaged vectors; here the average is of their norms, which only sets the scales,
    and the current h_k give the direction. With beta = 0 the two are identical. The losses must be > -1e-8;
    a NaN, infinite or too negative loss is treated like a non-finite G (all-NaN weights, state kept, the step
    count included).

    The losses: ``needs_losses`` is True. Before each ``weights(G)``, call ``update_losses(losses)`` with the
    step's K losses (detached here); :func:`mtl_fast.backward` and the Gram engine do it, and with
    :func:`mtl_fast.fork` the caller calls it before the backward. ``weights`` raises without them, and forgets
    them after use, so stale losses are never reused.

    Args:
        beta: the moving average's rate, in [0, 1] (default 0.9, LibMTL's).
        beta_sigma: its decay exponent, >= 0 (default 0: a constant rate, LibMTL's).
    State: the average norms (K,) and the step count, on ``weighting``.
    """

    needs_losses = True

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__(DBMTLWeighting(beta, beta_sigma))

    def update_losses(self, losses: Losses) -> None:
        """Hands this step's K losses to the next ``weights(G)``."""
        self.weighting.update_losses(losses)
