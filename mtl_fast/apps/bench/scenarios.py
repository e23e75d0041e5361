"""The benchmark scenarios, shared by ``mtl-fast bench`` and the pytest-benchmark suite in benchmarks/.

A scenario is cheap to list and builds its tensors only when run. Building it yields its methods: the timed
call of each contender (mtl_fast, its pure-PyTorch reference, the per-task loop, TorchJD) and of each floor
it is measured against (one pass over J, the plain summed backward), plus a function that computes the
method's result on pinned inputs next to the oracle's result on the same inputs, so that a fast wrong method
is rejected before it is timed.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast
from mtl_fast import GramAggregator, PCGrad, reference
from mtl_fast._ops import reference_only

from ..baselines import per_task_loop_backward, per_task_loop_pcgrad
from ..models import LargeTrunk, MultiTaskNet

__all__ = ["Method", "Built", "Scenario", "scenarios", "select", "torchjd_pcgrad_orders", "SUBJECT", "FLOORS"]

SEED = 0
SUBJECT = "mtl_fast"  # the method every other one is compared with
# Not contenders but what mtl_fast is measured against from below (one pass over J, the plain summed
# backward) and its own parts (its two passes alone).
FLOORS = frozenset({"one_pass", "sum", "gram", "combine"})

Outputs = Callable[[], Tuple[Tensor, Tensor]]


@dataclass
class Method:
    """One contender in a scenario.

    Attributes:
        name: 'mtl_fast', 'reference', 'per_task_loop', 'torchjd', or a floor ('one_pass', 'sum').
        run: the timed call.
        outputs: returns (this method's result, the oracle's result) on pinned inputs (same visiting orders);
            None for a floor that computes something else on purpose (the plain summed backward).
        floor_bytes: the least memory traffic of the job the method does, for its achieved GB/s (None where
            the job is not memory-bound).
        tolerance: overrides the scenario's tolerance for this method.
    """

    name: str
    run: Callable[[], object]
    outputs: Optional[Outputs]
    floor_bytes: Optional[int] = None
    tolerance: Optional[float] = None


@dataclass
class Built:
    """A scenario's tensors and methods, alive while it is measured."""

    methods: List[Method]
    tolerance: float  # largest accepted max|result - oracle| / max|oracle|


@dataclass
class Scenario:
    """A named measurement; ``build`` allocates its inputs."""

    name: str
    group: str
    params: Dict[str, Any]
    method_names: List[str]
    build: Callable[[], Built] = field(repr=False)


@functools.lru_cache(maxsize=None)
def _torchjd_available() -> bool:
    try:
        import torchjd.aggregation  # noqa: F401
        import torchjd.autojac  # noqa: F401
    except ImportError:
        return False
    return True


def torchjd_pcgrad_orders(K: int, seed: int) -> Tensor:
    """The (K, K-1) visiting orders TorchJD 0.18's PCGrad draws after ``torch.manual_seed(seed)``: one
    ``randperm(K)`` from the global CPU generator per task, skipping the task itself."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(K):
        perm = torch.randperm(K, generator=generator)
        rows.append(perm[perm != i])
    return torch.stack(rows)


def _seeded(fn: Callable[[], Any], seed: int) -> Any:
    """Runs fn with torch's global CPU generator seeded (where TorchJD draws its orders), then restores it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 2e-2)


def _pinned_orders(K: int, device: torch.device) -> Tensor:
    """The orders the first call of a fresh ``PCGrad(seed=SEED)`` draws."""
    return PCGrad(seed=SEED).orders(K, device)


# ---------------------------------------------------------------------------------------------------------
# aggregate(J, PCGrad) on a (K, P) Jacobian


