"""Small pieces several methods share: seeded random generators per device, and the preference vector."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from .._checks import as_float_tensor


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
