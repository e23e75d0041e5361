"""The demo's strategies: one explicit table, one row per way of turning K task losses into one update.

A strategy acts at one of three levels:

* ``parameter``: ``mtl_fast.backward(losses, trunk_params, aggregator=...)`` combines the K gradients of the
  shared parameters, as the papers define the methods (K backward passes through the trunk);
* ``representation``: ``mtl_fast.fork(features, K, aggregator=...)`` combines the K gradients of the trunk's
  output instead, so the trunk runs one backward pass (names ending in ``-rep``);
* ``loss``: a loss weighting from ``mtl_fast.loss_weighting`` rescales the losses before the plain sum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

import mtl_fast as mf
from mtl_fast import loss_weighting

__all__ = ["Strategy", "LossLevel", "EngineLevel", "STRATEGIES", "CORE_STRATEGIES", "GROUPS", "LEVELS", "strategy_names",
           "both_levels", "loss_level"]

LEVELS: Dict[str, str] = {
    "parameter": "mtl_fast.backward on the trunk's parameters",
    "engine": "mtl_fast.GramEngine over the trunk: the parameter level without the K x P Jacobian",
    "representation": "mtl_fast.fork on the trunk's output",
    "loss": "a loss weighting in front of the plain sum",
}
"""What each level means, for the table's legend."""

Factory = Callable[[Sequence[int], int], object]


@dataclass(frozen=True)
class Strategy:
    """One way of training.

    Attributes:
        name: what ``--strategies`` takes.
        level: 'parameter', 'representation' or 'loss' (see :data:`LEVELS`).
        explanation: one line for the table.
        build: ``build(num_classes, seed)`` makes a fresh aggregator or :class:`LossLevel` for one training run,
            so stateful methods start clean.
        in_default: trained by a plain ``mtl-fast demo``.
    """

    name: str
    level: str
    explanation: str
    build: Factory
    in_default: bool = True


class LossLevel:
    """Drives a loss weighting through training the way its docstring asks: ``combine`` the losses and
    backpropagate; GradNorm reads the task-gradient norms from the Gram matrix through ``mtl_fast.backward``;
    FAMO gets the next batch's losses through ``update`` (its documented cheap stand-in for re-evaluating the
    batch); DWA closes an epoch through ``end_epoch``."""

    def __init__(self, weighting: loss_weighting.LossWeighting) -> None:
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
        """Backpropagates the weighted losses into the model's ``.grad``."""
        if self._awaits_update:
            self.weighting.update([loss.detach() for loss in losses])
        if isinstance(self.weighting, loss_weighting.GradNorm):
            mf.backward(losses, shared, aggregator=self.weighting.aggregator(losses))
        else:
            self.weighting.combine(losses).backward()
        self._awaits_update = isinstance(self.weighting, loss_weighting.FAMO)

    def end_epoch(self) -> None:
        """Tells an epoch-based weighting (DWA) that an epoch is over."""
        if isinstance(self.weighting, loss_weighting.DWA):
            self.weighting.end_epoch()


class EngineLevel:
    """An aggregator applied by the Gram engine: hooked onto the model's trunk before its first forward."""

    def __init__(self, aggregator: mf.GramAggregator) -> None:
        self.aggregator = aggregator
        self.engine: Optional[mf.GramEngine] = None

    def attach(self, trunk: nn.Module) -> None:
        """Hooks the engine onto the trunk (once per training run)."""
        self.engine = mf.GramEngine(trunk)

    def backward(self, losses: List[Tensor], shared: List[Tensor]) -> None:
        """The engine's backward of the losses into the model's ``.grad``."""
        self.engine.backward(losses, aggregator=self.aggregator)


def _task_balanced_weights(num_classes: Sequence[int]) -> List[float]:
    """Each cross-entropy divided by its chance-level value log(C_k), rescaled so the weights sum to K: every
    task then starts from the same loss, instead of the many-class tasks dominating the sum."""
    inverse = [1.0 / math.log(c) for c in num_classes]
    return [len(inverse) * w / sum(inverse) for w in inverse]


