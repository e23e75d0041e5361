"""``mtl-fast demo toy``: the two-task toy problem of the CAGrad paper (Liu et al. 2021), also used by the
Nash-MTL paper (Navon et al. 2022).

Two losses of a point x in R^2. Above the x1 axis each is a log-shaped valley, below it a wide quadratic bowl,
blended by tanh gates; the two tasks' optima sit at opposite ends of a segment near x2 = -8.4, and the points in
between are the Pareto set, where one loss can fall only if the other rises. From the papers' three starting
points, the plain sum of the gradients is dragged by whichever loss is steeper and can stall far from that set;
the conflict-aware methods get there. Each method's update is ``mtl_fast.aggregate`` of the 2 x 2 Jacobian, fed
to Adam as the point's gradient.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import mtl_fast as mf

__all__ = ["toy_losses", "pareto_front", "Trajectory", "run_toy", "TOY_METHODS", "STARTS", "main"]

STARTS: Tuple[Tuple[float, float], ...] = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0))
"""The CAGrad paper's three starting points."""

TOY_METHODS: Dict[str, Callable[[], mf.Aggregator]] = {
    "sum": mf.Sum,
    "pcgrad": lambda: mf.PCGrad(seed=0),
    "mgda": mf.MGDA,
    "cagrad": mf.CAGrad,
    "imtlg": mf.IMTLG,
    "nashmtl": mf.NashMTL,
    "upgrad": mf.UPGrad,
    "dualproj": mf.DualProj,
    "alignedmtl": mf.AlignedMTL,
    "gradvac": lambda: mf.GradVac(seed=0),
}
"""The methods the toy runs, each a fresh aggregator per trajectory."""

_LOG_FLOOR = 5e-6  # keeps the log valleys finite at their bottom line
_BOX = 10.0  # the plotted square, [-10, 10]^2, holds the starting points and the Pareto set
_GRID = 401
_PARETO_TOLERANCE = 0.05  # how far, in loss, a point may stay dominated and still count as on the Pareto set


