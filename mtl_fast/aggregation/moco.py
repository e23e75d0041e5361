"""MoCo (Fernando et al. 2023): tracked per-task gradients and weights on them. Not Gram-based: it holds a
K x P copy of the gradients."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from .. import _ops
from .._checks import check_number
from .._nonfinite import nan_unless
from ._jacobian_state import check_state_shapes, commit, spare_buffers, zero_state
from ._utils import project_onto_simplex
from .bases import Aggregator

__all__ = ["MoCo"]


class MoCo(Aggregator):
    """MoCo, "Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach" (Fernando et
    al., ICLR 2023), Algorithm 1.

    Per step t (from 1), with the task gradients J:
    Y <- Y - beta_t (Y - J) (the tracked gradients, Y = 0 at start), beta_t = beta / t^beta_sigma;
    lambda <- Pi_simplex(lambda - gamma_t (Y Y^T + rho I) lambda), gamma_t = gamma / t^gamma_sigma, from 1/K;
    the update is Y^T lambda.

    Not Gram-based: the update is a combination of the TRACKED gradients, which only Y (K x P, kept at least in
    float32) holds, so it is an :class:`Aggregator` on J; the Gram engine cannot run it, and it is not for
    :func:`mtl_fast.fork` (``representation_level_ok`` is False: Y on feature gradients would average
    different samples' features). :func:`mtl_fast.backward` returns None for it.

    Deviations from LibMTL 1.1.5's MoCo (TorchJD 0.18 has none): the paper's projection onto the simplex where
    LibMTL applies a softmax, and the raw gradients where LibMTL first rescales each to |g_k| = L_k (a
    heuristic of its own that needs the losses). A step with a NaN or infinite gradient leaves Y and lambda as
    they were, the step count included.

    Args:
        beta, beta_sigma: the tracking rate beta / t^beta_sigma (beta in (0, 1], LibMTL's defaults 0.5, 0.5).
        gamma, gamma_sigma: the lambda step gamma / t^gamma_sigma (> 0, LibMTL's defaults 0.1, 0.5).
        rho: the l2 regularisation of lambda, >= 0 (default 0).
    State: Y (as J's chunks), lambda and t (``state_dict()`` / ``load_state_dict()``, ``reset()``).
    """

    representation_level_ok = False

    def __init__(self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5,
                 rho: float = 0.0) -> None:
        self.beta = float(check_number(beta, "beta", low=0.0, high=1.0, low_open=True))
        self.beta_sigma = float(check_number(beta_sigma, "beta_sigma", low=0.0))
        self.gamma = float(check_number(gamma, "gamma", low=0.0, low_open=True))
        self.gamma_sigma = float(check_number(gamma_sigma, "gamma_sigma", low=0.0))
        self.rho = float(check_number(rho, "rho", low=0.0))
        self.reset()

    def reset(self) -> None:
        """Forgets the tracked gradients, lambda and the step count."""
        self.tracked: Optional[List[Tensor]] = None
        self.lambda_: Optional[Tensor] = None
        self.step: Optional[Tensor] = None  # finite steps so far, a tensor: counting needs no host sync
        self.candidate: Optional[List[Tensor]] = None  # a step's new Y, laid out like Y and reused

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        K, device = chunks[0].shape[0], chunks[0].device
        if not check_state_shapes(self.tracked, chunks, "MoCo"):
            self.tracked = zero_state(chunks)
            self.lambda_ = torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
            self.step = torch.zeros((), dtype=torch.float64, device=device)
        if self.candidate is None:
            self.candidate = spare_buffers(self.tracked)
        t = self.step + 1.0
        rate = (self.beta / t ** self.beta_sigma).to(self.tracked[0].dtype)
        tracked = [torch.lerp(y, c.detach().to(y.dtype), rate, out=n)
                   for y, c, n in zip(self.tracked, chunks, self.candidate)]
        G = _ops.gram(tracked)
        # a NaN or inf in J reaches the Gram of the new Y: a K x K check instead of a pass over J
        finite = torch.isfinite(G).all()
        self.tracked, self.candidate = commit(finite, tracked, self.tracked)
        step = self.gamma / t ** self.gamma_sigma
        lam = project_onto_simplex(self.lambda_ - step * (G @ self.lambda_ + self.rho * self.lambda_))
        self.lambda_ = torch.where(finite, lam, self.lambda_)
        self.step = torch.where(finite, t, self.step)
        combined = _ops.combine(self.tracked, nan_unless(finite, self.lambda_))
        return [out.to(c.dtype) for out, c in zip(combined, chunks)]

    def state_dict(self) -> Dict[str, object]:
        return {"tracked": None if self.tracked is None else [y.clone() for y in self.tracked],
                "lambda": None if self.lambda_ is None else self.lambda_.clone(),
                "step": None if self.step is None else self.step.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.reset()
        self.tracked = None if state["tracked"] is None else [y.detach().clone() for y in state["tracked"]]
        self.lambda_ = None if state["lambda"] is None else state["lambda"].detach().clone().double()
        self.step = None if state["step"] is None else torch.as_tensor(state["step"], dtype=torch.float64).clone()

    def __repr__(self) -> str:
        return (f"MoCo(beta={self.beta}, beta_sigma={self.beta_sigma}, gamma={self.gamma}, "
                f"gamma_sigma={self.gamma_sigma}, rho={self.rho})")