def _aggregate(K: int, P: int, dtype: torch.dtype, device: torch.device) -> Scenario:
    # The loop and TorchJD compute in J's dtype; on 16-bit J their dot products round too much to be
    # compared with a float64 oracle, so they race on float32/float64 only.
    full_precision = dtype in (torch.float32, torch.float64)
    # mtl_fast's two passes are also timed alone ('gram', 'combine'): they say which one keeps the whole
    # from the floor of two passes over J.
    names = ["mtl_fast", "reference"] + (["per_task_loop"] if full_precision else []) + \
        (["torchjd"] if full_precision and _torchjd_available() else []) + ["one_pass", "gram", "combine"]

    def build() -> Built:
        generator = torch.Generator().manual_seed(SEED)
        J = torch.randn(K, P, generator=generator).to(device=device, dtype=dtype)
        orders = _pinned_orders(K, device)
        oracle = functools.lru_cache(maxsize=2)(
            lambda key: reference.pcgrad(J, torch.tensor(key, device=device).view(K, K - 1)).to(dtype))

        def want(o: Tensor) -> Tensor:
            return oracle(tuple(o.flatten().tolist()))

        def reference_aggregate() -> Tensor:
            return reference.combine([J], reference.pcgrad_weights(reference.gram([J]), orders))[0]

        rows = list(J.unbind())
        weights = reference.pcgrad_weights(reference.gram([J]), orders)
        w = weights.to(dtype)
        aggregator = PCGrad(seed=SEED)
        methods = {
            "mtl_fast": Method("mtl_fast", lambda: mtl_fast.aggregate(J, aggregator),
                               lambda: (mtl_fast.aggregate(J, PCGrad(seed=SEED)), want(orders))),
            "reference": Method("reference", reference_aggregate, lambda: (reference_aggregate(), want(orders))),
            "per_task_loop": Method("per_task_loop", lambda: per_task_loop_pcgrad(rows, orders),
                                    lambda: (per_task_loop_pcgrad(rows, orders), want(orders))),
            "one_pass": Method("one_pass", lambda: w @ J, lambda: (w @ J, want(orders))),
            # float32 J is multiplied in float32 within a tile (csrc/cpu/gram.cpp); other dtypes in float64.
            "gram": Method("gram", lambda: mtl_fast.gram(J), lambda: (mtl_fast.gram(J), reference.gram([J])),
                           tolerance=1e-6 if dtype == torch.float32 else 1e-12),
            "combine": Method("combine", lambda: mtl_fast.combine(J, weights),
                              lambda: (mtl_fast.combine(J, weights), want(orders))),
        }
        if "torchjd" in names:
            from torchjd.aggregation import PCGrad as TorchJDPCGrad
            peer = TorchJDPCGrad()
            methods["torchjd"] = Method(
                "torchjd", lambda: peer(J),
                lambda: (_seeded(lambda: peer(J), SEED), want(torchjd_pcgrad_orders(K, SEED).to(device))))
        # PCGrad's floor is two reads of J (G must be complete before combining) and one write of P values;
        # one pass over J (w @ J, combine) is one read and one write; gram alone one read.
        itemsize = torch.empty((), dtype=dtype).element_size()
        passes = {"one_pass": (K + 1) * P, "combine": (K + 1) * P, "gram": K * P}
        for name, method in methods.items():
            method.floor_bytes = passes.get(name, (2 * K + 1) * P) * itemsize
        return Built([methods[n] for n in names], _tolerance(dtype))

    dtype_name = str(dtype).replace("torch.", "")
    return Scenario(f"aggregate/pcgrad/K{K}-P{P}-{dtype_name}", "aggregate",
                    {"K": K, "P": P, "dtype": dtype_name, "aggregator": "PCGrad"}, names, build)


# ---------------------------------------------------------------------------------------------------------
# weights(G): each Gram-based aggregator's solver


def gram_aggregators() -> List[type]:
    """The Gram-based aggregators whose weights depend on G, by name (fixed weights have no solver; DBMTL reads
    the losses too, so it has no weights(G) of G alone)."""
    return [mtl_fast.AlignedMTL, mtl_fast.CAGrad, mtl_fast.DualProj, mtl_fast.GradVac, mtl_fast.IMTLG,
            mtl_fast.MGDA, mtl_fast.NashMTL, mtl_fast.PCGrad, mtl_fast.UPGrad, mtl_fast.ConFIG, mtl_fast.FairGrad,
            mtl_fast.SDMGrad, mtl_fast.MoDo, mtl_fast.CRMOGM, mtl_fast.Krum, mtl_fast.Random]


# Aggregators whose constructor needs an argument: the one the bench runs.
_CONSTRUCTORS: Dict[str, Callable[[], GramAggregator]] = {
    "CRMOGM": lambda: mtl_fast.CRMOGM(mtl_fast.MGDA()), "Krum": lambda: mtl_fast.Krum(1)}


