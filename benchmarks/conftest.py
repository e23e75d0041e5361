"""Options of the pytest-benchmark suite: ``pytest benchmarks/ --benchmark-only [--mtl-full] [--mtl-device cuda]``."""
from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mtl_fast benchmarks")
    group.addoption("--mtl-full", action="store_true", help="the full scenario grid (default: the quick one)")
    group.addoption("--mtl-device", default="cpu", choices=("cpu", "cuda"), help="device to benchmark on")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrises ``case`` over every (scenario, method) pair of ``mtl-fast bench``'s scenarios."""
    if "case" not in metafunc.fixturenames:
        return
    import torch

    from mtl_fast.apps.bench.scenarios import scenarios

    device = metafunc.config.getoption("--mtl-device")
    if device == "cuda" and not torch.cuda.is_available():
        metafunc.parametrize("case", [pytest.param(None, marks=pytest.mark.skip(reason="no CUDA device"))])
        return
    chosen = scenarios(torch.device(device), quick=not metafunc.config.getoption("--mtl-full"))
    cases = [(s, name) for s in chosen for name in s.method_names]
    metafunc.parametrize("case", cases, ids=[f"{s.name}:{name}" for s, name in cases])
