"""pytest-benchmark over the scenarios of ``mtl-fast bench`` (mtl_fast/apps/bench/scenarios.py), one benchmark per
scenario and method. Not part of the default test run (pyproject's testpaths is tests/):

    pytest benchmarks/ --benchmark-only [--mtl-full] [--mtl-device cuda] [--benchmark-json out.json]

Each method is checked against the oracle first; a wrong one fails instead of being timed. On CUDA every
timed call ends with a device synchronisation so that the wall time covers the queued kernels.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import pytest
import torch

from mtl_fast.apps.bench.runner import check_method
from mtl_fast.apps.bench.scenarios import Built, Scenario
from mtl_fast.apps.bench.timing import synchronize

_built: Dict[str, Built] = {}


def _build(scenario: Scenario) -> Built:
    """The scenario's inputs, built once for all its methods (cases of one scenario run consecutively)."""
    if scenario.name not in _built:
        _built.clear()  # at most one scenario's tensors alive at a time
        _built[scenario.name] = scenario.build()
    return _built[scenario.name]


def test_scenario(benchmark: Any, case: Tuple[Scenario, str], request: pytest.FixtureRequest) -> None:
    scenario, name = case
    built = _build(scenario)
    method = next(m for m in built.methods if m.name == name)
    status, error, why = check_method(method, method.tolerance or built.tolerance)
    if status == "failed":
        pytest.fail(f"{scenario.name} {name}: {why}")
    benchmark.extra_info.update(scenario=scenario.name, method=name, check=status, max_rel_error=error,
                                **scenario.params)
    device = torch.device(request.config.getoption("--mtl-device"))

    def call() -> None:
        method.run()
        synchronize(device)

    benchmark(call)
