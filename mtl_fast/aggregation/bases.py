"""What every method is: an :class:`Aggregator` (the K task gradients -> one update), and for the Gram-based ones a
:class:`Weighting` (the K x K Gram matrix G -> K weights) held by a :class:`GramAggregator`.

A Gram-based aggregator's update is sum_k w_k g_k with w = weighting(G): that is what lets one fast path
(gram -> weights -> combine) serve every method, and what lets :func:`mtl_fast.backward` and the Gram engine
skip the Jacobian altogether for a :class:`FixedWeighting`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

from .. import _ops
from .._checks import Jacobian, as_chunks, check_gram
from ._utils import DeviceGenerators

__all__ = ["Aggregator", "Weighting", "SeededWeighting", "FixedWeighting", "GramAggregator"]


class Aggregator(ABC):
    """Maps the per-task gradients J (K rows) of the shared parameters to one combined gradient.

    Two class attributes tell the entry points what a method can take:

    - ``needs_losses``: the method also reads this step's K loss values. :func:`mtl_fast.backward` and the Gram
      engine call ``aggregator.update_losses(losses)`` (the K losses, detached) before ``weights(G)`` /
      ``aggregate_chunks``; with :func:`mtl_fast.fork` the caller does, before the backward.
    - ``representation_level_ok``: the method is meaningful on the K feature gradients of
      :func:`mtl_fast.fork` (each flattened over batch x features). False for methods that keep per-coordinate
      state across steps (K x P buffers), which on features would mix different samples from step to step.
    """

    needs_losses: bool = False
    representation_level_ok: bool = True

    @abstractmethod
    def aggregate_chunks(self, J: List[Tensor]) -> List[Tensor]:
        """Combines validated chunks of shape (K, ...) into one tensor per chunk (shape without the K dim)."""

    def __call__(self, J: Jacobian) -> Union[Tensor, List[Tensor]]:
        """The combined gradient of J, a (K, P) tensor (gives (P,)) or a sequence of (K, ...) chunks (gives one
        tensor per chunk); the same as :func:`mtl_fast.aggregate` (J, self)."""
        J, _, single = as_chunks(J)
        out = self.aggregate_chunks(J)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Weighting(ABC):
    """Maps the K x K Gram matrix G of the task gradients to (K,) float64 weights, and holds whatever state the
    method keeps between steps.

    Every weighting that reads G returns all-NaN weights for a G with a NaN or infinite entry (an overflowed
    gradient) and leaves its state as it was."""

    @abstractmethod
    def __call__(self, G: Tensor) -> Tensor:
        """The (K,) float64 weights for G."""

    def state_dict(self) -> Dict[str, object]:
        """The state to checkpoint (empty for a stateless method)."""
        return {}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"state: {type(self).__name__} keeps no state, got keys {sorted(state)}")

    def reset(self) -> None:
        """Forgets any state (a stateless method has none)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SeededWeighting(Weighting):
    """A weighting whose only state is its random generators (one per device, seeded with ``seed``): its
    ``state_dict`` holds their state, so that a resumed seeded run draws what an uninterrupted one would."""

    def __init__(self, seed: Optional[int] = None) -> None:
        self.generators = DeviceGenerators(seed)

    @property
    def seed(self) -> Optional[int]:
        return self.generators.seed

    def state_dict(self) -> Dict[str, object]:
        return {"generators": self.generators.state_dict()}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.generators.load_state_dict(state["generators"])


class FixedWeighting(Weighting):
    """Weights that do not depend on G: the update is a fixed linear combination, so the fast paths skip the Gram
    matrix (and :func:`mtl_fast.backward` the Jacobian: one ordinary backward of the weighted loss sum)."""

    @abstractmethod
    def fixed_weights(self, K: int, device: torch.device) -> Tensor:
        """The (K,) float64 weights for K tasks, on ``device``."""

    def __call__(self, G: Tensor) -> Tensor:
        return self.fixed_weights(check_gram(G), G.device)


class GramAggregator(Aggregator):
    """An aggregator whose update is sum_k w_k g_k with w = weights(G), G = J J^T.

    Args:
        weighting: the method's G -> w map; a subclass that defines :meth:`weights` itself may leave it out.
    """

    weighting: Optional[Weighting] = None  # also for subclasses that define weights(G) and skip __init__

    def __init__(self, weighting: Optional[Weighting] = None) -> None:
        self.weighting = weighting

    def weights(self, G: Tensor) -> Tensor:
        """The (K,) float64 combination weights for the Gram matrix G (K x K)."""
        if self.weighting is None:
            raise NotImplementedError(f"{type(self).__name__}: pass a Weighting to GramAggregator.__init__ or "
                                      "define weights(G)")
        return self.weighting(G)

    def fixed_weights(self, K: int, device: torch.device) -> Optional[Tensor]:
        """The weights when they do not depend on G (a :class:`FixedWeighting`), else None."""
        if isinstance(self.weighting, FixedWeighting):
            return self.weighting.fixed_weights(K, device)
        return None

    def aggregate_chunks(self, J: List[Tensor]) -> List[Tensor]:
        weights = self.fixed_weights(J[0].shape[0], J[0].device)
        if weights is None:
            weights = self.weights(_ops.gram(J))
        return _ops.combine(J, weights)

    def state_dict(self) -> Dict[str, object]:
        """The weighting's state (see :meth:`Weighting.state_dict`; empty without a weighting)."""
        return {} if self.weighting is None else self.weighting.state_dict()

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restores what :meth:`state_dict` returned."""
        if self.weighting is not None:
            self.weighting.load_state_dict(state)
        elif state:
            raise ValueError(f"state: {type(self).__name__} keeps no state, got keys {sorted(state)}")

    def reset(self) -> None:
        """Forgets the weighting's state."""
        if self.weighting is not None:
            self.weighting.reset()

    def __repr__(self) -> str:
        if self.weighting is None:
            return super().__repr__()
        return repr(self.weighting).replace("Weighting(", "(", 1)
