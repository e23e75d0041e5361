"""``mtl-fast demo``: train the origin document's network with several multi-task strategies and compare them.

Every strategy trains the same network (:class:`mtl_fast.models.MultiTaskNet`: shared conv trunk, one linear head
per task, Adam, summed cross-entropy) from the same initialisation on the same batches, so the only difference
is how the task gradients become one update:

* ``parameter`` level: ``mtl_fast.backward(losses, model.trunk.parameters(), aggregator=...)``;
* ``representation`` level (strategy names ending in ``-rep``): ``mtl_fast.fork`` between trunk and heads;
* ``loss`` level: a loss weighting from ``mtl_fast.loss_weighting`` (when that module exists) in front of the sum.

Every aggregator class ``mtl_fast`` exports and every loss weighting is picked up (see
:func:`available_strategies`), so the comparison grows with the library; a plain run trains the aggregators
beyond PCGrad at the representation level, which keeps it to a few minutes on a CPU (``--strategies all`` adds
them at the parameter level). Reports per-task validation accuracy against chance, the median time per step, and
how much faster ``mtl_fast``'s PCGrad step is than the per-task loop of the common implementations, timed side by
side on the same batches.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import math
import os
import random
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

import mtl_fast
from mtl_fast.aggregators import Aggregator, GramAggregator, Mean, PCGrad, Sum, Weighted
from mtl_fast.baselines import per_task_loop_backward
from mtl_fast.data import MultiTaskData, load_npz, make_shapes
from mtl_fast.models import MultiTaskNet

__all__ = ["Strategy", "available_strategies", "main"]

CORE_STRATEGIES = ("sum", "weighted", "pcgrad", "pcgrad-rep")
_GROUPS = ("core", "default", "all")


@dataclass(frozen=True)
class Strategy:
    """One way of training: a factory for the aggregator (or loss weighting) and the level it acts at.

    ``build(num_classes, seed)`` makes a fresh object for one training run, so stateful methods start clean.
    ``in_default``: trained by a plain ``mtl-fast demo``.
    """

    name: str
    level: str
    description: str
    build: Callable[[Sequence[int], int], object]
    in_default: bool = True


@dataclass(frozen=True)
class RunConfig:
    """What one demo run does (the presets are :data:`QUICK` and :data:`DEFAULT`)."""

    train_size: int
    val_size: int
    steps: int
    batch_size: int
    eval_every: int
    loop_steps: int
    lr: float = 1e-3


# Measured on this project's 2-core CPU. QUICK: the core strategies in about a minute when the machine is idle
# (58 s), every task far above chance (shape ~50% vs 28%, orientation ~60% vs 25%). DEFAULT: the default group
# (18 strategies with the full zoo) in about five minutes on an idle machine (6m48s at 400 steps, hence 300),
# with enough epochs for DWA's epoch-to-epoch loss ratios to come into play.
QUICK = RunConfig(train_size=8000, val_size=1000, steps=250, batch_size=64, eval_every=50, loop_steps=16)
DEFAULT = RunConfig(train_size=10000, val_size=2000, steps=300, batch_size=64, eval_every=30, loop_steps=40)


def _task_balanced_weights(num_classes: Sequence[int]) -> List[float]:
    """Each cross-entropy divided by its chance-level value log(C_k), rescaled so the weights sum to K: every
    task then starts from the same loss, instead of the many-class tasks dominating the sum."""
    inverse = [1.0 / math.log(c) for c in num_classes]
    return [len(inverse) * w / sum(inverse) for w in inverse]


def _default_instance(cls: type) -> Optional[Callable[[Sequence[int], int], object]]:
    """A factory calling ``cls`` with its defaults (and ``seed`` / ``num_tasks`` where it takes them), or None
    when it needs arguments the demo cannot know."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    filled = []
    for p in parameters:
        if p.name in ("seed", "num_tasks"):
            filled.append(p.name)
        elif p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
    return lambda num_classes, seed: cls(**{name: seed if name == "seed" else len(num_classes) for name in filled})


