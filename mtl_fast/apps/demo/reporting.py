"""What the demo prints and writes: the seed-noise band, the gradient-conflict summary, the table, the plot and
the JSON document."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mtl_fast import diagnostics

from .strategies import LEVELS
from .training import StrategyRun

__all__ = ["NoiseBand", "noise_band", "against_the_rest", "mean_cosines", "conflict_lines", "table", "plot", "document"]

# Two-sided 95% quantiles of Student's t by degrees of freedom (seeds - 1): a few seeds estimate the spread
# loosely, and the t quantile widens the band to match; from 30 on, the normal one.
_T_QUANTILES = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13, 2.12,
                2.11, 2.10, 2.09, 2.09, 2.08, 2.07, 2.07, 2.06, 2.06, 2.06, 2.05, 2.05, 2.05)


def _t_quantile(dof: int) -> float:
    return _T_QUANTILES[dof - 1] if dof <= len(_T_QUANTILES) else 1.96


@dataclass
class NoiseBand:
    """Per task, the plain sum's mean accuracy over its seeds and the smallest difference from it that exceeds
    the seed-to-seed noise (None with fewer than two seeds): the half-width of a 95% prediction interval for one
    more run of the sum."""

    seeds: int
    mean: List[float]
    threshold: Optional[List[float]]

    def verdict(self, task: int, accuracy: float) -> str:
        """'+' above the band, '-' below it, '' within it (or without a band)."""
        if self.threshold is None:
            return ""
        difference = accuracy - self.mean[task]
        return "+" if difference > self.threshold[task] else "-" if difference < -self.threshold[task] else ""


def noise_band(sum_runs: Sequence[StrategyRun], val_size: int) -> NoiseBand:
    """The band from several seeds of the plain sum (initialisation and batch order differ, the data not).

    A strategy's single run and the seed mean both carry noise, so the deviation of their difference is
    s * sqrt(1 + 1/S) for a seed-to-seed deviation s over S seeds, scaled by Student's t for S - 1 degrees of
    freedom; one validation image is the least difference there can be.
    """
    accuracies = [r.accuracy for r in sum_runs if r.error is None]
    mean = [statistics.fmean(column) for column in zip(*accuracies)]
    if len(accuracies) < 2:
        return NoiseBand(len(accuracies), mean, None)
    width = _t_quantile(len(accuracies) - 1) * math.sqrt(1 + 1 / len(accuracies))
    threshold = [max(width * statistics.stdev(column), 1 / val_size) for column in zip(*accuracies)]
    return NoiseBand(len(accuracies), mean, threshold)


def against_the_rest(G: Tensor) -> Tensor:
    """(K,) cosine between each task's gradient and the sum of the other tasks' gradients, from G alone."""
    G = G.double()
    total = G.sum()
    row = G.sum(dim=1)
    rest_norm = (total - 2 * row + G.diagonal()).clamp_min(0).sqrt()  # |sum_j g_j - g_k|
    return (row - G.diagonal()) / (G.diagonal().sqrt() * rest_norm).clamp_min(torch.finfo(G.dtype).tiny)


def mean_cosines(runs: Sequence[StrategyRun]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(the (K, K) cosine matrix, each task's cosine with the rest), averaged over every measurement of
    ``runs``; (None, None) when none was measured."""
    grams = [G for r in runs for G in r.grams]
    if not grams:
        return None, None
    cosines = torch.stack([diagnostics.cosine_matrix(G) for G in grams]).mean(dim=0)
    return cosines, torch.stack([against_the_rest(G) for G in grams]).mean(dim=0)


def conflict_lines(cosines: Tensor, against_rest: Tensor, task_names: Sequence[str], measurements: int) -> List[str]:
    """The gradient-conflict summary: each task's mean cosine with the other tasks' combined gradient, the most
    conflicting first, and that task's cosine with each other task."""
    order = sorted(range(len(task_names)), key=lambda k: float(against_rest[k]))
    worst = order[0]
    lines = [f"Gradient conflict under the plain sum (the tasks' gradients of the trunk's parameters on "
             f"{measurements} measurements):",
             "  mean cosine with the other tasks' combined gradient: "
             + ", ".join(f"{task_names[k]} {float(against_rest[k]):+.2f}" for k in order)]
    if float(against_rest[worst]) < 0:
        pairs = ", ".join(f"{task_names[j]} {float(cosines[worst, j]):+.2f}"
                          for j in range(len(task_names)) if j != worst)
        lines.append(f"  {task_names[worst]} conflicts with the others (its mean cosine with each: {pairs}): a "
                     f"step that lowers its loss tends to raise theirs.")
    else:
        lines.append("  no task's gradient points against the others' on average.")
    return lines