def both_levels(name: str, explanation: str, make: Factory) -> List[Strategy]:
    """An aggregator at the parameter level (only in ``--strategies all`` or by name: K trunk backward passes
    per step) and at the representation level (in the default run)."""
    return [Strategy(name, "parameter", explanation, make, in_default=False),
            Strategy(f"{name}-rep", "representation", explanation, make)]


def gradient_level(name: str, explanation: str, make: Factory) -> List[Strategy]:
    """A zoo II aggregator: at the parameter level, and at the representation level where the method means
    something on feature gradients; both only in ``--strategies all`` or by name."""
    levels = [Strategy(name, "parameter", explanation, make, in_default=False)]
    if make([2, 2], 0).representation_level_ok:
        levels.append(Strategy(f"{name}-rep", "representation", explanation, make, in_default=False))
    return levels


def loss_level(name: str, explanation: str, make: Callable[[int, int], loss_weighting.LossWeighting],
               in_default: bool = True) -> Strategy:
    """A loss weighting, made by ``make(num_tasks, seed)``, in front of the plain sum."""
    return Strategy(name, "loss", explanation, lambda classes, seed: LossLevel(make(len(classes), seed)),
                    in_default)


_CORE = [
    Strategy("sum", "parameter", "the plain sum of the task losses: the baseline", lambda classes, seed: mf.Sum()),
    Strategy("weighted", "parameter", "fixed weights 1 / log(classes): every task starts at the same loss",
             lambda classes, seed: mf.Weighted(_task_balanced_weights(classes))),
    Strategy("pcgrad", "parameter", "PCGrad: projects each gradient off the others it conflicts with",
             lambda classes, seed: mf.PCGrad(seed=seed)),
    Strategy("pcgrad-rep", "representation", "PCGrad: projects each gradient off the others it conflicts with",
             lambda classes, seed: mf.PCGrad(seed=seed)),
]
_ZOO = [
    *both_levels("mgda", "MGDA: the smallest update in the tasks' convex hull, improving every task",
                  lambda classes, seed: mf.MGDA()),
    *both_levels("cagrad", "CAGrad: the mean gradient, bent to lift the worst-off task",
                  lambda classes, seed: mf.CAGrad()),
    *both_levels("imtlg", "IMTL-G: weights giving every task the same projection of the update",
                  lambda classes, seed: mf.IMTLG()),
    *both_levels("nashmtl", "Nash-MTL: the tasks bargain for the update (a Nash bargaining solution)",
                  lambda classes, seed: mf.NashMTL()),
    *both_levels("upgrad", "UPGrad: each gradient projected onto the cone that harms no task, averaged",
                  lambda classes, seed: mf.UPGrad()),
    *both_levels("dualproj", "DualProj: the mean gradient projected onto the cone that harms no task",
                  lambda classes, seed: mf.DualProj()),
    *both_levels("alignedmtl", "Aligned-MTL: the gradients' matrix made well conditioned, then summed",
                  lambda classes, seed: mf.AlignedMTL()),
    *both_levels("gradvac", "GradVac: pulls each pair of gradients towards their running mean cosine",
                  lambda classes, seed: mf.GradVac(seed=seed)),
    *both_levels("graddrop", "GradDrop: per coordinate, keeps the gradients of one sign at random",
                  lambda classes, seed: mf.GradDrop(seed=seed)),
    Strategy("pcgrad-engine", "engine", "PCGrad, with the Gram built layer by layer (no Jacobian)",
             lambda classes, seed: EngineLevel(mf.PCGrad(seed=seed)), in_default=False),
    Strategy("upgrad-engine", "engine", "UPGrad, with the Gram built layer by layer (no Jacobian)",
             lambda classes, seed: EngineLevel(mf.UPGrad()), in_default=False),
    *gradient_level("config", "ConFIG: the conflict-free update from the unit gradients",
                    lambda classes, seed: mf.ConFIG()),
    *gradient_level("fairgrad", "FairGrad: alpha-fair weights, G w = w^(-1/alpha)",
                    lambda classes, seed: mf.FairGrad(1.0)),
    *gradient_level("sdmgrad", "SDMGrad: MGDA pulled towards the mean, by projected SGD",
                    lambda classes, seed: mf.SDMGrad()),
    *gradient_level("modo", "MoDo: one projected step on the weights per training step",
                    lambda classes, seed: mf.MoDo()),
    *gradient_level("crmogm", "CR-MOGM: a moving average of MGDA's weights",
                    lambda classes, seed: mf.CRMOGM(mf.MGDA())),
    *gradient_level("krum", "Krum: the gradient closest to the others (robust to outlier tasks)",
                    lambda classes, seed: mf.Krum(0)),
    *gradient_level("random", "RLW at the gradient level: random softmax weights every step",
                    lambda classes, seed: mf.Random(seed=seed)),
    *gradient_level("dbmtl", "DB-MTL: log-loss gradients rescaled to the largest norm",
                    lambda classes, seed: mf.DBMTL()),
    *gradient_level("trimmed-mean", "trimmed mean per coordinate (drops the extreme task)",
                    lambda classes, seed: mf.TrimmedMean(1)),
    *gradient_level("excessmtl", "ExcessMTL: weights from each task's excess risk",
                    lambda classes, seed: mf.ExcessMTL()),
    *gradient_level("moco", "MoCo: tracked per-task gradients, weights by projected steps",
                    lambda classes, seed: mf.MoCo()),
]
_LOSS = [
    loss_level("dwa", "DWA: weights follow how fast each loss fell over the last epochs",
                lambda tasks, seed: loss_weighting.DWA()),
    loss_level("uncertainty", "uncertainty weighting: learned per-task noise scales weigh the losses",
                lambda tasks, seed: loss_weighting.UncertaintyWeighting(tasks)),
    loss_level("gradnorm", "GradNorm: weights that equalise the tasks' gradient norms and training rates",
                lambda tasks, seed: loss_weighting.GradNorm()),
    loss_level("famo", "FAMO: weights that make every loss fall at the same relative rate",
                lambda tasks, seed: loss_weighting.FAMO(tasks)),
    loss_level("rlw", "RLW: random loss weights, drawn anew every step",
               lambda tasks, seed: loss_weighting.RLW(seed=seed)),
    loss_level("stch", "STCH: smooth Tchebycheff, the worst task's loss smoothed",
               lambda tasks, seed: loss_weighting.STCH(1.0), in_default=False),
    loss_level("gls", "GLS: the geometric mean of the losses",
               lambda tasks, seed: loss_weighting.GeometricMean(), in_default=False),
    loss_level("imtll", "IMTL-L: learned loss scales that equalise the scaled losses",
               lambda tasks, seed: loss_weighting.IMTLL(tasks), in_default=False),
    loss_level("pbi", "PBI: distance along and away from an equal-weights ray",
               lambda tasks, seed: loss_weighting.PBI(5.0, [1.0] * tasks), in_default=False),
    loss_level("cosmos", "COSMOS: the weighted sum with a cosine pull towards the weights",
               lambda tasks, seed: loss_weighting.COSMOS(1.0, [1.0 / tasks] * tasks), in_default=False),
]

# The default run trains the core, the zoo at the representation level and the loss weightings; Mean is left
# out because Adam's scale invariance makes it the same run as the sum.
STRATEGIES: Dict[str, Strategy] = {s.name: s for s in _CORE + sorted(_ZOO, key=lambda s: s.level == "parameter")
                                   + _LOSS}
"""Every strategy the demo can run, by name, in the order it trains them."""

CORE_STRATEGIES = tuple(s.name for s in _CORE)
GROUPS = ("core", "default", "all")


def strategy_names(group: str, table: Dict[str, Strategy] = STRATEGIES) -> List[str]:
    """The names in a group: 'core' (what --quick runs), 'default' (what a plain run trains) or 'all'."""
    if group not in GROUPS:
        raise ValueError(f"group: expected one of {GROUPS}, got {group!r}")
    if group == "core":
        return list(CORE_STRATEGIES)
    return [name for name, s in table.items() if group == "all" or s.in_default]