def _nash_update(aggregator: GramAggregator, J: Tensor, G: Tensor, orders: Optional[Tensor]) -> Tensor:
    beta = reference.nash_mtl(G)
    norm = float((beta @ G @ beta).sqrt())
    max_norm = aggregator.weighting.max_norm
    return min(1.0, max_norm / norm) * beta @ J if max_norm > 0 else beta @ J


def _preference(aggregator: GramAggregator, J: Tensor) -> Tensor:
    pref = aggregator.weighting.pref_vector
    K = J.shape[0]
    return torch.full((K,), 1.0 / K, dtype=torch.float64) if pref is None else pref


# The oracle's update d = J^T w for an aggregator (default hyperparameters, pinned orders), from
# mtl_fast.reference. Updates rather than weights are compared because several oracles work on J itself.
_SOLVER_ORACLES: Dict[str, Callable[[GramAggregator, Tensor, Tensor, Tensor], Tensor]] = {
    "PCGrad": lambda a, J, G, orders: reference.pcgrad(J, orders),
    "MGDA": lambda a, J, G, orders: reference.mgda(G) @ J,
    "DualProj": lambda a, J, G, orders: reference.dualproj(G, _preference(a, J)) @ J,
    "UPGrad": lambda a, J, G, orders: reference.upgrad(G, _preference(a, J)) @ J,
    "CAGrad": lambda a, J, G, orders: reference.cagrad(J, a.weighting.c),
    "IMTLG": lambda a, J, G, orders: reference.imtlg(J),
    "GradVac": lambda a, J, G, orders: reference.gradvac(J, orders, torch.zeros(len(J), len(J)), a.weighting.beta),
    "AlignedMTL": lambda a, J, G, orders: reference.aligned_mtl(J, _preference(a, J), a.weighting.scale_mode),
    "NashMTL": _nash_update,
}
# Oracles that enumerate every active set: exact, but only affordable for small K.
_ENUMERATING = {"MGDA", "DualProj", "UPGrad"}
_MAX_ENUMERATED_K = 10


def _matching_kwargs(fn: Callable, source: object) -> Dict[str, Any]:
    """The keyword arguments of fn that ``source`` has as attributes (e.g. CAGrad's ``c``), so that TorchJD
    solves with the aggregator's own hyperparameters."""
    return {name: getattr(source, name) for name in inspect.signature(fn).parameters if hasattr(source, name)}


def _make(cls: type) -> GramAggregator:
    if cls.__name__ in _CONSTRUCTORS:
        return _CONSTRUCTORS[cls.__name__]()
    return cls(seed=SEED) if "seed" in inspect.signature(cls).parameters else cls()


def _solver(cls: type, K: int, device: torch.device) -> Scenario:
    name = cls.__name__
    takes_orders = "orders" in inspect.signature(cls.weights).parameters
    oracle = _SOLVER_ORACLES.get(name)
    if name in _ENUMERATING and K > _MAX_ENUMERATED_K:
        oracle = None
    peer_cls = None
    if _torchjd_available() and name not in _CONSTRUCTORS:  # (benchmarks/bench_zoo2.py compares those)
        import torchjd.aggregation
        peer_cls = getattr(torchjd.aggregation, f"{name}Weighting", None)
    # Only PCGrad's solver has a reference path that mtl_fast falls back on (the others' oracles are slow
    # enumerations meant for checking).
    names = ["mtl_fast"] + (["reference"] if name == "PCGrad" else []) + (["torchjd"] if peer_cls else [])

    def build() -> Built:
        generator = torch.Generator().manual_seed(SEED)
        J = torch.randn(K, 1024, generator=generator, dtype=torch.float64).to(device)
        G = J @ J.T
        aggregator = _make(cls)
        orders = _pinned_orders(K, device)
        want = functools.lru_cache(maxsize=2)(lambda key: oracle(
            _make(cls), J, G, None if key is None else torch.tensor(key, device=device).view(K, K - 1)))

        def checked(weights: Callable[[], Tensor], o: Optional[Tensor]) -> Optional[Outputs]:
            """Updates from these weights against the oracle's, where there is an oracle; unchecked otherwise."""
            if oracle is None:
                return None
            return lambda: (weights().to(J.dtype) @ J, want(None if o is None else tuple(o.flatten().tolist())))

        def ours() -> Tensor:
            return _make(cls).weights(G, orders=orders) if takes_orders else _make(cls).weights(G)

        methods = [Method("mtl_fast", lambda: aggregator.weights(G), checked(ours, orders))]
        if "reference" in names:
            methods.append(Method("reference", lambda: reference.pcgrad_weights(G, orders),
                                  checked(lambda: reference.pcgrad_weights(G, orders), orders)))
        peer = None
        if peer_cls:
            try:  # (on a throwaway instance: TorchJD's stateful weightings count their calls)
                peer_cls(**_matching_kwargs(peer_cls, aggregator.weighting))(G)
                peer = peer_cls(**_matching_kwargs(peer_cls, aggregator.weighting))
            except ImportError:  # a TorchJD installed without the optional solver this method needs
                pass
        if peer is not None:
            peer_orders = torchjd_pcgrad_orders(K, SEED).to(device) if takes_orders else None
            # TorchJD's iterative solvers stop at their own tolerances (MGDA's Frank-Wolfe at epsilon=1e-3, the
            # dual-cone QPs with a 1e-4 regularisation): the same method, solved less tightly.
            methods.append(Method("torchjd", lambda: peer(G),
                                  checked(lambda: _seeded(lambda: peer(G), SEED), peer_orders), tolerance=1e-2))
        return Built(methods, 1e-5)

    return Scenario(f"solver/{name}/K{K}", "solver", {"K": K, "aggregator": name}, names, build)


