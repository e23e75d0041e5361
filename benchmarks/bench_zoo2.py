"""Method zoo II on the CPU: weights(G) for K = 2..64 against TorchJD 0.18 on the same G, and a training step
on the origin network at both levels against PCGrad and the per-task loop.

    OMP_NUM_THREADS=1 python benchmarks/bench_zoo2.py [--repeat N] [--steps]
    OMP_NUM_THREADS=1 python benchmarks/bench_zoo2.py --ratios [--ks 4 8 16] [--rounds N] [--json FILE]

Medians of N rounds, the candidates interleaved round by round (the machine may be shared). TorchJD's
weightings take G itself where they are Gram-based (FairGrad, SDMGrad, MoDo, CR-MOGM, Krum); its ConFIG,
Random, TrimmedMean and ExcessMTL take the matrix J (K x 4K here), so for those the comparison includes what
each needs as input: our weights(G) against their aggregation of J (ConFIG, Random), and both aggregations of
J for the methods that are not Gram-based. DBMTL and MoCo have no TorchJD counterpart (LibMTL only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional

import torch

import mtl_fast as mf
from mtl_fast.apps.models import MultiTaskNet

from bench_zoo import side_by_side  # (this folder is on sys.path when a script here runs)

KS = (2, 4, 8, 16, 32, 64)


def jacobian(K: int, seed: int = 0) -> torch.Tensor:
    """K random gradients of 4K entries with one conflicting pair."""
    J = torch.randn(K, 4 * K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    J[1] = -J[0] + 0.3 * J[1]
    return J


def with_losses(aggregator: mf.GramAggregator, K: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """weights(G) of an aggregator that reads the losses, handed fixed ones each call."""
    losses = torch.linspace(0.5, 2.0, K, dtype=torch.float64)

    def weights(G: torch.Tensor) -> torch.Tensor:
        aggregator.update_losses(losses)
        return aggregator.weights(G)
    return weights


def weights_pairs(K: int, J: torch.Tensor, tj) -> Dict[str, Dict[str, Optional[Callable[[], object]]]]:
    """For each method: our call and TorchJD's (None where it has none), on the same G (or J)."""
    G = J @ J.T
    ours_gram = {
        "ConFIG": mf.ConFIG(), "FairGrad(1)": mf.FairGrad(1.0), "FairGrad(2)": mf.FairGrad(2.0),
        "SDMGrad": mf.SDMGrad(), "MoDo": mf.MoDo(), "CRMOGM(IMTLG)": mf.CRMOGM(mf.IMTLG()),
        "Krum(1)": mf.Krum(1) if K >= 4 else None, "Random": mf.Random(seed=0),
    }
    theirs: Dict[str, Optional[Callable[[], object]]] = {name: None for name in ours_gram}
    if tj is not None:
        theirs.update({
            "ConFIG": lambda: tj.ConFIG()(J),  # TorchJD's ConFIG aggregates J
            "FairGrad(1)": (lambda w=tj.FairGradWeighting(1.0): w(G)),
            "FairGrad(2)": (lambda w=tj.FairGradWeighting(2.0): w(G)),
            "SDMGrad": (lambda w=tj.SDMGradWeighting(): w(G)), "MoDo": (lambda w=tj.MoDoWeighting(): w(G)),
            "CRMOGM(IMTLG)": (lambda w=tj.CRMOGMWeighting(tj.IMTLGWeighting()): w(G)),
            "Krum(1)": (lambda w=tj.KrumWeighting(1): w(G)) if K >= 4 else None,
            "Random": lambda a=tj.Random(): a(J),  # TorchJD's Random aggregates J
        })
    pairs = {name: {"ours": None if agg is None else (lambda a=agg: a.weights(G)), "torchjd": theirs[name]}
             for name, agg in ours_gram.items()}
    pairs["DBMTL"] = {"ours": lambda w=with_losses(mf.DBMTL(), K): w(G), "torchjd": None}
    on_j = {"TrimmedMean(1)": (mf.TrimmedMean(1), None if tj is None else tj.TrimmedMean(1)),
            "ExcessMTL": (mf.ExcessMTL(), None if tj is None else tj.ExcessMTL()), "MoCo": (mf.MoCo(), None)}
    for name, (agg, peer) in on_j.items():
        if name == "TrimmedMean(1)" and K < 3:
            continue
        pairs[name + " on J"] = {"ours": lambda a=agg: mf.aggregate(J, a),
                                 "torchjd": None if peer is None else (lambda p=peer: p(J))}
    return pairs


