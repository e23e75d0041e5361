"""ctypes bindings of the CUDA kernels built for the CPU emulator (csrc/emulation/emulated_kernels.cpp).

Takes and returns CPU tensors; every call raises when the emulated launch reports an error. The library comes
from scripts/cuda_emulation_check.sh, which names it in MTL_FAST_EMULATION_LIB.
"""
import ctypes
import os
from typing import List, Optional, Sequence

import torch

LIBRARY_VARIABLE = "MTL_FAST_EMULATION_LIB"
# kernels/launch.h Dtype, kernels/heads_layout.h HeadsReduction, kernels/nonneg_qp.h QpMethod.
DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
QP_METHODS = {"mgda": 0, "dualproj": 1, "upgrad": 2}
DEVICE_PROFILES = ("h100", "consumer", "one_sm")

_i32, _i64, _f64, _ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_double, ctypes.c_void_p


class HeadsTask(ctypes.Structure):
    _fields_ = [("offset", _i64), ("size", _i64), ("target", _i64), ("index", _i32), ("regression", _i32)]


_SIGNATURES = {
    "mtl_emulation_round_to_16_bits": [_ptr, _i64, _ptr, _ptr],
    "mtl_emulation_set_device": [ctypes.c_char_p],
    "mtl_emulation_gram": [_i64, _ptr, _ptr, _ptr, _i64, _ptr],
    "mtl_emulation_combine": [_i64, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _ptr],
    "mtl_emulation_pcgrad_weights": [_ptr, _ptr, _i64, _ptr],
    "mtl_emulation_nonneg_qp": [_ptr, _ptr, _i64, _i64, _i32, _f64, _i64, _i64, _ptr],
    "mtl_emulation_qp_weights": [_ptr, _ptr, _i64, _i32, _f64, _f64, _i64, _i64, _ptr],
    "mtl_emulation_heads_loss": [_i32, _ptr, _i64, _i64, _ptr, _i64, _ptr, _ptr, _i64, _i64, _i32, _ptr, _ptr],
    "mtl_emulation_heads_loss_backward": [_i32, _ptr, _i32, _ptr, _i64, _i64, _ptr, _i64, _ptr],
}


def _pointers(tensors: Sequence[torch.Tensor]):
    return (_ptr * len(tensors))(*[t.data_ptr() for t in tensors])


def _array(ctype, values):
    return (ctype * len(values))(*values)