def _exported_classes(module, base: type) -> List[type]:
    """The concrete public subclasses of ``base`` a module exposes, in definition order, without duplicates."""
    names = getattr(module, "__all__", None)
    own = names is None  # without __all__, what the module merely imports does not count
    found = []
    for name in names or [n for n in vars(module) if not n.startswith("_")]:
        obj = getattr(module, name, None)
        if (inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj) and obj not in found
                and not (own and obj.__module__ != module.__name__)):
            found.append(obj)
    return found


def _weighting_module():
    """``mtl_fast.loss_weighting`` when it exists (the demo works without it)."""
    try:
        return importlib.import_module("mtl_fast.loss_weighting")
    except ModuleNotFoundError as error:
        if error.name != "mtl_fast.loss_weighting":
            raise
        return None


class _LossLevel:
    """Drives a ``mtl_fast.loss_weighting`` object through training the way its docstring asks: ``combine`` the
    losses and backpropagate; GradNorm reads the task-gradient norms from the Gram matrix through
    ``mtl_fast.backward``; FAMO gets the next batch's losses through ``update`` (its documented cheap stand-in
    for re-evaluating the batch); DWA closes an epoch through ``end_epoch``."""

    def __init__(self, weighting) -> None:
        self.weighting = weighting
        self._awaits_update = False

    def learned_parameters(self, device: torch.device) -> List[Tensor]:
        """The weighting's own parameters (UncertaintyWeighting's log-variances), moved to ``device``, for the
        optimizer to train along with the model."""
        if not isinstance(self.weighting, nn.Module):
            return []
        self.weighting.to(device)
        return list(self.weighting.parameters())

    def backward(self, losses: List[Tensor], shared: List[Tensor]) -> None:
        if self._awaits_update:
            self.weighting.update([loss.detach() for loss in losses])
        if hasattr(self.weighting, "aggregator"):
            mtl_fast.backward(losses, shared, aggregator=self.weighting.aggregator(losses))
        else:
            self.weighting.combine(losses).backward()
        self._awaits_update = hasattr(self.weighting, "update")

    def end_epoch(self) -> None:
        if hasattr(self.weighting, "end_epoch"):
            self.weighting.end_epoch()


def available_strategies() -> Dict[str, Strategy]:
    """Every strategy the demo can run, by name, the default run's first, in the order it trains them.

    The default run: the core four (``sum``, ``weighted``, ``pcgrad``, ``pcgrad-rep``); then, as ``NAME-rep``,
    every other aggregator class that ``mtl_fast`` or ``mtl_fast.aggregators`` exports and that builds from its
    defaults (``seed`` and ``num_tasks`` are filled in), at the representation level, where a step costs one
    trunk backward instead of K, so the whole zoo fits in a few minutes on a CPU; then the loss weightings of
    ``mtl_fast.loss_weighting`` (concrete ``LossWeighting`` subclasses, named after the class in lower case without
    "weighting"). Only in ``--strategies all`` or by name: the zoo at the parameter level (``NAME``), as the
    papers define the methods.
    """
    strategies: Dict[str, Strategy] = {
        "sum": Strategy("sum", "parameter", "plain summed cross-entropy", lambda classes, s: Sum()),
        "weighted": Strategy("weighted", "parameter", "losses weighted by 1 / log(classes), summing to K",
                             lambda classes, s: Weighted(_task_balanced_weights(classes))),
        "pcgrad": Strategy("pcgrad", "parameter", "PCGrad (Yu et al. 2020) on the trunk's parameters",
                           lambda classes, s: PCGrad(seed=s)),
        "pcgrad-rep": Strategy("pcgrad-rep", "representation", "PCGrad on the trunk's output",
                               lambda classes, s: PCGrad(seed=s)),
    }
    parameter_level: Dict[str, Strategy] = {}
    # Mean is Sum scaled by 1/K, which Adam's scale invariance makes the same run: not worth its minutes.
    known = {Sum, Weighted, PCGrad, Mean, Aggregator, GramAggregator}
    for module in (mtl_fast, importlib.import_module("mtl_fast.aggregators")):
        for cls in _exported_classes(module, Aggregator):
            factory = _default_instance(cls) if cls not in known else None
            if factory is None:
                continue
            known.add(cls)
            name = cls.__name__.lower()
            strategies[f"{name}-rep"] = Strategy(f"{name}-rep", "representation",
                                                 f"{cls.__name__} on the trunk's output", factory)
            parameter_level[name] = Strategy(name, "parameter", f"{cls.__name__} on the trunk's parameters",
                                             factory, in_default=False)
    weighting = _weighting_module()
    base = getattr(weighting, "LossWeighting", None)
    for cls in _exported_classes(weighting, base) if base is not None else []:
        factory = _default_instance(cls) if cls is not base else None
        if factory is None:
            continue
        name = cls.__name__.lower().removesuffix("weighting")
        strategies.setdefault(name, Strategy(name, "loss", f"{cls.__name__} loss weighting",
                                             lambda classes, s, make=factory: _LossLevel(make(classes, s))))
    return {**strategies, **parameter_level}