def weights_table(repeat: int) -> None:
    try:
        import torchjd.aggregation as tj
    except ImportError:
        tj = None
        print("torchjd not installed: ours only (pip install torchjd==0.18.0)")
    rows: Dict[str, Dict[int, str]] = {}
    for K in KS:
        J = jacobian(K)
        for name, pair in weights_pairs(K, J, tj).items():
            fns = {side: fn for side, fn in pair.items() if fn is not None}
            if not fns:
                continue
            t = side_by_side(fns, repeat)
            cell = f"{t['ours']:.0f}" if "ours" in t else "-"
            if "torchjd" in t:
                cell += f" / {t['torchjd']:.0f} ({t['torchjd'] / t['ours']:.1f}x)"
            rows.setdefault(name, {})[K] = cell
    print("\nweights(G) [or aggregation of J], median us: ours / TorchJD 0.18 (TorchJD time / ours)")
    print("| method | " + " | ".join(f"K={K}" for K in KS) + " |")
    print("|---|" + "---|" * len(KS))
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells.get(K, "n/a") for K in KS) + " |")


def training_steps(methods: Dict[str, Callable[[], mf.Aggregator]], K: int, batch: int = 32,
                   adam: bool = False) -> Dict[str, Callable[[], None]]:
    """One training step on the origin network per method and level (mf.backward, and mf.fork where the method
    is meaningful on features), and the per-task loop (K backward passes); with ``adam``, each ends in an Adam
    step, as a whole training step does."""
    torch.manual_seed(0)
    model = MultiTaskNet([10] * K)
    x = torch.randn(batch, 3, 28, 28)
    ys = [torch.randint(0, 10, (batch,)) for _ in range(K)]
    shared = list(model.trunk.parameters())
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3) if adam else None

    def parameter_level(agg):
        def step():
            model.zero_grad(set_to_none=True)
            losses = model.losses(model(x), ys)
            if agg.needs_losses:
                agg.update_losses(losses)
            mf.backward(losses, shared, aggregator=agg)
            if optimiser is not None:
                optimiser.step()
        return step

    def representation_level(agg):
        def step():
            model.zero_grad(set_to_none=True)
            features = mf.fork(model.trunk(x), K, aggregator=agg)
            losses = model.losses([head(f) for head, f in zip(model.task_heads, features)], ys)
            if agg.needs_losses:
                agg.update_losses(losses)
            sum(losses).backward()
            if optimiser is not None:
                optimiser.step()
        return step

    def per_task_loop():
        model.zero_grad(set_to_none=True)
        losses = model.losses(model(x), ys)
        for k, loss in enumerate(losses):
            torch.autograd.grad(loss, shared, retain_graph=k < K - 1)
        if optimiser is not None:
            optimiser.step()

    fns = {"per-task loop": per_task_loop}
    for name, make in methods.items():
        fns[f"{name} backward"] = parameter_level(make())
        agg = make()
        if agg.representation_level_ok:
            fns[f"{name} fork"] = representation_level(agg)
    return fns


STEP_METHODS = {"PCGrad": lambda: mf.PCGrad(seed=0), "ConFIG": mf.ConFIG, "FairGrad": mf.FairGrad,
                "SDMGrad": mf.SDMGrad, "MoDo": mf.MoDo, "CRMOGM(MGDA)": lambda: mf.CRMOGM(mf.MGDA()),
                "Krum(0)": lambda: mf.Krum(0), "Random": lambda: mf.Random(seed=0), "DBMTL": mf.DBMTL,
                "TrimmedMean(1)": lambda: mf.TrimmedMean(1), "ExcessMTL": mf.ExcessMTL, "MoCo": mf.MoCo}


def step_table(repeat: int, K: int = 3, batch: int = 32) -> None:
    """One training step (forward, backward through mf.backward or mf.fork, no optimiser) on the origin
    network, per method, against PCGrad at the same level and the per-task loop (K backward passes)."""
    t = side_by_side(training_steps(STEP_METHODS, K, batch), repeat, inner=1)
    print(f"\ntraining step, origin network, K = {K}, batch {batch}, median ms (ratio to PCGrad at that level)")
    for name, us in t.items():
        level = "backward" if name.endswith("backward") else "fork"
        base = t.get(f"PCGrad {level}")
        ratio = "" if name == "per-task loop" or base is None else f" ({us / base:.2f}x PCGrad)"
        print(f"| {name} | {us / 1e3:.2f}{ratio} |")


