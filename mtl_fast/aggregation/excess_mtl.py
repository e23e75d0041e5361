"""ExcessMTL (He et al. 2024): task weights from excess-risk estimates with per-coordinate gradient statistics.
Not Gram-based: it needs every coordinate of every task gradient, and keeps K x P state."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from .. import _ops
from .._checks import check_number
from .._nonfinite import nan_unless
from ._jacobian_state import check_state_shapes, commit, spare_buffers, zero_state
from .bases import Aggregator

__all__ = ["ExcessMTL"]

#: Added to the accumulated squared gradients under the square root (the official code's and TorchJD's).
EXCESS_EPS = 1e-7


class ExcessMTL(Aggregator):
    """ExcessMTL, "Robust Multi-Task Learning with Excess Risks" (He et al., ICML 2024), Algorithm 1.

    Each step adds the squared task gradients to S (K x P, AdaGrad's diagonal curvature estimate) and estimates
    task k's excess risk as E_k = sum_p g_kp^2 / sqrt(S_kp + 1e-7) (equations 6-7); after ``n_warmup_steps``
    steps of uniform weights, the mean E over the warm-up (or the first step's E when there is none) becomes the
    baseline E0, and from then on the weights take an exponentiated-gradient step,
    alpha <- softmax(log alpha + robust_step_size E / E0) (equation 9 with the scale processing of section 3.2),
    from alpha = 1/K. The update is sum_k alpha_k g_k. A task whose baseline is 0 gets ratio 0.

    Not Gram-based: E needs every coordinate of the gradients, so it is an :class:`Aggregator` on J; the Gram
    engine cannot run it (it never forms J), and it is not for :func:`mtl_fast.fork`
    (``representation_level_ok`` is False): S on feature gradients would pile up different samples' features.
    :func:`mtl_fast.backward` returns None for it (no weights on the Gram path).

    Deviations: the first step after warm-up divides by the baseline too (the paper's scale processing), where
    the official code and TorchJD 0.18 use the raw E on that one step; with n_warmup_steps >= 1 the two agree.
    E / E0 where TorchJD divides by E0 + 1e-7 (scale-dependent). alpha starts at 1/K as in the paper and TorchJD
    (the official code and LibMTL start at 1). A step with a NaN or infinite gradient leaves every statistic
    as it was.

    Args:
        robust_step_size: eta_alpha, > 0 (default 1, as TorchJD).
        n_warmup_steps: steps of uniform weights collecting E for the baseline, >= 0 (the paper suggests three
            epochs' worth; default 0, the official code's).
    State: S (as J's chunks), alpha, E0, the warm-up sum and the step count (tensors) (``state_dict()`` /
    ``load_state_dict()``, ``reset()``).
    """

    representation_level_ok = False

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        self.robust_step_size = float(check_number(robust_step_size, "robust_step_size", low=0.0, low_open=True))
        self.n_warmup_steps = check_number(n_warmup_steps, "n_warmup_steps", low=0, integer=True)
        self.reset()

    def reset(self) -> None:
        """Forgets every statistic: the next step starts from uniform weights and warms up again."""
        self.squared_sums: Optional[List[Tensor]] = None
        self.vectors: Dict[str, Tensor] = {}
        # a step's new S, and room to build E in, laid out like S and reused from step to step
        self.candidate: Optional[List[Tensor]] = None
        self.scratch: Optional[List[Tensor]] = None

    def aggregate_chunks(self, chunks: List[Tensor]) -> List[Tensor]:
        K, device = chunks[0].shape[0], chunks[0].device
        if not check_state_shapes(self.squared_sums, chunks, "ExcessMTL"):
            self.squared_sums = zero_state(chunks)
            zeros = torch.zeros(K, dtype=torch.float64, device=device)
            # every counter and flag is a tensor, so that warm-up and baseline need no host sync
            self.vectors = {"alpha": zeros + 1.0 / K, "baseline": zeros, "warmup_sum": zeros,
                            "steps": zeros[0], "has_baseline": zeros[0]}
        if self.candidate is None:
            self.candidate, self.scratch = spare_buffers(self.squared_sums), spare_buffers(self.squared_sums)
        v, sums = self.vectors, self.candidate
        detached = [c.detach() for c in chunks]
        for s, c, n in zip(self.squared_sums, detached, sums):
            torch.addcmul(s, c, c, out=n)
        # g^2 / sqrt(S + eps) in place in the scratch, summed in the state dtype: the terms are nonnegative, so
        # that loses nothing that matters, and a float64 sum would first copy the whole scratch to float64
        excess = sum(torch.add(n, EXCESS_EPS, out=r).rsqrt_().mul_(c).mul_(c).reshape(K, -1).sum(1).double()
                     for n, r, c in zip(sums, self.scratch, detached))
        # a NaN or inf in J reaches E: a check of K numbers instead of a pass over J
        finite = torch.isfinite(excess).all()
        self.squared_sums, self.candidate = commit(finite, sums, self.squared_sums)
        steps = v["steps"] + finite.double()
        warming = finite & (steps <= self.n_warmup_steps)
        warmup_sum = torch.where(warming, v["warmup_sum"] + excess, v["warmup_sum"])
        weighing = finite & ~warming
        first = weighing & (v["has_baseline"] == 0)
        baseline = torch.where(first, warmup_sum / self.n_warmup_steps if self.n_warmup_steps else excess,
                               v["baseline"])
        ratio = torch.where(baseline > 0, excess / torch.where(baseline > 0, baseline, 1.0), 0.0)
        alpha = torch.where(weighing, torch.softmax(v["alpha"].log() + self.robust_step_size * ratio, 0), v["alpha"])
        self.vectors = {"alpha": alpha, "baseline": baseline, "warmup_sum": warmup_sum, "steps": steps,
                        "has_baseline": torch.where(weighing, 1.0, v["has_baseline"])}
        return _ops.combine(chunks, nan_unless(finite, alpha))

    @property
    def alpha(self) -> Optional[Tensor]:
        """The current task weights (None before the first step)."""
        return self.vectors.get("alpha")

    def state_dict(self) -> Dict[str, object]:
        return {"squared_sums": None if self.squared_sums is None else [s.clone() for s in self.squared_sums],
                **{name: t.clone() for name, t in self.vectors.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.reset()
        sums = state["squared_sums"]
        self.squared_sums = None if sums is None else [s.detach().clone() for s in sums]
        self.vectors = {name: t.detach().clone().double() for name, t in state.items() if name != "squared_sums"}

    def __repr__(self) -> str:
        return f"ExcessMTL(robust_step_size={self.robust_step_size}, n_warmup_steps={self.n_warmup_steps})"
