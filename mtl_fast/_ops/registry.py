"""Loads the compiled extension and answers which ops have a kernel where.

Importing ``mtl_fast._C`` runs the C++ registrations (csrc/ops.cpp holds every schema, csrc/cpu and csrc/cuda the
kernels). Everything in :mod:`mtl_fast._ops` asks :func:`has_kernel` before calling an op and otherwise takes the
op's twin in :mod:`mtl_fast.reference`, which has the same arguments and the same contract.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import Dict, FrozenSet, Iterator, Optional

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

_BUILD_HINT = "build it with `bash scripts/install.sh` (or `pip install --no-build-isolation -e .`)"


def _load_extension() -> Optional[str]:
    """Imports mtl_fast._C; returns why it is unavailable, or None."""
    if os.environ.get("MTL_FAST_NO_EXTENSION", "").strip().lower() in ("1", "true", "yes", "on"):
        return "disabled by MTL_FAST_NO_EXTENSION=1"
    try:
        importlib.import_module("mtl_fast._C")
    except ModuleNotFoundError as exc:
        if exc.name != "mtl_fast._C":
            raise
        reason = "the compiled extension was not built"
        advice = f"To get the C++ kernels, {_BUILD_HINT}."
    except Exception as exc:  # a build that does not load (ABI mismatch, missing symbol) means the fallback
        reason = f"the compiled extension is broken ({type(exc).__name__}: {exc})"
        advice = f"It was probably built against another torch: rebuild it ({_BUILD_HINT})."
    else:
        return None
    warnings.warn(f"mtl_fast: {reason}; using the pure-PyTorch path, which is correct but slower. {advice}",
                  RuntimeWarning, stacklevel=3)
    return reason


extension_error: Optional[str] = _load_extension()


def _kernel_devices() -> Dict[str, FrozenSet[str]]:
    """For every mtl_fast op, the device types ('cpu', 'cuda') its compiled kernels serve; {} without the
    extension. Read once: the dispatcher's table does not change after the import."""
    if extension_error is not None:
        return {}
    devices = {}
    for name in torch._C._dispatch_get_all_op_names():
        if name.startswith("mtl_fast::"):
            devices[name[len("mtl_fast::"):]] = frozenset(
                device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
                if torch._C._dispatch_has_kernel_for_dispatch_key(name, key))
    return devices


_KERNEL_DEVICES = _kernel_devices()
_reference_only = False


@contextlib.contextmanager
def reference_only() -> Iterator[None]:
    """Within this block every op takes its :mod:`mtl_fast.reference` path, as without the extension (the
    benchmarks time that path side by side with the kernels)."""
    global _reference_only
    previous, _reference_only = _reference_only, True
    try:
        yield
    finally:
        _reference_only = previous


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the compiled ``mtl_fast::<op>`` serves tensors of this device type ('cpu', 'cuda')."""
    return not _reference_only and device_type in _KERNEL_DEVICES.get(op, ())


def defined(op: str) -> bool:
    """Whether the loaded extension defines ``mtl_fast::<op>`` (its fake and autograd are registered then)."""
    return op in _KERNEL_DEVICES


def kernels_built(device_type: str) -> bool:
    """Whether the extension holds kernels for this device type, visible device or not."""
    return any(device_type in devices for devices in _KERNEL_DEVICES.values())


def backend() -> str:
    """Which kernels run here: 'cuda' (a GPU is visible and the CUDA kernels are built; the C++ CPU kernels too),
    'cpp' (the C++ CPU kernels) or 'python' (the pure-PyTorch path). CUDA kernels built on a machine without a
    GPU do not make it 'cuda': :func:`mtl_fast.backend_info` says so."""
    if kernels_built("cuda") and torch.cuda.is_available():
        return "cuda"
    if kernels_built("cpu"):
        return "cpp"
    return "python"


def backend_info() -> str:
    """One line for people: the backend and why (what was built, whether a GPU is visible)."""
    if extension_error is not None:
        return f"python: {extension_error}"
    if kernels_built("cuda") and not torch.cuda.is_available():
        return "cpp: C++ CPU kernels; the CUDA kernels are built, but no GPU is visible"
    if backend() == "cuda":
        return f"cuda: CUDA kernels on {torch.cuda.get_device_name()}, and the C++ CPU kernels"
    return "cpp: C++ CPU kernels (this build has no CUDA kernels)"


def needs_derivative(*tensors: Tensor) -> bool:
    """Whether autograd will ask for a derivative through any of these tensors: one that requires grad in grad
    mode (backward, torch.func.grad), or one with a forward-mode tangent (torch.func.jvp, forward_ad). The ops that
    turn G into weights have no derivative, so such inputs take their differentiable reference instead."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return True
    return fwAD._current_level >= 0 and any(fwAD.unpack_dual(t).tangent is not None for t in tensors)