def ratio_summary(ratios: List[float]) -> Dict[str, float]:
    """Median, quartiles, and a distribution-free 95% confidence interval of the median (the order statistics of
    ranks n/2 - 0.98 sqrt(n) and 1 + n/2 + 0.98 sqrt(n), counted from 1): the quartiles show a round's noise,
    the interval how well the median is pinned down."""
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    ordered, n = sorted(ratios), len(ratios)
    half = 0.98 * math.sqrt(n)
    return {"median": median, "q1": q1, "q3": q3, "ci95_low": ordered[max(0, math.floor(n / 2 - half) - 1)],
            "ci95_high": ordered[min(n - 1, math.ceil(n / 2 + half))]}


def step_ratios(K: int, rounds: int, inner: int, batch: int = 32) -> Dict[str, Dict[str, float]]:
    """Whole training steps (with Adam) of PCGrad, ExcessMTL, MoCo, ConFIG (a Gram-based control) and the
    per-task loop at the parameter level, as ratios to PCGrad's step in the same round.

    Each round times ``inner`` steps of every candidate, in an order rotated from round to round, by wall clock
    and by this process's CPU time; the per-round ratios cancel what a slow spell of the shared machine does to
    a whole round, and their quartiles show what is left of the noise."""
    methods = {name: STEP_METHODS[name] for name in ("PCGrad", "ExcessMTL", "MoCo", "ConFIG")}
    fns = {name: fn for name, fn in training_steps(methods, K, batch, adam=True).items() if "fork" not in name}
    names = list(fns)
    samples = {name: {"wall": [], "cpu": []} for name in names}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fns[name]()
            samples[name]["wall"].append((time.perf_counter() - wall) / inner)
            samples[name]["cpu"].append((time.process_time() - cpu) / inner)
    base = samples["PCGrad backward"]
    results = {}
    for name, times in samples.items():
        row = {}
        for clock in ("wall", "cpu"):
            summary = ratio_summary([t / b for t, b in zip(times[clock], base[clock])])
            row.update({f"{clock}_ratio_{key}": value for key, value in summary.items()})
            row[f"{clock}_ms_median"] = statistics.median(times[clock]) * 1e3
        results[name] = row
    return results


def ratio_report(ks: List[int], rounds: int, inner: int, output: Optional[str]) -> None:
    load_before = os.getloadavg()
    report = {"environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "backend": mf.backend(),
                              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                       text=True).stdout.strip(),
                              "rounds": rounds, "inner": inner, "load_average_before": load_before},
              "results": {}}
    for K in ks:
        results = step_ratios(K, rounds, inner)
        report["results"][f"K={K}"] = results
        print(f"\nwhole training step with Adam, origin network, K = {K}, {rounds} rounds of {inner}: ratio to "
              f"PCGrad's step in the same round: median, quartiles [q1, q3], 95% interval of the median (ci)")
        print("| step | wall | cpu |\n|---|---|---|")
        for name, row in results.items():
            cells = [f"{row[f'{c}_ratio_median']:.3f} [{row[f'{c}_ratio_q1']:.3f}, {row[f'{c}_ratio_q3']:.3f}] ci "
                     f"({row[f'{c}_ratio_ci95_low']:.3f}, {row[f'{c}_ratio_ci95_high']:.3f}), "
                     f"{row[f'{c}_ms_median']:.1f} ms" for c in ("wall", "cpu")]
            print(f"| {name} | " + " | ".join(cells) + " |")
    report["environment"]["load_average_after"] = os.getloadavg()
    print(f"load average before {load_before}, after {report['environment']['load_average_after']}")
    if output:
        with open(output, "w") as f:
            json.dump(report, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--steps", action="store_true", help="also time a training step per method")
    parser.add_argument("--ratios", action="store_true",
                        help="only the whole-step ratios to PCGrad of the methods on J (see step_ratios)")
    parser.add_argument("--ks", type=int, nargs="+", default=[8], help="K for --ratios")
    parser.add_argument("--rounds", type=int, default=60, help="rounds for --ratios")
    parser.add_argument("--inner", type=int, default=2, help="steps per candidate and round for --ratios")
    parser.add_argument("--json", help="where --ratios writes its results")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, mtl_fast backend {mf.backend()}")
    if args.ratios:
        ratio_report(args.ks, args.rounds, args.inner, args.json)
        return
    weights_table(args.repeat)
    if args.steps:
        step_table(args.repeat)


if __name__ == "__main__":
    main()