def toy_losses(x: Tensor) -> Tensor:
    """The two losses, shape (..., 2), at points ``x`` of shape (..., 2)."""
    x1, x2 = x[..., 0], x[..., 1]
    upper = torch.tanh(x2 / 2).clamp_min(0)  # 1 far above the x1 axis, 0 below it
    lower = torch.tanh(-x2 / 2).clamp_min(0)
    valley1 = (0.5 * (-x1 - 7) - torch.tanh(-x2)).abs().clamp_min(_LOG_FLOOR).log() + 6
    valley2 = (0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs().clamp_min(_LOG_FLOOR).log() + 6
    bowl1 = ((x1 - 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    bowl2 = ((x1 + 7) ** 2 + 0.1 * (x2 + 8) ** 2) / 10 - 20
    return torch.stack([valley1 * upper + bowl1 * lower, valley2 * upper + bowl2 * lower], dim=-1)


def _grid() -> Tuple[Tensor, Tensor]:
    """(points (G*G, 2), their losses (G*G, 2)) on a regular grid over the plotted square, in float64."""
    axis = torch.linspace(-_BOX, _BOX, _GRID, dtype=torch.float64)
    points = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
    return points, toy_losses(points)


def pareto_front(points: Tensor, losses: Tensor) -> Tuple[Tensor, Tensor]:
    """The points (and their losses) that no other one beats on both losses, in order of the first loss."""
    order = torch.argsort(losses[:, 0])
    second = losses[order, 1]
    best_before = torch.cat([second.new_full((1,), math.inf), torch.cummin(second, dim=0).values[:-1]])
    keep = order[second < best_before]
    return points[keep], losses[keep]


def _on_front(loss: Tensor, front: Tensor) -> bool:
    """Whether no point of the front beats ``loss`` by more than the tolerance on both losses."""
    return not bool(((front < loss - _PARETO_TOLERANCE).all(dim=1)).any())


@dataclass
class Trajectory:
    """One method's path from one starting point."""

    method: str
    start: Tuple[float, float]
    points: Tensor  # (steps + 1, 2)
    final_losses: Tuple[float, float]
    on_pareto_set: bool


def run_toy(methods: Sequence[str], steps: int, lr: float,
            starts: Sequence[Tuple[float, float]] = STARTS) -> List[Trajectory]:
    """Adam on the point, with each method's update of the two losses' gradients, from every start.

    The starts move together as the rows of one tensor: Adam is elementwise, so that is one independent Adam
    per start, and every start keeps its own aggregator (some have state).
    """
    _, front = pareto_front(*_grid())
    trajectories = []
    for name in methods:
        aggregators = [TOY_METHODS[name]() for _ in starts]
        x = torch.tensor(starts, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.Adam([x], lr=lr)
        path = [x.detach().clone()]
        for _ in range(steps):
            # One copy of the points per task, so one backward pass gives both tasks' gradients at every start.
            copies = x.detach().expand(2, -1, -1).clone().requires_grad_()
            losses = toy_losses(copies)
            grads, = torch.autograd.grad(losses[0, :, 0].sum() + losses[1, :, 1].sum(), copies)
            jacobians = grads.transpose(0, 1)  # (starts, 2 tasks, 2 coordinates)
            x.grad = torch.stack([mf.aggregate(J, a).to(x.dtype) for J, a in zip(jacobians, aggregators)])
            optimizer.step()
            path.append(x.detach().clone())
        paths = torch.stack(path, dim=1)
        final = toy_losses(x.detach())
        for i, start in enumerate(starts):
            trajectories.append(Trajectory(name, start, paths[i], (float(final[i, 0]), float(final[i, 1])),
                                           _on_front(final[i], front)))
    return trajectories


def _report(trajectories: Sequence[Trajectory], steps: int, lr: float) -> str:
    lines = [f"Adam, lr {lr}, {steps} steps from each of the starting points "
             + ", ".join(f"({a:g}, {b:g})" for a, b in STARTS) + ". Where each method ends:",
             f"{'method':<11} {'start':<12} {'end':<16} {'loss 1':>8} {'loss 2':>8}  on the Pareto set"]
    for t in trajectories:
        end = t.points[-1]
        lines.append(f"{t.method:<11} {f'({t.start[0]:g}, {t.start[1]:g})':<12} "
                     f"{f'({float(end[0]):.2f}, {float(end[1]):.2f})':<16} {t.final_losses[0]:8.2f} "
                     f"{t.final_losses[1]:8.2f}  {'yes' if t.on_pareto_set else 'no'}")
    by_method: Dict[str, List[bool]] = {}
    for t in trajectories:
        by_method.setdefault(t.method, []).append(t.on_pareto_set)
    lines.append("")
    for name, reached in by_method.items():
        lines.append(f"  {name:<11} reached the Pareto set from {sum(reached)} of {len(reached)} starting points")
    return "\n".join(lines)


def _plot(path: Path, trajectories: Sequence[Trajectory], steps: int, lr: float) -> None:
    """One panel per method: the contours of the mean loss, the Pareto set, the three paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    points, losses = _grid()
    front_points, _ = pareto_front(points, losses)
    mean = losses.mean(dim=1).reshape(_GRID, _GRID)
    axis = torch.linspace(-_BOX, _BOX, _GRID)
    methods = list(dict.fromkeys(t.method for t in trajectories))
    columns = min(5, len(methods))
    rows = math.ceil(len(methods) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, methods):
        ax.contour(axis.numpy(), axis.numpy(), mean.numpy(), levels=15, cmap="viridis", linewidths=0.8)
        ax.plot(front_points[:, 0].numpy(), front_points[:, 1].numpy(), ".", color="grey", markersize=1.5)
        for i, t in enumerate(tr for tr in trajectories if tr.method == name):
            ax.plot(t.points[:, 0].numpy(), t.points[:, 1].numpy(), color=colours(i), linewidth=1.5)
            ax.plot(*t.start, "o", color=colours(i), markersize=5)
            ax.plot(*t.points[-1].tolist(), "*" if t.on_pareto_set else "x", color="black", markersize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlim(-_BOX, _BOX)
        ax.set_ylim(-_BOX, _BOX)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    fig.suptitle(f"The CAGrad / Nash-MTL toy problem: paths of Adam (lr {lr}, {steps} steps) over the mean "
                 f"loss's contours; grey: the Pareto set; end *: on it, x: not", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-fast demo toy",
        description="The two-task toy problem of the CAGrad and Nash-MTL papers: two losses on the plane, whose "
                    "gradients conflict. Runs each method from the papers' three starting points and says where "
                    "it ends and whether that is on the Pareto set (the points where neither loss can fall "
                    "without the other rising).")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw the paths over the loss contours, with the Pareto set (needs matplotlib)")
    parser.add_argument("--methods", metavar="LIST", default=",".join(TOY_METHODS),
                        help=f"comma-separated, from: {', '.join(TOY_METHODS)} (default: all)")
    parser.add_argument("--steps", type=int, default=800, metavar="N", help="Adam steps per path (default 800)")
    parser.add_argument("--lr", type=float, default=0.04, help="Adam's learning rate (default 0.04)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mtl-fast demo toy``; returns the exit status (2 on bad usage)."""
    args = _parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in TOY_METHODS]
    if unknown or not methods or args.steps < 1 or not args.lr > 0:
        print(f"mtl-fast demo toy: --methods from {', '.join(TOY_METHODS)}, --steps and --lr positive "
              f"(unknown: {', '.join(unknown) or 'none'})", file=sys.stderr)
        return 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("mtl-fast demo toy: --plot needs matplotlib, which is not installed: pip install matplotlib",
                  file=sys.stderr)
            return 2
    trajectories = run_toy(methods, args.steps, args.lr)
    print("The two-task toy problem of the CAGrad paper (Liu et al. 2021), also used by the Nash-MTL paper (Navon "
          "et al. 2022): two losses on the plane whose gradients conflict.")
    print(_report(trajectories, args.steps, args.lr))
    if args.plot is not None:
        _plot(args.plot, trajectories, args.steps, args.lr)
        print(f"Wrote {args.plot}")
    return 0