def strategy_names(group: str) -> List[str]:
    """The names in a group: 'core' (what --quick runs), 'default' (what a plain run trains) or 'all'."""
    if group not in _GROUPS:
        raise ValueError(f"group: expected one of {_GROUPS}, got {group!r}")
    if group == "core":
        return list(CORE_STRATEGIES)
    return [name for name, s in available_strategies().items() if group == "all" or s.in_default]


# ------------------------------------------------------------------------------------------------ training


@dataclass
class Prepared:
    """A split on the training device: normalised float images and (K, N) labels."""

    images: Tensor
    labels: Tensor


def _prepare(data: MultiTaskData, device: torch.device, mean: Tensor, std: Tensor) -> Prepared:
    images = data.images.float()
    if data.images.dtype == torch.uint8:
        images = images / 255.0
    images = (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return Prepared(images.to(device), data.labels.t().contiguous().to(device))


def _channel_stats(data: MultiTaskData) -> Tuple[Tensor, Tensor]:
    images = data.images.float() / (255.0 if data.images.dtype == torch.uint8 else 1.0)
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3)).clamp_min(1e-6)


def _batches(train: Prepared, batch_size: int, steps: int, seed: int) -> Iterator[Tuple[Tensor, List[Tensor]]]:
    """``steps`` batches in a seeded order of reshuffled epochs: the same for every strategy."""
    generator = torch.Generator().manual_seed(seed)
    n = train.images.shape[0]
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        index, order = order[:batch_size].to(train.images.device), order[batch_size:]
        yield train.images[index], list(train.labels[:, index])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so the host clock sees the step's kernels finish


def _backward(model: MultiTaskNet, strategy: Strategy, method, x: Tensor, ys: List[Tensor]) -> Tensor:
    """Forward and backward for one batch the strategy's way; returns the summed loss (detached)."""
    if strategy.level == "representation":
        feats = mtl_fast.fork(model.trunk(x), model.num_tasks, aggregator=method)
        losses = model.losses([head(f) for head, f in zip(model.task_heads, feats)], ys)
        sum(losses).backward()
    else:
        losses = model.losses(model(x), ys)
        if strategy.level == "parameter":
            mtl_fast.backward(losses, model.trunk.parameters(), aggregator=method)
        else:
            method.backward(losses, list(model.trunk.parameters()))
    return sum(loss.detach() for loss in losses)


@torch.no_grad()
def evaluate(model: MultiTaskNet, val: Prepared, batch_size: int = 1000) -> List[float]:
    """Per-task accuracy on ``val``."""
    model.eval()
    correct = torch.zeros(model.num_tasks, dtype=torch.long, device=val.images.device)
    for start in range(0, val.images.shape[0], batch_size):
        logits = model(val.images[start: start + batch_size])
        labels = val.labels[:, start: start + batch_size]
        correct += torch.stack([(out.argmax(1) == y).sum() for out, y in zip(logits, labels)])
    model.train()
    return (correct.double() / val.images.shape[0]).tolist()


