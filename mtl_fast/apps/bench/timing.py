"""How the benchmark measures: wall time per call (CUDA events on GPUs), peak memory of one call, and the
memcpy ceiling that achieved bandwidths are reported against."""
from __future__ import annotations

import ctypes
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import torch

__all__ = ["Timing", "time_calls", "peak_memory", "memcpy_bandwidth", "synchronize"]


@dataclass
class Timing:
    """Seconds per call over the timed repetitions."""

    samples: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def quartiles(self) -> tuple:
        """(q1, q3); with fewer than two samples both are the single sample."""
        if len(self.samples) < 2:
            return self.samples[0], self.samples[0]
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, *, budget_s: float, min_reps: int,
               max_reps: int, warmup: int = 1) -> Timing:
    """Times ``fn`` repeatedly after ``warmup`` calls: at least ``min_reps`` calls, then more until
    ``budget_s`` seconds of timed calls or ``max_reps`` calls.

    On CUDA each call is bracketed by events on the current stream and the device is synchronised before
    it, so queued work from one call never lands in the next call's time.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples: List[float] = []
    spent = 0.0
    while len(samples) < min_reps or (spent < budget_s and len(samples) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            begin = time.perf_counter()
            fn()
            seconds = time.perf_counter() - begin
        samples.append(seconds)
        spent += seconds
    return Timing(samples)


# glibc keeps freed blocks resident in its heap and hands them out again, so a call whose tensors fit in
# that free space would show no peak-RSS growth at all. While measuring, the heap's free pages are released
# first (malloc_trim) and the mmap threshold is pinned low (at its default, dynamic setting a freed large
# block raises it), so that every large tensor is fresh memory that shows up in VmHWM.
_M_MMAP_THRESHOLD = -3
_MEASURE_MMAP_THRESHOLD = 128 * 1024
_RESTORED_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's cap for the dynamic threshold on 64-bit


def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def _fresh_heap() -> Iterator[None]:
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, _MEASURE_MMAP_THRESHOLD)
        libc.malloc_trim(0)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _RESTORED_MMAP_THRESHOLD)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes by which one call of ``fn`` raises memory use at its peak above what was in use before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident set (VmHWM, reset through
    /proc/self/clear_refs) above the resident set before the call; torch's CPU allocations are invisible to
    tracemalloc, which only sees Python objects. None where neither is available (non-Linux CPU).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        with _fresh_heap():
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            before = _status_kib("VmRSS")
            fn()
            return max(0, _status_kib("VmHWM") - before) * 1024
    except OSError:
        return None


def memcpy_bandwidth(device: torch.device, nbytes: int, *, budget_s: float) -> float:
    """Bytes per second of ``dst.copy_(src)`` on a buffer of ``nbytes`` (read + write counted): the ceiling
    that memory-bound kernels are reported against, measured in the same run."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing = time_calls(lambda: dst.copy_(src), device, budget_s=budget_s, min_reps=5, max_reps=50)
    return 2 * src.numel() * 4 / timing.median
