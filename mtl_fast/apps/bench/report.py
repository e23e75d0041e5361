"""What a run prints and writes: the environment header, the columns' legend, a table per scenario, the
claims with pass or fail, the JSON document and the speedup figure."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

import mtl_fast

from .scenarios import FLOORS, SUBJECT

__all__ = ["environment", "format_table", "LEGEND", "Claim", "CLAIMS", "claim_results", "format_claims",
           "write_json", "write_plot", "plot_available"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> Optional[str]:
    """A git query about the checkout mtl_fast is imported from (None when it is an installed copy)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(mtl_fast.__file__)))
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device, memcpy_bytes_per_s: float) -> Dict[str, Any]:
    """The machine, the build and the memcpy ceiling of this run."""
    cuda = device.type == "cuda"
    csrc_changes = _git("status", "--porcelain", "--", "csrc")
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
        "device_type": device.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mtl_fast": mtl_fast.__version__,
        "backend": mtl_fast.backend(),
        "git_head": _git("rev-parse", "HEAD"),
        # The kernels measured: the committed csrc tree, and whether the working tree differed from it.
        "csrc_tree": _git("rev-parse", "HEAD:csrc"),
        "csrc_modified": bool(csrc_changes) if csrc_changes is not None else None,
        "memcpy_gbps": memcpy_bytes_per_s / 1e9,
    }
    try:
        env["torchjd"] = importlib.metadata.version("torchjd")
    except importlib.metadata.PackageNotFoundError:
        env["torchjd"] = None
    return env


def format_environment(env: Dict[str, Any]) -> str:
    lines = [f"mtl_fast {env['mtl_fast']}  backend={env['backend']}  torch {env['torch']}  CUDA {env['cuda'] or '-'}"
             f"  torchjd {env['torchjd'] or 'not installed'}",
             f"device: {env['device']}  ({env['cpu_count']} CPUs, {env['torch_threads']} torch threads)",
             f"build: HEAD {(env['git_head'] or '?')[:12]}  csrc tree {(env['csrc_tree'] or '?')[:12]}"
             + ("  (csrc modified in the working tree)" if env["csrc_modified"] else ""),
             f"memcpy ceiling: {env['memcpy_gbps']:.1f} GB/s (read + write of a large copy_, this run)"]
    if env["backend"] == "python":
        lines.append("compiled kernels not loaded: mtl_fast runs on its pure-PyTorch path (see mtl-fast info)")
    return "\n".join(lines)


def _time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _optional(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: List[Dict[str, Any]]) -> str:
    """One scenario's rows as a fixed-width table."""
    header = ("method", "median", "IQR", "mtl_fast x", "GB/s", "of memcpy", "peak MiB", "check")
    body = []
    for r in rows:
        memory = r.get("peak_memory_bytes")
        check = r["check"] + (f" ({r['max_rel_error']:.1e})" if r.get("max_rel_error") is not None else "")
        if r["check"] == "failed":
            check = f"REJECTED: {r.get('check_detail', '')}"
        body.append((r["method"], _time(r.get("median_s")), _time(r.get("iqr_s")),
                     _optional(r.get("speedup"), ".2f"), _optional(r.get("gbps"), ".1f"),
                     _optional(r.get("memcpy_fraction"), ".0%"),
                     _optional(None if memory is None else memory / 2**20, ".1f"), check))
    widths = [max(len(str(row[i])) for row in [header] + body) for i in range(len(header))]
    lines = [f"== {rows[0]['scenario']}"]
    lines += ["  " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()
              for row in [header] + body]
    return "\n".join(lines)


LEGEND = ("median, IQR: time per call over the timed repetitions (median, interquartile range); "
          "mtl_fast x: this method's median time / mtl_fast's (above 1: mtl_fast is that many times faster); "
          "GB/s: the least memory traffic the job needs / the median time; of memcpy: that as a share of a plain "
          "copy measured in this run; peak MiB: memory one call adds at its peak; check: agreement with the "
          "reference (largest relative error), or REJECTED, then not timed.")
"""What the table's columns mean, printed once above the tables."""


@dataclass(frozen=True)
class Claim:
    """A statement about two methods' medians in one scenario: ``slower`` over ``faster`` is the ratio; with
    a bound, the claim passes when the ratio is at least (``>=``) or at most (``<=``) it."""

    statement: str
    scenario: str
    slower: str
    faster: str
    bound: Optional[str] = None