# ---------------------------------------------------------------------------------------------------------
# A training step (forward, per-task losses, backward into .grad) on the classic MTL network or a larger trunk


class _TrainSetup:
    """The network, a batch, and the oracle's gradients for a PCGrad step at either level."""

    def __init__(self, K: int, batch: int, large: bool, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            self.net = MultiTaskNet([10] * K, trunk=LargeTrunk() if large else None).to(device)
            self.x = torch.randn(batch, 3, 28, 28).to(device)
            self.targets = [torch.randint(0, 10, (batch,)).to(device) for _ in range(K)]
        self.shared = list(self.net.trunk.parameters())
        self.params = list(self.net.parameters())
        self.K = K

    def forward(self, split: Optional[Callable[[Tensor], Sequence[Tensor]]] = None) -> Tuple[Tensor, List[Tensor]]:
        """Clears .grad, runs the trunk, ``split`` (e.g. fork; none: every head reads the features) and the
        heads: (features, K losses)."""
        for p in self.params:
            p.grad = None
        features = self.net.trunk(self.x)
        per_head = split(features) if split is not None else [features] * self.K
        logits = [head(f) for head, f in zip(self.net.task_heads, per_head)]
        return features, self.net.losses(logits, self.targets)

    def grads(self) -> Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.params])

    def oracle(self, level: str, orders: Tensor) -> Tensor:
        """All parameters' gradients after one PCGrad step, from K separate autograd calls and
        ``reference.pcgrad`` on the shared parameters' (backward) or the features' (fork) gradients."""
        features, losses = self.forward()
        shared_ids = {id(p) for p in self.shared}
        heads = [p for p in self.params if id(p) not in shared_ids]
        inputs = self.shared if level == "backward" else [features]
        per_task = [torch.autograd.grad(loss, inputs + heads, retain_graph=True, materialize_grads=True)
                    for loss in losses]
        J = torch.stack([torch.cat([g.reshape(-1) for g in grads[: len(inputs)]]) for grads in per_task])
        combined = reference.pcgrad(J, orders).to(J.dtype)
        if level == "backward":
            sizes = [p.numel() for p in self.shared]
            shared_grads = [c.view_as(p) for c, p in zip(combined.split(sizes), self.shared)]
        else:
            shared_grads = list(torch.autograd.grad(features, self.shared, combined.view_as(features)))
        head_grads = [sum(grads[len(inputs) + h] for grads in per_task) for h in range(len(heads))]
        by_id = {id(p): g for p, g in zip(self.shared + heads, shared_grads + head_grads)}
        return torch.cat([by_id[id(p)].reshape(-1) for p in self.params])


