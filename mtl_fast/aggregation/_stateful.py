"""The one kind of state SDMGrad, MoDo and CR-MOGM keep: a (K,) vector of task weights carried from step to step."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .bases import Weighting


class VectorStateWeighting(Weighting):
    """A weighting whose state is one (K,) float64 vector, ``self.state`` (None before the first step, and again
    after :meth:`reset` or when K changes); ``state_dict()`` / ``load_state_dict()`` round-trip it."""

    state: Optional[Tensor] = None

    def current_state(self, K: int, device: torch.device) -> Optional[Tensor]:
        """The state for K tasks on ``device``, or None where there is none yet (or it was for another K)."""
        if self.state is None or self.state.numel() != K:
            return None
        return self.state.to(device)

    def keep(self, finite: Tensor, new: Tensor, old: Tensor) -> None:
        """Stores ``new`` where the step's G was finite, else ``old`` (no host sync), without autograd history."""
        self.state = torch.where(finite, new, old).detach()

    def reset(self) -> None:
        """Forgets the state."""
        self.state = None

    def state_dict(self) -> Dict[str, object]:
        return {"state": None if self.state is None else self.state.clone()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        vector = state["state"]
        if vector is not None and (not isinstance(vector, Tensor) or vector.dim() != 1):
            raise ValueError("state: 'state' must be None or a (K,) tensor")
        self.state = None if vector is None else vector.detach().clone().double()
