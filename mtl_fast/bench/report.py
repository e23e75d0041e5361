"""What a run prints and writes: the environment header, a table per scenario, the issue's target ratios,
the JSON document and the speedup figure."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

import mtl_fast
from mtl_fast import _ops

from .scenarios import FLOORS, SUBJECT

__all__ = ["environment", "format_table", "target_ratios", "write_json", "write_plot", "plot_available"]


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
        "extension_error": _ops.extension_error,
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
    if env["extension_error"]:
        lines.append(f"extension not loaded: {env['extension_error']}")
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


# Issue 2's performance targets: (label, scenario, numerator method, denominator method, bound).
# A ratio > 1 with numerator=peer means mtl_fast is that many times faster.
TARGETS: Tuple[Tuple[str, str, str, str, Optional[str]], ...] = (
    ("aggregate PCGrad, TorchJD / mtl_fast, K=8 P=1e5", "aggregate/pcgrad/K8-P100000-float32",
     "torchjd", SUBJECT, ">= 5"),
    ("aggregate PCGrad, TorchJD / mtl_fast, K=32 P=1e5", "aggregate/pcgrad/K32-P100000-float32",
     "torchjd", SUBJECT, ">= 8"),
    ("aggregate PCGrad, TorchJD / mtl_fast, K=8 P=4e6", "aggregate/pcgrad/K8-P4000000-float32",
     "torchjd", SUBJECT, ">= 1.5"),
    ("aggregate PCGrad, mtl_fast / one pass w@J, K=8 P=4e6", "aggregate/pcgrad/K8-P4000000-float32",
     SUBJECT, "one_pass", "<= 2.6"),
    ("backward PCGrad origin net, per-task loop / mtl_fast, K=8 B=64", "train/origin/backward/K8-B64",
     "per_task_loop", SUBJECT, None),
    ("backward PCGrad origin net, TorchJD / mtl_fast, K=8 B=64", "train/origin/backward/K8-B64",
     "torchjd", SUBJECT, None),
    ("fork PCGrad origin net, mtl_fast / plain sum backward, K=8 B=64", "train/origin/fork/K8-B64",
     SUBJECT, "sum", None),
)


def target_ratios(results: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's target ratios found among ``results`` (medians), with the range the quartiles allow."""
    by_key = {(r["scenario"], r["method"]): r for r in results if r.get("median_s")}
    out = []
    for label, scenario, num, den, bound in TARGETS:
        a, b = by_key.get((scenario, num)), by_key.get((scenario, den))
        if a is None or b is None:
            continue
        ratio = a["median_s"] / b["median_s"]
        entry = {"target": label, "scenario": scenario, "ratio": ratio,
                 "ratio_low": a["q1_s"] / b["q3_s"], "ratio_high": a["q3_s"] / b["q1_s"], "bound": bound}
        if bound:
            op, value = bound.split()
            entry["met"] = ratio >= float(value) if op == ">=" else ratio <= float(value)
        out.append(entry)
    return out


def format_targets(targets: List[Dict[str, Any]]) -> str:
    lines = ["== issue 2 targets (ratio of medians; [quartile range])"]
    for t in targets:
        verdict = "" if t["bound"] is None else f"  target {t['bound']}: {'met' if t['met'] else 'MISSED'}"
        lines.append(f"  {t['target']}: {t['ratio']:.2f}  [{t['ratio_low']:.2f}, {t['ratio_high']:.2f}]{verdict}")
    return "\n".join(lines)


def write_json(path: str, env: Dict[str, Any], results: List[Dict[str, Any]],
               targets: List[Dict[str, Any]]) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "results": results, "targets": targets}, f, indent=1)
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