def _train(net: str, level: str, K: int, batch: int, device: torch.device) -> Scenario:
    # TorchJD and the loop work on parameter-level Jacobians; at the representation level the floor is the
    # plain backward that fork replaces.
    peers = (["per_task_loop"] + (["torchjd"] if _torchjd_available() else [])) if level == "backward" else []
    # backward's 'auto' takes the per-task loop on CPUs; its batched (vmap) Jacobian is timed beside it, and the
    # Gram engine, the same step without the Jacobian.
    variants = ["mtl_fast_batched", "mtl_fast_engine"] if level == "backward" else []
    names = ["mtl_fast"] + variants + ["reference"] + peers + ["sum"]

    def build() -> Built:
        setup = _TrainSetup(K, batch, net == "large", device)
        orders = _pinned_orders(K, device)

        def step_backward(aggregator: GramAggregator, jacobian: str = "auto") -> None:
            _, losses = setup.forward()
            mtl_fast.backward(losses, setup.shared, aggregator=aggregator, jacobian=jacobian)

        def step_fork(aggregator: GramAggregator) -> None:
            _, losses = setup.forward(lambda f: mtl_fast.fork(f, K, aggregator=aggregator))
            torch.autograd.backward(sum(losses))

        step = step_backward if level == "backward" else step_fork

        def step_reference(aggregator: GramAggregator) -> None:
            with reference_only():
                step(aggregator)

        def step_loop() -> None:
            _, losses = setup.forward()
            per_task_loop_backward(losses, setup.shared, orders=orders)

        def step_sum() -> None:
            _, losses = setup.forward()
            torch.autograd.backward(sum(losses))

        def outputs(run: Callable[[], None], o: Tensor, on: _TrainSetup = setup) -> Outputs:
            def result() -> Tuple[Tensor, Tensor]:
                run()
                return on.grads(), on.oracle(level, o)
            return result

        # The engine hooks its own copy of the network (the same seed, the same weights), so that its hooks do
        # not run in the other methods' forwards.
        engine_setup = _TrainSetup(K, batch, net == "large", device) if level == "backward" else None
        engine = mtl_fast.GramEngine(engine_setup.net.trunk) if level == "backward" else None

        def step_engine(aggregator: GramAggregator) -> None:
            _, losses = engine_setup.forward()
            engine.backward(losses, aggregator=aggregator)

        ours, batched, theirs = PCGrad(seed=SEED), PCGrad(seed=SEED), PCGrad(seed=SEED)
        methods = {
            "mtl_fast": Method("mtl_fast", lambda: step(ours), outputs(lambda: step(PCGrad(seed=SEED)), orders)),
            "mtl_fast_batched": Method(
                "mtl_fast_batched", lambda: step_backward(batched, "batched"),
                outputs(lambda: step_backward(PCGrad(seed=SEED), "batched"), orders)),
            "mtl_fast_engine": Method(
                "mtl_fast_engine", lambda: step_engine(PCGrad(seed=SEED)),
                outputs(lambda: step_engine(PCGrad(seed=SEED)), orders, engine_setup)),
            "reference": Method("reference", lambda: step_reference(theirs),
                                outputs(lambda: step_reference(PCGrad(seed=SEED)), orders)),
            "per_task_loop": Method("per_task_loop", step_loop, outputs(step_loop, orders)),
            "sum": Method("sum", step_sum, None),
        }
        if "torchjd" in names:
            from torchjd.aggregation import PCGrad as TorchJDPCGrad
            from torchjd.autojac import jac_to_grad, mtl_backward
            peer = TorchJDPCGrad()

            def step_torchjd() -> None:
                features, losses = setup.forward()
                mtl_backward(losses, features=features, shared_params=setup.shared)
                jac_to_grad(setup.shared, peer)

            methods["torchjd"] = Method("torchjd", step_torchjd, outputs(
                lambda: _seeded(step_torchjd, SEED), torchjd_pcgrad_orders(K, SEED).to(device)))
        return Built([methods[n] for n in names], 1e-4)

    return Scenario(f"train/{net}/{level}/K{K}-B{batch}", "train",
                    {"net": net, "level": level, "K": K, "batch": batch, "aggregator": "PCGrad"}, names, build)


# ---------------------------------------------------------------------------------------------------------
# Fused heads (mtl_fast.nn.MultiTaskHeads), when the installed mtl_fast has them


