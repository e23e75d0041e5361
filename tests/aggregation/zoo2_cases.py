"""Shared inputs and checks for the method zoo II tests: random and degenerate Jacobians, and state snapshots."""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor


def jacobian(K: int, P: int = 24, seed: int = 0, conflict: bool = True) -> Tensor:
    """A (K, P) float64 Jacobian with rows of different norms; row 1 conflicts with row 0 when ``conflict``."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, P, dtype=torch.float64, generator=g) * torch.logspace(-1, 1, K, dtype=torch.float64)[:, None]
    if conflict and K > 1:
        J[1] = -J[0] + 0.3 * J[1]
    return J


def degenerate_jacobians() -> Dict[str, Tensor]:
    """Identical, opposite, zero, partly zero, tiny and huge gradients, K = 1 and K = 64 (full and low rank)."""
    base = jacobian(4)
    low_rank = jacobian(64, 128, seed=3)[:40]
    return {
        "identical": base[:1].repeat(4, 1),
        "opposite": torch.cat([base[:1], -base[:1], base[2:]]),
        "all_zero": torch.zeros(4, 24, dtype=torch.float64),
        "one_zero": torch.cat([base[:3], torch.zeros(1, 24, dtype=torch.float64)]),
        "tiny": base * 1e-30,
        "huge": base * 1e30,
        "k1": base[:1],
        "k64": jacobian(64, 128, seed=2),
        "k64_rank40": torch.cat([low_rank, low_rank[:24] * 2.0]),
    }


def snapshot(value):
    """A deep, comparable copy of a state_dict (tensors cloned)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(snapshot(v) for v in value)
    return value


def same_state(a, b) -> bool:
    """Whether two snapshots are equal (NaN never equals: a NaN in the state is a failure)."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b
