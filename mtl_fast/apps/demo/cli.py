"""``mtl-fast demo``: the command line over the strategies, the training and the report."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import mtl_fast as mf

from ..data import MultiTaskData, load_npz, make_multidigits, make_shapes
from . import reporting, toy
from .strategies import CORE_STRATEGIES, GROUPS, LEVELS, STRATEGIES, Strategy, strategy_names
from .training import RunConfig, StrategyRun, prepare, probe_batch, time_against_per_task_loop, train_strategy

__all__ = ["main", "QUICK", "DEFAULT", "DATASETS"]

# Sized so that a plain run stays within about four minutes and --quick within about one on a 2-core CPU.
QUICK = RunConfig(train_size=3000, val_size=1000, steps=130, batch_size=64, eval_every=26, loop_steps=6,
                  noise_seeds=3)
DEFAULT = RunConfig(train_size=8000, val_size=2000, steps=200, batch_size=64, eval_every=40, loop_steps=10,
                    noise_seeds=3)

PROBE_SIZE = 256  # training images the tasks' gradients are measured on

DATASETS: Dict[str, str] = {
    "shapes": "synthetic shapes, six tasks; distance conflicts with size (the image shows only their product)",
    "multidigits": "two real handwritten digits per image (scikit-learn's 8x8 digits), tasks: left and right digit",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-fast demo",
        description="Train the classic MTL network (a shared conv trunk, one linear head per task, Adam, summed "
                    "cross-entropy) on a multi-task dataset with several strategies for combining the tasks' "
                    "gradients, and compare their validation accuracy, against the seed-to-seed noise of the "
                    "plain sum, and their speed. 'mtl-fast demo toy' runs the two-task toy problem of the "
                    "CAGrad and Nash-MTL papers instead.",
        epilog="Without options: the default group of strategies on the shapes dataset, about four minutes on a "
               "2-core CPU. --quick: the core strategies in about a minute. --list-strategies explains each.")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: {QUICK.steps} steps, the core strategies ({', '.join(CORE_STRATEGIES)})")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="shapes",
                        help="; ".join(f"{name}: {what}" for name, what in DATASETS.items()) + " (default shapes)")
    parser.add_argument("--strategies", metavar="LIST",
                        help="comma-separated strategy names, or a group: 'core' (--quick's), 'default' (a plain "
                             "run's: the core four, the other aggregators at the representation level, the loss "
                             "weightings) or 'all' (adds the other aggregators at the parameter level); see "
                             "--list-strategies")
    parser.add_argument("--list-strategies", action="store_true",
                        help="print every strategy, its level and what it does, and exit")
    parser.add_argument("--data", type=Path, metavar="FILE.npz",
                        help="your own data instead of --dataset (keys: images, labels, optional task_names, "
                             "num_classes, val_images + val_labels; see mtl_fast.apps.data.load_npz)")
    parser.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="with --data and no validation split in the file: the share held out (default 0.2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train (default: cuda when a GPU is visible, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="data, initialisation and batch order (default 0)")
    for option, name, what in (("--steps", "steps", "training steps per strategy"),
                               ("--batch-size", "batch_size", "images per training step"),
                               ("--train-size", "train_size", "built-in datasets: training images"),
                               ("--val-size", "val_size", "built-in datasets: validation images"),
                               ("--eval-every", "eval_every", "steps between the learning curves' validation points"),
                               ("--noise-seeds", "noise_seeds",
                                "seeds of the plain sum whose spread is the seed noise (below 2: no noise band)"),
                               ("--loop-steps", "loop_steps",
                                "steps of the side-by-side PCGrad vs per-task-loop timing (0 skips it)")):
        parser.add_argument(option, type=int, metavar="N", help=f"{what} (default {getattr(DEFAULT, name)}, "
                                                                f"--quick {getattr(QUICK, name)})")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: the cores other processes leave idle, at most 8)")
    parser.add_argument("--output", type=Path, metavar="FILE.json", help="write results, timings and config as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="write the learning curves and the tasks' gradient cosines (needs matplotlib)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _config(args: argparse.Namespace) -> RunConfig:
    preset = QUICK if args.quick else DEFAULT
    names = ("train_size", "val_size", "steps", "batch_size", "eval_every", "loop_steps", "noise_seeds")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    for name, value in overrides.items():
        if value < (0 if name in ("loop_steps", "noise_seeds") else 1):
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    return RunConfig(**{**preset.__dict__, **overrides})


def _select(args: argparse.Namespace) -> List[Strategy]:
    choice = (args.strategies or ("core" if args.quick else "default")).strip().lower()
    names = strategy_names(choice) if choice in GROUPS else [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"--strategies: unknown {', '.join(map(repr, unknown)) or 'empty list'}; available: "
                         f"{', '.join(STRATEGIES)}")
    return [STRATEGIES[n] for n in dict.fromkeys(names)]


def _default_threads() -> int:
    """The cores other processes leave idle (1-minute load average), at most torch's default and 8.

    Intra-op threads that outnumber the free cores wait on each other at every barrier, so on a busy machine
    fewer threads are faster; beyond 8 threads a network this small gains nothing.
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
    if args.data is not None:
        train, val = load_npz(args.data)
        if val is None:
            train, val = train.split(args.val_fraction, seed=args.seed)
        return train, val, f"{args.data}: {len(train)} training / {len(val)} validation images"
    if args.dataset == "multidigits":
        train, val = make_multidigits(config.train_size, config.val_size, seed=args.seed)
        return train, val, (f"multidigits: {len(train)} training / {len(val)} validation images, two handwritten "
                            f"digits each; the validation images use only held-out digits")
    data = make_shapes(config.train_size + config.val_size, seed=args.seed)
    index = torch.arange(len(data))
    train, val = data.subset(index[: config.train_size]), data.subset(index[config.train_size:])
    return train, val, f"shapes (synthetic): {len(train)} training / {len(val)} validation images"


