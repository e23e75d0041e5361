"""Small pieces several methods share: seeded random generators per device, the preference vector, the projection
onto the simplex, and the losses handed to an aggregator that needs them."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .._checks import Losses, as_float_tensor, stack_losses


class DeviceGenerators:
    """One ``torch.Generator`` per device, all seeded with ``seed``, so that a method's random draws are
    reproducible on whichever device its tensors live; ``seed=None`` draws from torch's global generators.

    Args:
        seed: an int, or None.
    """

    def __init__(self, seed: Optional[int]) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        self.seed = seed
        self._generators: Dict[torch.device, torch.Generator] = {}

    def get(self, device: torch.device) -> Optional[torch.Generator]:
        """The generator for ``device`` (None with no seed: torch's global one)."""
        if self.seed is None:
            return None
        device = torch.device(device)
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]

    def state_dict(self) -> Dict[str, object]:
        """The seed and every generator's state, so that a resumed run draws what an uninterrupted one would."""
        return {"seed": self.seed, "generators": {str(d): g.get_state() for d, g in self._generators.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores what :meth:`state_dict` returned."""
        self.__init__(state["seed"])
        for device, generator_state in state["generators"].items():
            self.get(torch.device(device)).set_state(generator_state)


def check_preference(pref_vector: Optional[Sequence[float]]) -> Optional[Tensor]:
    """A preference vector given to a constructor: None, or K non-negative finite numbers (float64)."""
    if pref_vector is None:
        return None
    pref = as_float_tensor(pref_vector, "pref_vector")
    if (pref < 0).any():
        raise ValueError(f"pref_vector: every entry must be >= 0, got {pref.tolist()}")
    return pref


def preference(pref_vector: Optional[Tensor], K: int, device: torch.device) -> Tensor:
    """The (K,) float64 preference weights on ``device``: ``pref_vector``, or the mean (1/K each) when None."""
    if pref_vector is None:
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
    if pref_vector.numel() != K:
        raise ValueError(f"pref_vector: has {pref_vector.numel()} entries but there are {K} tasks")
    return pref_vector.to(device)


def project_onto_simplex(y: Tensor) -> Tensor:
    """The Euclidean projection of ``y`` (..., K) onto the probability simplex, along the last dimension.

    Sort-based (Held et al. 1974; Duchi et al. 2008): with s sorted in decreasing order, the support is the
    largest r with s_r > (sum_{i <= r} s_i - 1) / r and the threshold is that mean. The support is gathered, not
    read, so the projection never synchronises with a GPU."""
    s = y.sort(dim=-1, descending=True).values
    cumulative = s.cumsum(-1) - 1.0
    rank = torch.arange(1, y.shape[-1] + 1, dtype=y.dtype, device=y.device)
    support = (s - cumulative / rank > 0).sum(-1, keepdim=True).clamp_min(1)  # s_1 always qualifies
    threshold = cumulative.gather(-1, support - 1) / support.to(y.dtype)
    return (y - threshold).clamp_min(0.0)


def checked_losses(losses: Losses, K: Optional[int] = None) -> Tensor:
    """The K task losses handed to an aggregator (a 1-D tensor or a sequence of scalar tensors), detached, as a
    (K,) float64 tensor."""
    return stack_losses(losses, K).detach().double()


def symmetric_pinv_apply(M: Tensor, rhs: Tensor) -> Tensor:
    """M^+ rhs for a symmetric positive semi-definite M (K x K), by its eigendecomposition: eigenvalues below
    K * eps * the largest count as zero, so linearly dependent (identical, opposite, zero) gradients give a finite
    answer, the minimum-norm least-squares one."""
    eigenvalues, vectors = torch.linalg.eigh(M)
    cutoff = eigenvalues.amax().clamp_min(0.0) * M.shape[0] * torch.finfo(M.dtype).eps
    keep = eigenvalues > cutoff
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, 1.0), 0.0)
    return vectors @ (inverse * (vectors.T @ rhs))
