"""GradVac (Wang et al. 2021): cosine targets per task pair, tracked by an EMA, on coefficients of the gradients."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .. import _ops
from .._checks import check_gram, check_number
from ._utils import DeviceGenerators
from .bases import GramAggregator, Weighting
from .pcgrad import check_orders, draw_pcgrad_orders

__all__ = ["GradVac", "GradVacWeighting"]


class GradVacWeighting(Weighting):
    """GradVac's weights from G, and its EMA targets (see :class:`GradVac`).

    Args:
        beta: EMA rate in [0, 1].
        seed: seeds the visiting orders (as PCGrad's ``seed``).
    """

    def __init__(self, beta: float = 0.5, seed: Optional[int] = None) -> None:
        self.beta = float(check_number(beta, "beta", low=0.0, high=1.0))
        self.generators = DeviceGenerators(seed)
        self.phi_hat: Optional[Tensor] = None

    def reset(self) -> None:
        """Forgets the EMA targets."""
        self.phi_hat = None

    def state_dict(self) -> Dict[str, object]:
        """The EMA targets (None before the first step), beta, and the generators' state."""
        return {"beta": self.beta, "phi_hat": None if self.phi_hat is None else self.phi_hat.clone(),
                "generators": self.generators.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores what :meth:`state_dict` returned."""
        phi_hat = state["phi_hat"]
        if phi_hat is not None and (not isinstance(phi_hat, Tensor) or phi_hat.dim() != 2
                                    or phi_hat.shape[0] != phi_hat.shape[1]):
            raise ValueError("state: 'phi_hat' must be None or a (K, K) tensor")
        self.beta = float(check_number(state["beta"], "beta", low=0.0, high=1.0))
        self.phi_hat = None if phi_hat is None else phi_hat.detach().clone().double()
        if "generators" in state:
            self.generators.load_state_dict(state["generators"])

    def __call__(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """GradVac weights for G (updating the EMA targets); ``orders`` as in :meth:`PCGrad.weights`."""
        K = check_gram(G)
        if orders is None:
            orders = draw_pcgrad_orders(K, G.device, self.generators.get(G.device))
        else:
            check_orders(orders, K)
        if self.phi_hat is None or self.phi_hat.shape[0] != K:
            self.phi_hat = torch.zeros(K, K, dtype=torch.float64, device=G.device)
        weights, phi_hat = _ops.gradvac_weights(G, orders, self.phi_hat.to(G.device), self.beta)
        # the state holds no autograd history of a G that asked for a derivative
        self.phi_hat = phi_hat.detach()
        return weights

    def __repr__(self) -> str:
        return f"GradVacWeighting(beta={self.beta}, seed={self.generators.seed})"


class GradVac(GramAggregator):
    """GradVac, "Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual
    Models" (Wang et al., ICLR 2021), Algorithm 1, on coefficients of the task gradients like :class:`PCGrad`.

    For each task i the other tasks j are visited in a random order (drawn per i, as in PCGrad). With
    phi = cos(g_i', g_j) for the running g_i' and the ORIGINAL g_j, and the EMA target phi_hat[i, j]: if
    phi < phi_hat, g_i' += |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j| sqrt(1 - phi_hat^2)) g_j
    (raising the cosine to phi_hat); then phi_hat[i, j] = (1 - beta) phi_hat[i, j] + beta phi. The update is the SUM
    of the g_i'. phi_hat starts at 0 (the paper's initialisation), so the first step acts like PCGrad.
    Cosines come from G: g_i' = sum_a C[i, a] g_a has |g_i'|^2 = C_i G C_i^T and g_i' . g_j = (C G)[i, j].
    A zero gradient, or a target of exactly +-1, skips the correction (TorchJD adds eps = 1e-8 to the
    denominators instead, which makes the step depend on the gradients' scale). Scale invariant in G.
    On the CPU one compiled op runs the K rows' recurrences (csrc/kernels/gradvac.h); elsewhere
    :func:`mtl_fast.reference.gradvac_weights` runs the same steps as torch ops over all rows at once. The two
    agree to rounding.

    Args:
        beta: EMA rate in [0, 1] (paper: 1e-2 for its largest models; default 0.5 as in TorchJD).
        seed: seeds the visiting orders (as PCGrad's ``seed``).
    State: ``phi_hat`` (K, K) on ``weighting``; ``state_dict()`` / ``load_state_dict()``, ``reset()``.
    """

    def __init__(self, beta: float = 0.5, seed: Optional[int] = None) -> None:
        super().__init__(GradVacWeighting(beta, seed))

    def weights(self, G: Tensor, orders: Optional[Tensor] = None) -> Tensor:
        """GradVac weights for G (updating the EMA state); ``orders`` as in :meth:`PCGrad.weights`."""
        return self.weighting(G, orders)