def _fused_heads_class() -> Optional[type]:
    """mtl_fast.nn.MultiTaskHeads if it exists with the layout ``_heads`` relies on, else None."""
    cls = getattr(getattr(mtl_fast, "nn", None), "MultiTaskHeads", None)
    if cls is None:
        return None
    try:
        probe = cls(4, [2, 3])
        layout_ok = tuple(probe.weight.shape) == (5, 4) and tuple(probe.bias.shape) == (5,)
    except Exception:  # another constructor or layout: skip the scenario rather than fail the run
        return None
    return cls if layout_ok else None


def _heads(K: int, batch: int, in_features: int, device: torch.device) -> Scenario:
    """Forward, cross-entropy and backward of K linear heads: fused against K nn.Linear in a loop.

    Assumes the design's layout: ``MultiTaskHeads(in_features, classes_per_task)`` holding all heads as one
    ``weight`` (sum of classes x in_features) and ``bias``, returning the K logits (a list, or one tensor
    with the tasks' classes side by side).
    """
    classes = [10] * K

    def build() -> Built:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            fused = _fused_heads_class()(in_features, classes).to(device)
            features = torch.randn(batch, in_features, device=device, requires_grad=True)
            targets = [torch.randint(0, c, (batch,)).to(device) for c in classes]
        looped = nn.ModuleList(nn.Linear(in_features, c) for c in classes).to(device)
        with torch.no_grad():
            for head, w, b in zip(looped, fused.weight.split(classes), fused.bias.split(classes)):
                head.weight.copy_(w)
                head.bias.copy_(b)

        def step(heads: Callable[[Tensor], Any]) -> Tensor:
            features.grad = None
            logits = heads(features)
            logits = logits.split(classes, dim=1) if isinstance(logits, Tensor) else logits
            torch.autograd.backward(sum(F.cross_entropy(z, y) for z, y in zip(logits, targets)))
            return features.grad

        def run_looped() -> Tensor:
            return step(lambda f: [head(f) for head in looped])

        methods = [Method("mtl_fast", lambda: step(fused), lambda: (step(fused).clone(), run_looped().clone())),
                   Method("per_task_loop", run_looped, None)]
        return Built(methods, 1e-4)

    return Scenario(f"heads/K{K}-B{batch}", "heads", {"K": K, "batch": batch, "in_features": in_features},
                    ["mtl_fast", "per_task_loop"], build)


# ---------------------------------------------------------------------------------------------------------


def scenarios(device: torch.device, quick: bool) -> List[Scenario]:
    """Every scenario for ``device``; ``quick`` keeps the points the claims are made at, at small sizes."""
    device = torch.device(device)
    out: List[Scenario] = []
    if quick:
        grid = [(2, 100_000), (8, 100_000), (32, 100_000), (8, 4_000_000)]
        dtypes = [torch.float32]
    else:
        # A GPU streams 4e6 columns in well under a millisecond: it gets sizes where bandwidth, not launch
        # latency, decides.
        sizes = (100_000, 1_000_000, 4_000_000) + ((16_000_000, 64_000_000) if device.type == "cuda" else ())
        grid = [(K, P) for K in (2, 8, 32) for P in sizes]
        dtypes = [torch.float32, torch.float64, torch.bfloat16]
    for dtype in dtypes:
        for K, P in grid if dtype == torch.float32 else [(8, 1_000_000)]:
            out.append(_aggregate(K, P, dtype, device))
    for cls in gram_aggregators():
        for K in (8,) if quick else (2, 8, 32):
            out.append(_solver(cls, K, device))
    train = [("classic", 8, 64)] if quick else [("classic", 8, 64), ("classic", 32, 64), ("large", 8, 64)]
    for net, K, batch in train:
        for level in ("backward", "fork"):
            out.append(_train(net, level, K, batch, device))
    if _fused_heads_class() is not None:
        for K in (8,) if quick else (8, 32):
            out.append(_heads(K, 64, 128, device))
    return out


def select(all_scenarios: Sequence[Scenario], patterns: Optional[Sequence[str]]) -> List[Scenario]:
    """The scenarios whose name starts with, or matches (fnmatch), one of ``patterns``; all when None."""
    import fnmatch
    if not patterns:
        return list(all_scenarios)
    return [s for s in all_scenarios
            if any(s.name.startswith(p) or fnmatch.fnmatchcase(s.name, p) for p in patterns)]
