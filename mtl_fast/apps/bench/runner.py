"""Runs a scenario: checks every method against the oracle, times the ones that pass side by side, measures
their peak memory, and turns it all into result rows."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from .scenarios import SUBJECT, Built, Method, Scenario
from .timing import Timing, peak_memory, time_calls

__all__ = ["Settings", "QUICK", "FULL", "check_method", "run_scenario"]


@dataclass(frozen=True)
class Settings:
    """How long each method is timed. The budget is spread over ``rounds`` that visit the methods in turn,
    so that a burst of load from elsewhere on the machine hits every method rather than one."""

    budget_s: float
    min_reps: int
    max_reps: int
    warmup: int = 1
    rounds: int = 3


QUICK = Settings(budget_s=0.3, min_reps=3, max_reps=60)
FULL = Settings(budget_s=2.0, min_reps=6, max_reps=400, warmup=2)


def check_method(method: Method, tolerance: float) -> Tuple[str, Optional[float], Optional[str]]:
    """(status, relative error, why) for one method: 'ok', 'failed' or 'unchecked'.

    The relative error is max|result - oracle| / max|oracle|, both on the same pinned inputs.
    """
    if method.outputs is None:
        return "unchecked", None, None
    try:
        got, want = method.outputs()
    except Exception as exc:  # a method that cannot run is as disqualified as a wrong one
        return "failed", None, f"raised {type(exc).__name__}: {exc}"
    got, want = got.detach().double().flatten(), want.detach().double().flatten()
    if got.shape != want.shape:
        return "failed", None, f"result has {got.numel()} values, the oracle {want.numel()}"
    if not bool(torch.isfinite(got).all()):
        return "failed", None, "result is not finite"
    scale = max(float(want.abs().max()) if want.numel() else 0.0, torch.finfo(torch.float64).tiny)
    error = float((got - want).abs().max()) / scale if got.numel() else 0.0
    if error > tolerance:
        return "failed", error, f"differs from the oracle by {error:.3g} (relative), tolerance {tolerance:.3g}"
    return "ok", error, None


def run_scenario(scenario: Scenario, device: torch.device, settings: Settings, memcpy_bytes_per_s: float,
                 tick: Callable[[str], None] = lambda label: None) -> List[Dict[str, Any]]:
    """One result row per method of ``scenario``; ``tick`` is called as each method is done."""
    built: Built = scenario.build()
    rows: Dict[str, Dict[str, Any]] = {}
    timings: Dict[str, Timing] = {}
    for method in built.methods:
        status, error, why = check_method(method, method.tolerance or built.tolerance)
        rows[method.name] = {"scenario": scenario.name, "group": scenario.group, **scenario.params,
                             "method": method.name, "check": status, "max_rel_error": error}
        if why:
            rows[method.name]["check_detail"] = why
    timed = [m for m in built.methods if rows[m.name]["check"] != "failed"]
    per_round = Settings(settings.budget_s / settings.rounds, math.ceil(settings.min_reps / settings.rounds),
                         math.ceil(settings.max_reps / settings.rounds))
    for round_index in range(settings.rounds):
        for method in timed:
            timing = time_calls(method.run, device, budget_s=per_round.budget_s, min_reps=per_round.min_reps,
                                max_reps=per_round.max_reps, warmup=settings.warmup if round_index == 0 else 0)
            timings.setdefault(method.name, Timing([])).samples.extend(timing.samples)
    for method in built.methods:
        if rows[method.name]["check"] != "failed":
            rows[method.name]["peak_memory_bytes"] = peak_memory(method.run, device)
        tick(f"{scenario.name} {method.name}")
    subject = timings.get(SUBJECT)
    by_name = {m.name: m for m in built.methods}
    for name, timing in timings.items():
        row = rows[name]
        q1, q3 = timing.quartiles
        row.update(median_s=timing.median, q1_s=q1, q3_s=q3, iqr_s=q3 - q1, reps=len(timing.samples))
        # How many times faster mtl_fast is than this method (>1: mtl_fast wins).
        row["speedup"] = timing.median / subject.median if subject else None
        floor_bytes = by_name[name].floor_bytes
        if floor_bytes:
            row["gbps"] = floor_bytes / timing.median / 1e9
            row["memcpy_fraction"] = floor_bytes / timing.median / memcpy_bytes_per_s
    return [rows[m.name] for m in built.methods]
