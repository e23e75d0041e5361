"""Loads the compiled operators, registers their fake kernels and autograd, and falls back to
:mod:`mtl_fast.reference` on devices (or installs) that have no compiled kernel.

Everything else in the package calls the four dispatchers at the bottom of this file; they take already
validated arguments.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import List, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import reference

_OPS = ("gram", "pcgrad_weights", "combine", "combine_into")


def _load_extension() -> Optional[str]:
    """Imports mtl_fast._C (which registers the operators); returns why it is unavailable, or None."""
    if os.environ.get("MTL_FAST_NO_EXTENSION", "").strip().lower() in ("1", "true", "yes", "on"):
        return "disabled by MTL_FAST_NO_EXTENSION=1"
    try:
        from . import _C  # noqa: F401
    except Exception as exc:  # any failure (missing, ABI mismatch, missing symbol) means the fallback
        reason = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"mtl_fast: the compiled extension could not be loaded ({reason}); using the pure-PyTorch path, "
            "which is correct but slower. Reinstall with `pip install --no-build-isolation -e .` to build it.",
            RuntimeWarning, stacklevel=3)
        return reason
    return None


extension_error: Optional[str] = _load_extension()


def kernel_devices(op: str) -> frozenset:
    """The device types ('cpu', 'cuda') on which the compiled ``mtl_fast::<op>`` has a kernel. Empty without
    the extension, and for an op that an older build of it lacks (then the Python path serves)."""
    if extension_error is not None or not hasattr(torch.ops.mtl_fast, op):
        return frozenset()
    return frozenset(device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                     if torch._C._dispatch_has_kernel_for_dispatch_key(f"mtl_fast::{op}", key))


# Fixed once the extension is imported; a plain set lookup keeps the dispatchers traceable by torch.compile.
_KERNEL_DEVICES = kernel_devices("gram")


_reference_only = False


@contextlib.contextmanager
def reference_only():
    """Within this block every op takes its :mod:`mtl_fast.reference` path, as without the extension (the
    benchmarks time that path side by side with the kernels)."""
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous


def has_kernel(device_type: str) -> bool:
    """True when the compiled operators have kernels for this device type ('cpu', 'cuda')."""
    return not _reference_only and device_type in _KERNEL_DEVICES


def backend() -> str:
    """Which kernels are active: 'cuda' (CUDA and C++ kernels), 'cpp' (C++ CPU kernels) or 'python'."""
    if has_kernel("cuda"):
        return "cuda"
    if has_kernel("cpu"):
        return "cpp"
    return "python"


if extension_error is None:
    @torch.library.register_fake("mtl_fast::gram")
    def _gram_fake(jac: List[Tensor]) -> Tensor:
        K = jac[0].shape[0]
        return jac[0].new_empty((K, K), dtype=torch.float64)

    @torch.library.register_fake("mtl_fast::pcgrad_weights")
    def _pcgrad_weights_fake(gram: Tensor, orders: Tensor) -> Tensor:
        return gram.new_empty((gram.shape[0],), dtype=torch.float64)

    @torch.library.register_fake("mtl_fast::combine")
    def _combine_fake(jac: List[Tensor], weights: Tensor) -> List[Tensor]:
        return [chunk.new_empty(chunk.shape[1:]) for chunk in jac]

    @torch.library.register_fake("mtl_fast::combine_into")
    def _combine_into_fake(jac: List[Tensor], weights: Tensor, out: List[Tensor]) -> None:
        return None

    # Autograd: d<J_a, J_b>/dJ and d(sum_k w_k J_k) are plain matrix products, written with torch ops so that
    # they are differentiable again.
    def _gram_setup(ctx, inputs, output) -> None:
        (jac,) = inputs
        ctx.save_for_backward(*jac)

    def _gram_backward(ctx, grad: Tensor):
        jac = ctx.saved_tensors
        sym = grad + grad.mT
        return ([(sym.to(c.dtype) @ c.reshape(c.shape[0], -1)).reshape(c.shape) for c in jac],)

    def _combine_setup(ctx, inputs, output) -> None:
        jac, weights = inputs
        ctx.num_chunks = len(jac)
        ctx.save_for_backward(weights, *jac)

    def _combine_backward(ctx, grads: List[Optional[Tensor]]):
        weights, *jac = ctx.saved_tensors
        grad_jac, grad_w = [], torch.zeros_like(weights)
        for chunk, g in zip(jac, grads):
            if g is None:
                grad_jac.append(torch.zeros_like(chunk))
                continue
            grad_jac.append((weights.to(chunk.dtype)[:, None] * g.reshape(1, -1)).reshape(chunk.shape))
            grad_w = grad_w + (chunk.reshape(chunk.shape[0], -1) @ g.reshape(-1).to(chunk.dtype)).to(weights.dtype)
        return grad_jac, grad_w

    torch.library.register_autograd("mtl_fast::gram", _gram_backward, setup_context=_gram_setup)
    torch.library.register_autograd("mtl_fast::combine", _combine_backward, setup_context=_combine_setup)


def gram(chunks: Sequence[Tensor]) -> Tensor:
    if has_kernel(chunks[0].device.type):
        return torch.ops.mtl_fast.gram(list(chunks))
    return reference.gram(chunks)


def finite_or_zero(G: Tensor) -> Tuple[Tensor, Tensor]:
    """(G, or zeros in its place when any entry is NaN or infinite; whether G was all finite, a 0-dim bool).

    The torch paths' half of the compiled ops' rule (``gram_is_finite`` in csrc/kernels/common.h): the weights of
    a non-finite G (an overflowed or NaN gradient) are all NaN, and a stateful method keeps its state. A method
    computes on the zeroed G, which every one handles finitely (no solver failure), then :func:`nan_unless`
    marks the result. torch.where rather than a branch: no host synchronisation on accelerators.
    """
    finite = torch.isfinite(G).all()
    return torch.where(finite, G, torch.zeros_like(G)), finite


def nan_unless(finite: Tensor, values: Tensor) -> Tensor:
    """``values`` where ``finite`` (from :func:`finite_or_zero`) holds, else NaN of the same shape."""
    return torch.where(finite, values, torch.full_like(values, float("nan")))


def needs_derivative(*tensors: Tensor) -> bool:
    """Whether autograd will ask for a derivative through any of these tensors: one that requires grad in grad
    mode (backward, torch.func.grad), or one with a forward-mode tangent (torch.func.jvp, forward_ad.dual_level).
    The compiled ops that turn G into weights (PCGrad, GradVac, the QPs) have no derivative, so such inputs take
    the torch-ops paths instead, which are differentiable (the QPs through the linear solve on the final free
    set)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return fwAD._current_level >= 0 and any(fwAD.unpack_dual(t).tangent is not None for t in tensors)


def pcgrad_weights(G: Tensor, orders: Tensor) -> Tensor:
    if has_kernel(G.device.type) and not needs_derivative(G):
        return torch.ops.mtl_fast.pcgrad_weights(G, orders)
    G, finite = finite_or_zero(G)
    return nan_unless(finite, reference.pcgrad_weights(G, orders))


def combine(chunks: Sequence[Tensor], weights: Tensor) -> List[Tensor]:
    if has_kernel(chunks[0].device.type):
        return list(torch.ops.mtl_fast.combine(list(chunks), weights))
    return reference.combine(chunks, weights)


def combine_into(chunks: Sequence[Tensor], weights: Tensor, out: Sequence[Tensor]) -> None:
    """out[c] += sum_k weights[k] * chunks[c][k], in place."""
    if has_kernel(chunks[0].device.type):
        torch.ops.mtl_fast.combine_into(list(chunks), weights, list(out))
        return
    for o, c in zip(out, reference.combine(chunks, weights)):
        o.add_(c)