class EmulatedKernels:
    def __init__(self, path: str):
        self._lib = ctypes.CDLL(path)
        for name, argtypes in _SIGNATURES.items():
            function = getattr(self._lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int

    def _call(self, name: str, *args) -> None:
        error = getattr(self._lib, name)(*args)
        if error != 0:
            raise RuntimeError(f"{name}: emulated launch failed with cudaError {error}")

    def set_device(self, profile: str) -> None:
        if self._lib.mtl_emulation_set_device(profile.encode()) != 0:
            raise ValueError(f"no device profile {profile!r}")

    def round_to_16_bits(self, x: torch.Tensor):
        """(float16, bfloat16) of the float32 x by the emulator's conversions."""
        x = x.float().contiguous()
        half, bfloat16 = torch.empty_like(x, dtype=torch.float16), torch.empty_like(x, dtype=torch.bfloat16)
        self._call("mtl_emulation_round_to_16_bits", x.data_ptr(), x.numel(), half.data_ptr(), bfloat16.data_ptr())
        return half, bfloat16

    def gram(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        K = chunks[0].shape[0]
        out = torch.full((K, K), float("nan"), dtype=torch.float64)
        self._call("mtl_emulation_gram", len(chunks), _pointers(chunks), _array(_i64, [c[0].numel() for c in chunks]),
                   _array(_i32, [DTYPES[c.dtype] for c in chunks]), K, out.data_ptr())
        return out

    def combine_into(self, chunks: Sequence[torch.Tensor], weights: torch.Tensor, outs: Sequence[torch.Tensor],
                     accumulate: bool) -> None:
        """outs[c] (+)= sum_k weights[k] chunks[c][k]; each out contiguous, of its chunk's dtype."""
        K = chunks[0].shape[0]
        w = weights.double().contiguous()
        self._call("mtl_emulation_combine", len(chunks), _pointers(chunks), _pointers(outs),
                   _array(_i64, [c[0].numel() for c in chunks]), _array(_i32, [DTYPES[c.dtype] for c in chunks]),
                   _array(_i32, [int(accumulate)] * len(chunks)), K, w.data_ptr())

    def combine(self, chunks: Sequence[torch.Tensor], weights: torch.Tensor) -> List[torch.Tensor]:
        outs = [torch.full(c.shape[1:], float("nan"), dtype=c.dtype) for c in chunks]
        self.combine_into(chunks, weights, outs, accumulate=False)
        return outs

    def pcgrad_weights(self, G: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        K = G.shape[0]
        G, orders = G.double().contiguous(), orders.to(torch.int64).contiguous()
        out = torch.full((K,), float("nan"), dtype=torch.float64)
        self._call("mtl_emulation_pcgrad_weights", G.data_ptr(), orders.data_ptr(), K, out.data_ptr())
        return out

    def nonneg_qp(self, M: torch.Tensor, Q: torch.Tensor, simplex: bool, tol: float, max_iter: int,
                  patience: int) -> torch.Tensor:
        B, K = Q.shape
        M, Q = M.double().contiguous(), Q.double().contiguous()
        Z = torch.full((B, K), float("nan"), dtype=torch.float64)
        self._call("mtl_emulation_nonneg_qp", M.data_ptr(), Q.data_ptr(), B, K, int(simplex), tol, max_iter, patience,
                   Z.data_ptr())
        return Z

    def qp_weights(self, G: torch.Tensor, pref: Optional[torch.Tensor], method: str, regularization: float,
                   tol: float, max_iter: int, patience: int) -> torch.Tensor:
        K = G.shape[0]
        G = G.double().contiguous()
        u = None if pref is None else pref.double().contiguous()
        out = torch.full((K,), float("nan"), dtype=torch.float64)
        self._call("mtl_emulation_qp_weights", G.data_ptr(), None if u is None else u.data_ptr(), K,
                   QP_METHODS[method], regularization, tol, max_iter, patience, out.data_ptr())
        return out

    @staticmethod
    def _tasks(sizes: Sequence[int], regression: Sequence[bool]):
        """The HeadsTask records of csrc/heads_checks.h heads_tasks."""
        tasks, offset, classification, value_column = [], 0, 0, 0
        for k, (size, is_regression) in enumerate(zip(sizes, regression)):
            target = value_column if is_regression else classification
            tasks.append(HeadsTask(offset, size, target, k, int(is_regression)))
            value_column += size if is_regression else 0
            classification += 0 if is_regression else 1
            offset += size
        return (HeadsTask * len(tasks))(*tasks)

    def heads_loss(self, logits: torch.Tensor, class_targets: torch.Tensor, value_targets: torch.Tensor,
                   sizes: Sequence[int], regression: Sequence[bool], ignore_index: int, reduction: str):
        """(losses, grad) of mtl_fast::heads_loss."""
        batch, width = logits.shape
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        K = len(sizes)
        losses = torch.full((K, batch) if reduction == "none" else (K,), float("nan"), dtype=acc)
        grad = torch.full_like(logits, float("nan"))
        self._call("mtl_emulation_heads_loss", DTYPES[logits.dtype], logits.data_ptr(), batch, width,
                   self._tasks(sizes, regression), K, class_targets.data_ptr(), value_targets.data_ptr(),
                   value_targets.shape[1], ignore_index, REDUCTIONS[reduction], losses.data_ptr(), grad.data_ptr())
        return losses, grad

    def heads_loss_backward(self, grad_losses: torch.Tensor, grad: torch.Tensor, sizes: Sequence[int],
                            regression: Sequence[bool]) -> torch.Tensor:
        batch, width = grad.shape
        acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
        scales = grad_losses.to(acc).contiguous()
        out = torch.full_like(grad, float("nan"))
        if out.numel() == 0:
            return out
        self._call("mtl_emulation_heads_loss_backward", DTYPES[grad.dtype], scales.data_ptr(),
                   int(grad_losses.dim() == 2), grad.data_ptr(), batch, width, self._tasks(sizes, regression),
                   len(sizes), out.data_ptr())
        return out


def load() -> Optional[EmulatedKernels]:
    path = os.environ.get(LIBRARY_VARIABLE)
    return EmulatedKernels(path) if path else None