@dataclass
class StrategyRun:
    """What training one strategy produced."""

    strategy: Strategy
    accuracy: List[float] = field(default_factory=list)
    curve_steps: List[int] = field(default_factory=list)
    curve: List[List[float]] = field(default_factory=list)  # per evaluation, per task
    step_seconds: List[float] = field(default_factory=list)
    train_seconds: float = 0.0
    final_loss: Optional[float] = None
    error: Optional[str] = None

    @property
    def median_step_ms(self) -> Optional[float]:
        return 1e3 * statistics.median(self.step_seconds) if self.step_seconds else None

    def to_json(self, task_names: Sequence[str]) -> dict:
        """The strategy's entry in the ``--output`` document (the accuracies are in its "results")."""
        return {"name": self.strategy.name, "level": self.strategy.level, "description": self.strategy.description,
                "median_step_ms": self.median_step_ms, "train_seconds": self.train_seconds,
                "final_train_loss": self.final_loss,
                "curve": {"step": self.curve_steps,
                          "accuracy": {t: [acc[k] for acc in self.curve] for k, t in enumerate(task_names)}},
                "error": self.error}


def _new_model(num_classes: Sequence[int], seed: int, device: torch.device) -> MultiTaskNet:
    torch.manual_seed(seed)  # every strategy starts from the same weights
    return MultiTaskNet(num_classes).to(device)


def train_strategy(strategy: Strategy, train: Prepared, val: Prepared, num_classes: Sequence[int],
                   config: RunConfig, seed: int, progress: bool) -> StrategyRun:
    """Trains a fresh network with ``strategy`` for ``config.steps`` steps, evaluating every ``eval_every``."""
    from tqdm.auto import tqdm

    run = StrategyRun(strategy)
    device = train.images.device
    model = _new_model(num_classes, seed, device)
    method = strategy.build(num_classes, seed)
    learned = method.learned_parameters(device) if isinstance(method, _LossLevel) else []
    optimizer = torch.optim.Adam(list(model.parameters()) + learned, lr=config.lr)
    steps_per_epoch = max(1, train.images.shape[0] // config.batch_size)
    started = time.perf_counter()
    bar = tqdm(total=config.steps, desc=f"{strategy.name:<14}", unit="step", leave=True, disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    loss = torch.zeros(())
    for step, (x, ys) in enumerate(_batches(train, config.batch_size, config.steps, seed), start=1):
        _sync(device)
        tick = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = _backward(model, strategy, method, x, ys)
        optimizer.step()
        _sync(device)
        run.step_seconds.append(time.perf_counter() - tick)
        if step % steps_per_epoch == 0 and isinstance(method, _LossLevel):
            method.end_epoch()
        if step % config.eval_every == 0 or step == config.steps:
            run.curve_steps.append(step)
            run.curve.append(evaluate(model, val))
            bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{100 * statistics.fmean(run.curve[-1]):.1f}%")
        bar.update()
    bar.close()
    run.train_seconds = time.perf_counter() - started
    run.accuracy = run.curve[-1]
    run.final_loss = loss.item()
    return run


def time_against_per_task_loop(train: Prepared, num_classes: Sequence[int], config: RunConfig, seed: int,
                               progress: bool) -> Dict[str, float]:
    """Median training-step time of PCGrad through ``mtl_fast.backward`` and through the per-task loop.

    Both train their own copy of the same network on the same batches, alternating which goes first each step
    so that drifts in the machine's speed hit both; the first few steps (allocator and kernel warm-up) are not
    counted.
    """
    from tqdm.auto import tqdm

    device = train.images.device
    fast_model = _new_model(num_classes, seed, device)
    loop_model = copy.deepcopy(fast_model)
    pcgrad = available_strategies()["pcgrad"]
    method = pcgrad.build(num_classes, seed)
    rng = random.Random(seed)

    def loop_backward(model: MultiTaskNet, x: Tensor, ys: List[Tensor]) -> None:
        per_task_loop_backward(model.losses(model(x), ys), list(model.trunk.parameters()), rng=rng)

    sides = [("mtl_fast", fast_model, lambda m, x, ys: _backward(m, pcgrad, method, x, ys)),
             ("per_task_loop", loop_model, loop_backward)]
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=config.lr) for name, model, _ in sides}
    times: Dict[str, List[float]] = {name: [] for name, _, _ in sides}
    warmup = 3
    batches = _batches(train, config.batch_size, config.loop_steps + warmup, seed)
    for step, (x, ys) in enumerate(tqdm(batches, total=config.loop_steps + warmup, desc="pcgrad vs loop ",
                                        unit="step", disable=not progress, file=sys.stderr)):
        for name, model, backward in (sides if step % 2 == 0 else sides[::-1]):
            _sync(device)
            tick = time.perf_counter()
            optimizers[name].zero_grad(set_to_none=True)
            backward(model, x, ys)
            optimizers[name].step()
            _sync(device)
            if step >= warmup:
                times[name].append(time.perf_counter() - tick)
    fast_ms = 1e3 * statistics.median(times["mtl_fast"])
    loop_ms = 1e3 * statistics.median(times["per_task_loop"])
    return {"strategy": "pcgrad", "steps": config.loop_steps, "mtl_fast_ms": fast_ms, "per_task_loop_ms": loop_ms,
            "speedup": loop_ms / fast_ms}


