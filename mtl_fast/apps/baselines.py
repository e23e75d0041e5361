"""The per-task loop that LibMTL and the popular PCGrad port use, written out as the baseline that the
benchmark and the demo measure mtl_fast against (not used by the library itself).

K ordinary backward passes; after each, the shared gradients are flattened into one vector; PCGrad then runs
as Python loops over task pairs on those vectors, one host synchronisation per pair (``if dot < 0``). Unlike
the port it leaves the heads alone and sums, so both sides compute the same update and can be timed fairly.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence

import torch
from torch import Tensor

__all__ = ["per_task_loop_pcgrad", "per_task_loop_backward"]


def per_task_loop_pcgrad(grads: Sequence[Tensor], orders: Optional[Tensor] = None,
                         rng: Optional[random.Random] = None) -> Tensor:
    """PCGrad on K flat gradient vectors as the common implementations write it: the sum of the g_i^PC.

    Args:
        grads: K vectors of equal length (one per task).
        orders: (K, K-1) visiting orders to pin (as ``PCGrad.weights`` takes them); drawn with ``rng`` if None.
    """
    K = len(grads)
    rng = rng or random.Random()
    update = torch.zeros_like(grads[0])
    for i in range(K):
        g = grads[i].clone()
        others = orders[i].tolist() if orders is not None else rng.sample([j for j in range(K) if j != i], K - 1)
        for j in others:
            dot = torch.dot(g, grads[j])
            if dot < 0:  # the per-pair host synchronisation of the common implementations
                g -= dot / grads[j].dot(grads[j]) * grads[j]
        update += g
    return update


def per_task_loop_backward(losses: Sequence[Tensor], shared_params: Sequence[Tensor], *, pcgrad: bool = True,
                           orders: Optional[Tensor] = None, rng: Optional[random.Random] = None) -> None:
    """Accumulates into .grad what ``mtl_fast.backward`` does with PCGrad (or Sum when pcgrad=False).

    Args:
        losses: K scalar losses.
        shared_params: the shared parameters (every other parameter gets the plain summed gradient).
        orders: (K, K-1) visiting orders to pin (as ``PCGrad.weights`` takes them); drawn with ``rng`` if None.
    """
    shared = list(shared_params)
    saved = [p.grad for p in shared]
    flat: List[Tensor] = []
    for k, loss in enumerate(losses):
        for p in shared:
            p.grad = None
        loss.backward(retain_graph=k + 1 < len(losses))  # heads accumulate their own gradients as usual
        flat.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                               for p in shared]))
    update = per_task_loop_pcgrad(flat, orders, rng) if pcgrad else torch.stack(flat).sum(dim=0)
    offset = 0
    for p, old in zip(shared, saved):
        n = p.numel()
        grad = update[offset: offset + n].view_as(p)
        p.grad = grad.clone() if old is None else old + grad
        offset += n
