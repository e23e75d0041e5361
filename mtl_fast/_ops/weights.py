"""The ops that turn a Gram matrix into weights: PCGrad, GradVac and the nonnegative QPs (MGDA, DualProj, UPGrad,
and the generic batched solver), with their fakes. Arguments arrive validated.

These ops have no derivative: a G that asks for one (:func:`~mtl_fast._ops.registry.needs_derivative`) takes the
differentiable reference instead, as does a device without a kernel.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from .registry import defined, has_kernel, needs_derivative

if defined("pcgrad_weights"):

    @torch.library.register_fake("mtl_fast::pcgrad_weights")
    def _pcgrad_weights_fake(gram: Tensor, orders: Tensor) -> Tensor:
        return gram.new_empty((gram.shape[0],), dtype=torch.float64)

if defined("gradvac_weights"):

    @torch.library.register_fake("mtl_fast::gradvac_weights")
    def _gradvac_weights_fake(gram: Tensor, orders: Tensor, phi_hat: Tensor, beta: float) -> Tuple[Tensor, Tensor]:
        K = gram.shape[0]
        return gram.new_empty((K,), dtype=torch.float64), gram.new_empty((K, K), dtype=torch.float64)

if defined("nonneg_qp"):

    @torch.library.register_fake("mtl_fast::nonneg_qp")
    def _nonneg_qp_fake(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int, patience: int) -> Tensor:
        return q.new_empty(q.shape)

    @torch.library.register_fake("mtl_fast::qp_weights")
    def _qp_weights_fake(gram: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float,
                         max_iter: int, patience: int) -> Tensor:
        return gram.new_empty((gram.shape[0],), dtype=torch.float64)


def _compiled(op: str, *inputs: Optional[Tensor]) -> bool:
    """Whether the compiled op serves these inputs: a kernel for their device, and no derivative asked for."""
    tensors = [t for t in inputs if t is not None]
    return has_kernel(op, tensors[0].device.type) and not needs_derivative(*tensors)


def pcgrad_weights(G: Tensor, orders: Tensor) -> Tensor:
    """PCGrad's (K,) float64 weights for G and the visiting orders (K, K-1)."""
    if _compiled("pcgrad_weights", G):
        return torch.ops.mtl_fast.pcgrad_weights.default(G, orders)
    return reference.pcgrad_weights(G, orders)


def gradvac_weights(G: Tensor, orders: Tensor, phi_hat: Tensor, beta: float) -> Tuple[Tensor, Tensor]:
    """One GradVac step: the (K,) float64 weights and the (K, K) float64 EMA targets after it."""
    if _compiled("gradvac_weights", G):
        return torch.ops.mtl_fast.gradvac_weights.default(G, orders, phi_hat, beta)
    return reference.gradvac_weights(G, orders, phi_hat, beta)


def nonneg_qp(M: Tensor, q: Tensor, simplex: bool, tol: float, max_iter: int, patience: int) -> Tensor:
    """The (B, K) solutions of min_z 1/2 z^T M z + q_b^T z, z >= 0 (sum(z) = 1 when ``simplex``)."""
    if _compiled("nonneg_qp", M, q):
        return torch.ops.mtl_fast.nonneg_qp.default(M, q, simplex, tol, max_iter, patience)
    return reference.nonneg_qp(M, q, simplex, tol, max_iter, patience)


def qp_weights(G: Tensor, pref: Optional[Tensor], method: str, regularization: float, tol: float, max_iter: int,
               patience: int) -> Tensor:
    """The (K,) float64 weights of ``method`` ('mgda', 'dualproj', 'upgrad') on G / trace(G) + regularization I."""
    if _compiled("qp_weights", G, pref):
        return torch.ops.mtl_fast.qp_weights.default(G, pref, method, regularization, tol, max_iter, patience)
    return reference.qp_weights(G, pref, method, regularization, tol, max_iter, patience)
