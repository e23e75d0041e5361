"""The benchmark harness behind ``mtl-fast bench``: mtl_fast against its reference, the per-task loop and
TorchJD, every method checked against the oracle before it is timed.

The scenarios (:mod:`mtl_fast.apps.bench.scenarios`) also drive the pytest-benchmark suite in benchmarks/.
"""
from .cli import main

__all__ = ["main"]
