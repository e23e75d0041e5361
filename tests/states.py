"""Comparing what state_dict() returns, for the tests of stateful aggregators and loss weightings."""
import torch
from torch import Tensor


def same_state(a, b) -> bool:
    """Whether two state_dict()s hold equal values (tensors compared exactly), nested dicts and lists included."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b