# ------------------------------------------------------------------------------------------------ reporting


def _table(runs: Sequence[StrategyRun], task_names: Sequence[str], chance: Sequence[float]) -> str:
    """The final table: validation accuracy (%) per task and strategy, chance first, then time per step."""
    widths = [max(7, len(t)) for t in task_names] + [6, 8]
    name_width = max([len("strategy")] + [len(r.strategy.name) for r in runs])

    def row(name: str, level: str, cells: Sequence[str]) -> str:
        return f"{name:<{name_width}}  {level:<14}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths))

    def percent(values: Sequence[float]) -> List[str]:
        return [f"{100 * v:.1f}" for v in values] + [f"{100 * statistics.fmean(values):.1f}"]

    header = row("strategy", "level", [*task_names, "mean", "ms/step"])
    lines = [header, "-" * len(header), row("chance", "", percent(chance))]
    for run in runs:
        if run.error is not None:
            lines.append(row(run.strategy.name, run.strategy.level, []) + f"  failed: {run.error}")
        else:
            lines.append(row(run.strategy.name, run.strategy.level,
                             percent(run.accuracy) + [f"{run.median_step_ms:.1f}"]))
    return "\n".join(lines)


def _plot(path: Path, runs: Sequence[StrategyRun], task_names: Sequence[str], chance: Sequence[float]) -> None:
    """Learning curves: one panel per task, one line per strategy (solid: parameter level, dashed:
    representation level, dotted: loss weighting), chance dash-dotted."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    columns = min(3, len(task_names))
    rows = math.ceil(len(task_names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharex=True)
    # tab20 pairs a dark and a light shade of 10 hues: the first ten strategies take the dark ones, the next ten
    # the light ones, so neighbours in the legend differ in hue. The level sets the line style.
    colours = plt.get_cmap("tab20")
    styles = {"parameter": "-", "representation": "--", "loss": ":"}
    for k, (task, ax) in enumerate(zip(task_names, axes.flat)):
        for i, run in enumerate(runs):
            if run.error is None:
                ax.plot(run.curve_steps, [100 * acc[k] for acc in run.curve], label=run.strategy.name,
                        color=colours((2 * i) % 20 + (i // 10) % 2), linestyle=styles[run.strategy.level])
        ax.axhline(100 * chance[k], color="black", linestyle="-.", linewidth=0.8, label="chance")
        ax.set_title(task)
        ax.set_ylim(0, 102)  # a curve at 100% stays visible above the frame
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(task_names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * math.ceil(len(labels) / 6), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _report(runs: Sequence[StrategyRun], loop: Optional[Dict[str, float]], task_names: Sequence[str],
            num_classes: Sequence[int], chance: Sequence[float], config: RunConfig, args: argparse.Namespace,
            device: torch.device, wall_seconds: float) -> dict:
    """The ``--output`` JSON document."""
    return {
        "results": [{"strategy": r.strategy.name, "task": t, "accuracy": a, "chance": c}
                    for r in runs if r.error is None for t, a, c in zip(task_names, r.accuracy, chance)],
        "strategies": [r.to_json(task_names) for r in runs],
        "per_task_loop": loop,
        "tasks": [{"name": t, "classes": c, "chance": p} for t, c, p in zip(task_names, num_classes, chance)],
        "config": {"data": str(args.data) if args.data else "shapes", "seed": args.seed, "quick": args.quick,
                   "train_size": config.train_size, "val_size": config.val_size, "steps": config.steps,
                   "batch_size": config.batch_size, "eval_every": config.eval_every, "lr": config.lr,
                   "optimizer": "Adam", "loss": "summed cross-entropy", "loop_steps": config.loop_steps},
        "environment": {"mtl_fast": mtl_fast.__version__, "backend": mtl_fast.backend(), "torch": torch.__version__,
                        "device": str(device), "device_name": (torch.cuda.get_device_name(device)
                                                               if device.type == "cuda" else "cpu"),
                        "threads": torch.get_num_threads()},
        "wall_seconds": wall_seconds,
    }


# ------------------------------------------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-fast demo",
        description="Train the origin document's network (shared conv trunk, one linear head per task, Adam, "
                    "summed cross-entropy) on an embedded multi-task dataset with several strategies, and "
                    "compare validation accuracy and speed.",
        epilog="Without options: the default group of strategies, a few minutes on a CPU. --quick: the core "
               "strategies in about a minute.")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {QUICK.steps} steps, core strategies ({', '.join(CORE_STRATEGIES)})")
    parser.add_argument("--strategies", metavar="LIST",
                        help="comma-separated strategy names, or a group: 'core' (--quick's), 'default' (a plain "
                             "run's: the core four, the other aggregators at the representation level, the loss "
                             "weightings) or 'all' (adds the other aggregators at the parameter level); see "
                             "--list-strategies")
    parser.add_argument("--list-strategies", action="store_true", help="print the strategies available and exit")
    parser.add_argument("--data", type=Path, metavar="FILE.npz",
                        help="your own data instead of the embedded dataset (keys: images, labels, optional "
                             "task_names, num_classes, val_images + val_labels; see mtl_fast.data.load_npz)")
    parser.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="with --data and no validation split in the file: the share held out (default 0.2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and batch order (default 0)")
    for option, name, what in (("--steps", "steps", "training steps per strategy"),
                               ("--batch-size", "batch_size", "images per training step"),
                               ("--train-size", "train_size", "embedded dataset: training images"),
                               ("--val-size", "val_size", "embedded dataset: validation images"),
                               ("--eval-every", "eval_every", "steps between the learning curves' validation points"),
                               ("--loop-steps", "loop_steps",
                                "steps of the side-by-side PCGrad vs per-task-loop timing (0 skips it)")):
        parser.add_argument(option, type=int, metavar="N", help=f"{what} (default {getattr(DEFAULT, name)}, "
                                                                f"--quick {getattr(QUICK, name)})")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: the cores other processes leave idle, at most 8)")
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="write results, timings and config as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="write learning curves per task and strategy (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _config(args: argparse.Namespace) -> RunConfig:
    preset = QUICK if args.quick else DEFAULT
    overrides = {name: getattr(args, name) for name in
                 ("train_size", "val_size", "steps", "batch_size", "eval_every", "loop_steps")
                 if getattr(args, name) is not None}
    for name, value in overrides.items():
        if value < (0 if name == "loop_steps" else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    return RunConfig(**{**preset.__dict__, **overrides})


def _select(args: argparse.Namespace) -> List[Strategy]:
    available = available_strategies()
    choice = (args.strategies or ("core" if args.quick else "default")).strip().lower()
    if choice in _GROUPS:
        names = strategy_names(choice)
    else:
        names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(f"--strategies: unknown {', '.join(map(repr, unknown)) or 'empty list'}; available: "
                         f"{', '.join(available)}")
    return [available[n] for n in dict.fromkeys(names)]


def _default_threads() -> int:
    """The cores other processes leave idle (1-minute load average), at most torch's default and 8.

    Intra-op threads that outnumber the free cores wait on each other at every barrier: on a busy 2-core
    machine a PCGrad step with 2 threads measured 3x slower than with 1, while on an idle one 2 threads are
    1.5x faster. Beyond 8 threads a network this small gains nothing.
    """
    limit = min(torch.get_num_threads(), 8)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return limit
    return max(1, min(limit, round((os.cpu_count() or 1) - busy)))


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to torch "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    return torch.device(choice)


def _load(args: argparse.Namespace, config: RunConfig) -> Tuple[MultiTaskData, MultiTaskData, str]:
    """(train, validation, a line saying what the data is)."""
    if args.data is None:
        data = make_shapes(config.train_size + config.val_size, seed=args.seed)
        index = torch.arange(len(data))
        train, val = data.subset(index[: config.train_size]), data.subset(index[config.train_size:])
        return train, val, f"embedded 'shapes' dataset: {len(train)} training / {len(val)} validation images"
    train, val = load_npz(args.data)
    if val is None:
        train, val = train.split(args.val_fraction, seed=args.seed)
    return train, val, f"{args.data}: {len(train)} training / {len(val)} validation images"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mtl-fast demo``; returns the exit status (1 when a strategy failed, 2 on bad usage)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_strategies:
        core, default = set(strategy_names("core")), set(strategy_names("default"))
        print(f"{'name':<18} {'level':<15} {'groups':<18} description")
        for s in available_strategies().values():
            groups = ",".join(g for g, members in (("core", core), ("default", default)) if s.name in members)
            print(f"{s.name:<18} {s.level:<15} {groups or 'all':<18} {s.description}")
        return 0
    try:
        config = _config(args)
        strategies = _select(args)
        device = _device(args.device)
        if args.plot is not None:
            importlib.import_module("matplotlib")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads: expected a positive number, got {args.threads}")
    except ModuleNotFoundError:
        print("mtl-fast demo: --plot needs matplotlib, which is not installed: pip install matplotlib (or the "
              "'plot' extra: pip install 'mtl_fast[plot]')", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"mtl-fast demo: {error}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or _default_threads())
    progress = not args.no_progress and sys.stderr.isatty()
    started = time.perf_counter()

    try:
        train_data, val_data, description = _load(args, config)
    except (OSError, TypeError, ValueError) as error:
        print(f"mtl-fast demo: {error}", file=sys.stderr)
        return 2
    task_names, num_classes = train_data.task_names, train_data.num_classes
    chance = val_data.majority_rate(train_data)
    mean, std = _channel_stats(train_data)
    train, val = _prepare(train_data, device, mean, std), _prepare(val_data, device, mean, std)
    print(f"mtl_fast {mtl_fast.__version__} (backend {mtl_fast.backend()}), torch {torch.__version__}, {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"))
    print(description)
    print("tasks: " + ", ".join(f"{t} ({c} classes, chance {100 * p:.0f}%)"
                                for t, c, p in zip(task_names, num_classes, chance)))
    print(f"{len(strategies)} strategies x {config.steps} steps of {config.batch_size}, Adam lr {config.lr}: "
          + ", ".join(s.name for s in strategies))

    runs: List[StrategyRun] = []
    for strategy in strategies:
        try:
            run = train_strategy(strategy, train, val, num_classes, config, args.seed, progress)
            print(f"  {strategy.name:<14} {run.train_seconds:6.1f} s  mean validation accuracy "
                  f"{100 * statistics.fmean(run.accuracy):.1f}%", flush=True)
        except Exception as error:  # noqa: BLE001 - one broken method must not cost the user the others' results
            run = StrategyRun(strategy, error=f"{type(error).__name__}: {error}")
            print(f"  {strategy.name:<14} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        runs.append(run)

    loop = None
    if config.loop_steps > 0:
        loop = time_against_per_task_loop(train, num_classes, config, args.seed, progress)

    wall = time.perf_counter() - started
    print()
    print(f"Validation accuracy (%) after {config.steps} steps, and median time per training step:")
    print(_table(runs, task_names, chance))
    if loop is not None:
        print(f"\nPCGrad training step, side by side on the same batches (medians): mtl_fast "
              f"{loop['mtl_fast_ms']:.1f} ms, the per-task loop {loop['per_task_loop_ms']:.1f} ms: speed-up "
              f"{loop['speedup']:.2f}x.")
        if device.type == "cpu":
            print("(On a CPU both compute the K task gradients with K backward passes, which take most of the step; "
                  "what mtl_fast removes, the per-pair host synchronisation, costs little here.)")
    print(f"Total {wall:.0f} s.")
    if args.output is not None:
        report = _report(runs, loop, task_names, num_classes, chance, config, args, device, wall)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"Wrote {args.output}")
    if args.plot is not None:
        _plot(args.plot, runs, task_names, chance)
        print(f"Wrote {args.plot}")
    return 1 if any(r.error is not None for r in runs) else 0