CLAIMS: Tuple[Claim, ...] = (
    Claim("mtl_fast aggregates with PCGrad at least 5x faster than TorchJD (K=8, P=1e5)",
          "aggregate/pcgrad/K8-P100000-float32", "torchjd", SUBJECT, ">= 5"),
    Claim("mtl_fast aggregates with PCGrad at least 8x faster than TorchJD (K=32, P=1e5)",
          "aggregate/pcgrad/K32-P100000-float32", "torchjd", SUBJECT, ">= 8"),
    Claim("mtl_fast aggregates with PCGrad at least 1.5x faster than TorchJD (K=8, P=4e6)",
          "aggregate/pcgrad/K8-P4000000-float32", "torchjd", SUBJECT, ">= 1.5"),
    Claim("mtl_fast's PCGrad aggregation takes at most 2.6x the time of one pass w @ J (K=8, P=4e6)",
          "aggregate/pcgrad/K8-P4000000-float32", SUBJECT, "one_pass", "<= 2.6"),
    Claim("a PCGrad training step of the classic MTL network, per-task loop / mtl_fast.backward (K=8, B=64)",
          "train/classic/backward/K8-B64", "per_task_loop", SUBJECT),
    Claim("a PCGrad training step of the classic MTL network, TorchJD / mtl_fast.backward (K=8, B=64)",
          "train/classic/backward/K8-B64", "torchjd", SUBJECT),
    Claim("a PCGrad training step of the classic MTL network, mtl_fast.fork / the plain summed backward (K=8, B=64)",
          "train/classic/fork/K8-B64", SUBJECT, "sum"),
)
"""What the benchmark checks, at the points ``--quick`` measures. Claims without a bound are reported only."""


def claim_results(results: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The claims whose two methods are among ``results`` (medians), with the range the quartiles allow and,
    for a bounded claim, whether it passed."""
    by_key = {(r["scenario"], r["method"]): r for r in results if r.get("median_s")}
    out = []
    for claim in CLAIMS:
        a, b = by_key.get((claim.scenario, claim.slower)), by_key.get((claim.scenario, claim.faster))
        if a is None or b is None:
            continue
        ratio = a["median_s"] / b["median_s"]
        entry = {"claim": claim.statement, "scenario": claim.scenario, "ratio": ratio,
                 "ratio_low": a["q1_s"] / b["q3_s"], "ratio_high": a["q3_s"] / b["q1_s"], "bound": claim.bound}
        if claim.bound:
            op, value = claim.bound.split()
            entry["passed"] = ratio >= float(value) if op == ">=" else ratio <= float(value)
        out.append(entry)
    return out


def format_claims(claims: List[Dict[str, Any]]) -> str:
    lines = ["== claims (ratio of medians, [range the quartiles allow])"]
    for c in claims:
        verdict = "measured" if c["bound"] is None else ("PASS" if c["passed"] else "FAIL")
        lines.append(f"  {verdict:<8} {c['claim']}: {c['ratio']:.2f}x  [{c['ratio_low']:.2f}, "
                     f"{c['ratio_high']:.2f}]")
    return "\n".join(lines)


def write_json(path: str, env: Dict[str, Any], results: List[Dict[str, Any]],
               claims: List[Dict[str, Any]]) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "results": results, "claims": claims}, f, indent=1)
        f.write("\n")


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path: str, results: List[Dict[str, Any]], env: Dict[str, Any]) -> None:
    """Horizontal bars: for each scenario, how many times faster mtl_fast is than each contender (log x)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["method"] != SUBJECT and r["method"] not in FLOORS and r.get("speedup")]
    methods = sorted({r["method"] for r in rows})
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    by_key = {(r["scenario"], r["method"]): r["speedup"] for r in rows}
    height = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(scenarios) * max(1, len(methods)) ** 0.5 + 1.5))
    for m, method in enumerate(methods):
        ys = [s + m * height for s, name in enumerate(scenarios) if (name, method) in by_key]
        xs = [by_key[(name, method)] for name in scenarios if (name, method) in by_key]
        ax.barh(ys, xs, height=height, label=method)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([s + 0.4 - height / 2 for s in range(len(scenarios))], scenarios, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time of method / time of mtl_fast  (>1: mtl_fast is faster)")
    ax.set_title(f"mtl_fast speedups on {env['device']} (torch {env['torch']}, backend {env['backend']})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
