"""Training one strategy: the same network from the same initialisation on the same batches for every
strategy, so the only difference is how the task gradients become one update."""
from __future__ import annotations

import copy
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

import mtl_fast as mf
from ..baselines import per_task_loop_backward
from ..data import MultiTaskData
from ..models import MultiTaskNet
from .strategies import STRATEGIES, EngineLevel, LossLevel, Strategy

__all__ = ["RunConfig", "Prepared", "StrategyRun", "prepare", "probe_batch", "task_gram", "train_strategy",
           "evaluate", "time_against_per_task_loop"]


@dataclass(frozen=True)
class RunConfig:
    """What one demo run does (the presets live in :mod:`mtl_fast.apps.demo.cli`).

    ``noise_seeds``: how many seeds the plain sum is trained with; their spread is the seed-to-seed noise
    that the other strategies' differences are judged against.
    """

    train_size: int
    val_size: int
    steps: int
    batch_size: int
    eval_every: int
    loop_steps: int
    noise_seeds: int
    lr: float = 1e-3


@dataclass
class Prepared:
    """A split on the training device: normalised float images and (K, N) labels."""

    images: Tensor
    labels: Tensor


def prepare(train: MultiTaskData, val: MultiTaskData, device: torch.device) -> Tuple[Prepared, Prepared]:
    """Both splits as float images normalised with the training split's per-channel mean and deviation."""
    def floats(data: MultiTaskData) -> Tensor:
        return data.images.float() / (255.0 if data.images.dtype == torch.uint8 else 1.0)

    reference = floats(train)
    mean = reference.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = reference.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
    return tuple(Prepared(((floats(d) - mean) / std).to(device), d.labels.t().contiguous().to(device))
                 for d in (train, val))


def _batches(train: Prepared, batch_size: int, steps: int, seed: int) -> Iterator[Tuple[Tensor, List[Tensor]]]:
    """``steps`` batches in a seeded order of reshuffled epochs: the same for every strategy of one seed."""
    generator = torch.Generator().manual_seed(seed)
    n = train.images.shape[0]
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        index, order = order[:batch_size].to(train.images.device), order[batch_size:]
        yield train.images[index], list(train.labels[:, index])


def probe_batch(train: Prepared, size: int, seed: int) -> Tuple[Tensor, List[Tensor]]:
    """A fixed seeded sample of training images on which the tasks' gradients are measured: larger than a
    training batch, so the cosines reflect the tasks' directions more than one batch's noise."""
    index = torch.randperm(train.images.shape[0], generator=torch.Generator().manual_seed(seed))[:size]
    index = index.to(train.images.device)
    return train.images[index], list(train.labels[:, index])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so the host clock sees the step's kernels finish


def _backward(model: MultiTaskNet, strategy: Strategy, method: object, x: Tensor, ys: List[Tensor]) -> Tensor:
    """Forward and backward for one batch the strategy's way; returns the summed loss (detached)."""
    if strategy.level == "representation":
        feats = mf.fork(model.trunk(x), model.num_tasks, aggregator=method)
        losses = model.losses([head(f) for head, f in zip(model.task_heads, feats)], ys)
        if method.needs_losses:  # (fork's own backward does not see the losses)
            method.update_losses([loss.detach() for loss in losses])
        sum(losses).backward()
    else:
        losses = model.losses(model(x), ys)
        if strategy.level == "parameter":
            mf.backward(losses, model.trunk.parameters(), aggregator=method)
        else:
            method.backward(losses, list(model.trunk.parameters()))
    return sum(loss.detach() for loss in losses)


def task_gram(model: MultiTaskNet, x: Tensor, ys: List[Tensor]) -> Tensor:
    """(K, K) Gram matrix of the tasks' gradients of the trunk's parameters on one batch (the model's ``.grad``
    is left alone)."""
    shared = list(model.trunk.parameters())
    losses = model.losses(model(x), ys)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=k + 1 < len(losses))])
            for k, loss in enumerate(losses)]
    return mf.gram(torch.stack(rows)).cpu()


@torch.no_grad()
def evaluate(model: MultiTaskNet, val: Prepared, batch_size: int = 250) -> List[float]:
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
    """What training one strategy with one seed produced."""

    strategy: Strategy
    seed: int = 0
    accuracy: List[float] = field(default_factory=list)
    curve_steps: List[int] = field(default_factory=list)
    curve: List[List[float]] = field(default_factory=list)  # per evaluation, per task
    grams: List[Tensor] = field(default_factory=list)  # per evaluation, (K, K), when measured
    step_seconds: List[float] = field(default_factory=list)
    train_seconds: float = 0.0
    final_loss: Optional[float] = None
    error: Optional[str] = None

    @property
    def median_step_ms(self) -> Optional[float]:
        return 1e3 * statistics.median(self.step_seconds) if self.step_seconds else None

    def to_json(self, task_names: Sequence[str]) -> dict:
        """The run's entry in the ``--output`` document (the accuracies are in its "results")."""
        return {"name": self.strategy.name, "seed": self.seed, "level": self.strategy.level,
                "explanation": self.strategy.explanation, "median_step_ms": self.median_step_ms,
                "train_seconds": self.train_seconds, "final_train_loss": self.final_loss,
                "curve": {"step": self.curve_steps,
                          "accuracy": {t: [acc[k] for acc in self.curve] for k, t in enumerate(task_names)}},
                "error": self.error}


def _new_model(num_classes: Sequence[int], seed: int, device: torch.device) -> MultiTaskNet:
    torch.manual_seed(seed)  # every strategy of one seed starts from the same weights
    return MultiTaskNet(num_classes).to(device)


def train_strategy(strategy: Strategy, train: Prepared, val: Prepared, num_classes: Sequence[int],
                   config: RunConfig, seed: int, progress: bool,
                   probe: Optional[Tuple[Tensor, List[Tensor]]] = None) -> StrategyRun:
    """Trains a fresh network with ``strategy`` for ``config.steps`` steps, evaluating every ``eval_every``;
    with ``measure_gradients``, also the Gram matrix of the tasks' gradients on ``probe`` (training images) at
    each evaluation step."""
    from tqdm.auto import tqdm

    run = StrategyRun(strategy, seed)
    device = train.images.device
    model = _new_model(num_classes, seed, device)
    method = strategy.build(num_classes, seed)
    if isinstance(method, EngineLevel):
        method.attach(model.trunk)
    learned = method.learned_parameters(device) if isinstance(method, LossLevel) else []
    optimizer = torch.optim.Adam(list(model.parameters()) + learned, lr=config.lr)
    steps_per_epoch = max(1, train.images.shape[0] // config.batch_size)
    started = time.perf_counter()
    label = strategy.name if seed == 0 else f"{strategy.name} seed {seed}"
    bar = tqdm(total=config.steps, desc=f"{label:<16}", unit="step", leave=True, disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    loss = torch.zeros(())
    for step, (x, ys) in enumerate(_batches(train, config.batch_size, config.steps, seed), start=1):
        evaluating = step % config.eval_every == 0 or step == config.steps
        if evaluating and probe is not None:
            run.grams.append(task_gram(model, *probe))  # outside the step's clock
        _sync(device)
        tick = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = _backward(model, strategy, method, x, ys)
        optimizer.step()
        _sync(device)
        run.step_seconds.append(time.perf_counter() - tick)
        if step % steps_per_epoch == 0 and isinstance(method, LossLevel):
            method.end_epoch()
        if evaluating:
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
    pcgrad = STRATEGIES["pcgrad"]
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
    for step, (x, ys) in enumerate(tqdm(batches, total=config.loop_steps + warmup, desc="pcgrad vs loop  ",
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