def table(runs: Sequence[StrategyRun], task_names: Sequence[str], chance: Sequence[float], band: NoiseBand) -> str:
    """The final table: validation accuracy (%) per task and strategy, marked against the seed noise, with the
    time per step and what each strategy does."""
    widths = [max(7, len(t) + 1) for t in task_names] + [6, 8]
    name_width = max([len("strategy"), len(f"sum, {band.seeds} seeds")] + [len(r.strategy.name) for r in runs])

    def row(name: str, level: str, cells: Sequence[str], what: str = "") -> str:
        line = f"{name:<{name_width}}  {level:<14}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths))
        return f"{line}  {what}".rstrip()

    def percent(values: Sequence[float], marks: Sequence[str] = ()) -> List[str]:
        marks = list(marks) or [""] * len(values)
        return [f"{100 * v:.1f}{m}" for v, m in zip(values, marks)] + [f"{100 * statistics.fmean(values):.1f}"]

    header = row("strategy", "level", [*task_names, "mean", "ms/step"], "what it does")
    lines = [header, "-" * len(header), row("chance", "", percent(chance))]
    if band.seeds > 1:
        lines.append(row(f"sum, {band.seeds} seeds", "parameter", percent(band.mean),
                         "the plain sum's mean over seeds: the reference for + and -"))
    for run in runs:
        s = run.strategy
        if run.error is not None:
            lines.append(row(s.name, s.level, []) + f"  failed: {run.error}")
        else:
            marks = [band.verdict(k, a) for k, a in enumerate(run.accuracy)]
            step_ms = "-" if run.median_step_ms is None else f"{run.median_step_ms:.1f}"
            lines.append(row(s.name, s.level, percent(run.accuracy, marks) + [step_ms], s.explanation))
    lines.append("")
    lines.append("levels: " + "; ".join(f"{level} = {meaning}" for level, meaning in LEVELS.items()) + ".")
    if band.threshold is None:
        lines.append("No seed-noise band: it takes at least two seeds of the plain sum (--noise-seeds).")
    else:
        lines.append(f"+ / -: above / below the plain sum's mean by more than the seed noise (outside the 95% range "
                     f"of one more run of the sum, from {band.seeds} seeds of it in this run: "
                     + ", ".join(f"{t} {100 * d:.1f}" for t, d in zip(task_names, band.threshold)) + " points).")
    return "\n".join(lines)


def plot(path: Path, runs: Sequence[StrategyRun], task_names: Sequence[str], chance: Sequence[float],
         cosines: Optional[Tensor], title: str) -> None:
    """Learning curves, one panel per task and one line per strategy (solid: parameter level, densely dashed:
    the Gram engine, dashed: representation level, dotted: loss weighting; chance dash-dotted), and a panel of
    the tasks' mean gradient cosines under the plain sum."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    panels = len(task_names) + (cosines is not None)
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.4 * rows), squeeze=False)
    # tab20 pairs a dark and a light shade of 10 hues: the first ten strategies take the dark ones, the next ten
    # the light ones, so neighbours in the legend differ in hue. The level sets the line style.
    colours = plt.get_cmap("tab20")
    styles = {"parameter": "-", "engine": (0, (5, 1)), "representation": "--", "loss": ":"}
    for k, (task, ax) in enumerate(zip(task_names, axes.flat)):
        for i, run in enumerate(runs):
            if run.error is None:
                ax.plot(run.curve_steps, [100 * acc[k] for acc in run.curve], label=run.strategy.name,
                        color=colours((2 * i) % 20 + (i // 10) % 2), linestyle=styles[run.strategy.level])
        ax.axhline(100 * chance[k], color="black", linestyle="-.", linewidth=0.8, label="chance")
        ax.set_title(task)
        ax.set_ylim(0, 102)  # a curve at 100% stays visible above the frame
        ax.set_xlabel("training step")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
    if cosines is not None:
        ax = axes.flat[len(task_names)]
        # The colour scale spans the off-diagonal cosines, so a conflict of -0.1 shows (the diagonal is 1).
        off_diagonal = cosines - torch.diag(cosines.diagonal())
        reach = max(0.1, float(off_diagonal.abs().max()))
        image = ax.imshow(cosines.numpy(), cmap="RdBu", vmin=-reach, vmax=reach)
        ax.set_xticks(range(len(task_names)), task_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(task_names)), task_names, fontsize=8)
        for i in range(len(task_names)):
            for j in range(len(task_names)):
                value = float(cosines[i, j])
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.7 * reach else "black")
        ax.set_title("mean cosine of the tasks' gradients\n(plain sum)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 6), 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def document(runs: Sequence[StrategyRun], sum_runs: Sequence[StrategyRun], band: NoiseBand,
             cosines: Optional[Tensor], against_rest: Optional[Tensor], loop: Optional[Dict[str, float]],
             task_names: Sequence[str],
             num_classes: Sequence[int], chance: Sequence[float], config: Dict[str, object],
             environment: Dict[str, object], wall_seconds: float) -> dict:
    """The ``--output`` JSON document."""
    return {
        "results": [{"strategy": r.strategy.name, "task": t, "accuracy": a, "chance": c,
                     "beyond_noise": band.verdict(k, a) or None}
                    for r in runs if r.error is None
                    for k, (t, a, c) in enumerate(zip(task_names, r.accuracy, chance))],
        "strategies": [r.to_json(task_names) for r in runs],
        "noise": {"sum_seeds": [r.to_json(task_names) for r in sum_runs], "mean": dict(zip(task_names, band.mean)),
                  "threshold": None if band.threshold is None else dict(zip(task_names, band.threshold))},
        "cosines": None if cosines is None else {"tasks": list(task_names), "matrix": cosines.tolist(),
                                                 "with_the_rest": against_rest.tolist()},
        "per_task_loop": loop,
        "tasks": [{"name": t, "classes": c, "chance": p} for t, c, p in zip(task_names, num_classes, chance)],
        "config": config,
        "environment": environment,
        "wall_seconds": wall_seconds,
    }