def _list_strategies() -> None:
    core, default = set(strategy_names("core")), set(strategy_names("default"))
    print(f"{'name':<16} {'level':<15} {'groups':<14} what it does")
    for s in STRATEGIES.values():
        groups = ",".join(g for g, members in (("core", core), ("default", default)) if s.name in members)
        print(f"{s.name:<16} {s.level:<15} {groups or 'all':<14} {s.explanation}")
    print("\nlevels: " + "; ".join(f"{level} = {meaning}" for level, meaning in LEVELS.items()))


def _train_all(strategies: Sequence[Strategy], train, val, num_classes: Sequence[int], config: RunConfig,
               seed: int, progress: bool) -> Tuple[List[StrategyRun], List[StrategyRun]]:
    """(one run per strategy, the plain sum's runs over the noise seeds). The sum's first seed is shared with
    its row in the table when it is one of the strategies; the sum's runs also measure the tasks' gradients."""
    probe = probe_batch(train, PROBE_SIZE, seed)

    def one(strategy: Strategy, run_seed: int) -> StrategyRun:
        label = strategy.name if run_seed == seed else f"sum, seed {run_seed}"
        try:
            run = train_strategy(strategy, train, val, num_classes, config, run_seed, progress,
                                 probe=probe if strategy.name == "sum" else None)
            print(f"  {label:<16} {run.train_seconds:6.1f} s  mean validation accuracy "
                  f"{100 * statistics.fmean(run.accuracy):.1f}%", flush=True)
        except Exception as error:  # noqa: BLE001 - one broken method must not cost the user the others' results
            run = StrategyRun(strategy, run_seed, error=f"{type(error).__name__}: {error}")
            print(f"  {label:<16} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return run

    runs = [one(s, seed) for s in strategies]
    sum_runs = [r for r in runs if r.strategy.name == "sum"]
    sum_runs += [one(STRATEGIES["sum"], seed + i) for i in range(len(sum_runs), config.noise_seeds)]
    return runs, sum_runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mtl-fast demo``; returns the exit status (1 when a strategy failed, 2 on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["toy"]:
        return toy.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.list_strategies:
        _list_strategies()
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
    except (ImportError, OSError, TypeError, ValueError) as error:
        print(f"mtl-fast demo: {error}", file=sys.stderr)
        return 2
    task_names, num_classes = train_data.task_names, train_data.num_classes
    chance = val_data.majority_rate(train_data)
    train, val = prepare(train_data, val_data, device)
    threads = torch.get_num_threads()
    print(f"mtl_fast {mf.__version__} (backend {mf.backend()}), torch {torch.__version__}, {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f" ({threads} thread{'s' if threads > 1 else ''})"))
    print(description)
    print("tasks: " + ", ".join(f"{t} ({c} classes, chance {100 * p:.0f}%)"
                                for t, c, p in zip(task_names, num_classes, chance)))
    print(f"{len(strategies)} strategies x {config.steps} steps of {config.batch_size}, Adam lr {config.lr}, "
          f"and the plain sum with {config.noise_seeds} seeds for the seed noise: "
          + ", ".join(s.name for s in strategies))

    runs, sum_runs = _train_all(strategies, train, val, num_classes, config, args.seed, progress)
    loop = (time_against_per_task_loop(train, num_classes, config, args.seed, progress)
            if config.loop_steps > 0 else None)
    wall = time.perf_counter() - started

    band = reporting.noise_band(sum_runs, len(val_data))
    cosines, against_rest = reporting.mean_cosines(sum_runs)
    print()
    if cosines is not None:
        measured = sum(len(r.grams) for r in sum_runs)
        print("\n".join(reporting.conflict_lines(cosines, against_rest, task_names, measured)))
        print()
    print(f"Validation accuracy (%) after {config.steps} steps, and median time per training step:")
    print(reporting.table(runs, task_names, chance, band))
    if loop is not None:
        print(f"\nPCGrad training step, side by side on the same batches (medians): mtl_fast "
              f"{loop['mtl_fast_ms']:.1f} ms, the per-task loop {loop['per_task_loop_ms']:.1f} ms: mtl_fast is "
              f"{loop['speedup']:.2f}x as fast.")
        if device.type == "cpu":
            print("(On a CPU both compute the K task gradients with K backward passes, which take most of the step; "
                  "what mtl_fast removes, the per-pair host synchronisation, costs little here.)")
    print(f"Total {wall:.0f} s.")
    if args.output is not None:
        config_doc = {"data": str(args.data) if args.data else args.dataset, "seed": args.seed, "quick": args.quick,
                      **config.__dict__, "optimizer": "Adam", "loss": "summed cross-entropy"}
        environment = {"mtl_fast": mf.__version__, "backend": mf.backend(), "torch": torch.__version__,
                       "device": str(device),
                       "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "threads": threads}
        document = reporting.document(runs, sum_runs, band, cosines, against_rest, loop, task_names, num_classes,
                                      chance, config_doc, environment, wall)
        args.output.write_text(json.dumps(document, indent=2) + "\n")
        print(f"Wrote {args.output}")
    if args.plot is not None:
        title = (f"mtl-fast demo on {args.data.name if args.data else args.dataset}: validation accuracy after "
                 f"{config.steps} steps")
        reporting.plot(args.plot, runs, task_names, chance, cosines, title)
        print(f"Wrote {args.plot}")
    return 1 if any(r.error is not None for r in runs) else 0
