"""``mtl-fast bench``: the command line over the scenarios."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from . import report
from .runner import FULL, QUICK, run_scenario
from .scenarios import SUBJECT, scenarios, select
from .timing import memcpy_bandwidth

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtl-fast bench",
        description="Benchmark mtl_fast against its pure-PyTorch reference, the per-task loop and TorchJD "
                    "(when installed). Every method is checked against the reference before it is timed.")
    parser.add_argument("--quick", action="store_true", help="only the points the claims are made at, short timing")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", metavar="FILE.json", help="write the environment and every result as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a figure of the speedups (needs matplotlib)")
    parser.add_argument("--scenario", metavar="NAME", nargs="+", action="extend",
                        help="run only scenarios whose name starts with (or fnmatch-matches) NAME")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the benchmark; 0 on success, 1 when an mtl_fast method fails its check, 2 on bad usage."""
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("mtl-fast bench: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.plot and not report.plot_available():
        # Said before the run rather than after minutes of measuring.
        print("mtl-fast bench: --plot needs matplotlib, which is not installed "
              "(pip install matplotlib, or the package's [plot] extra)", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print(f"mtl-fast bench: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    chosen = select(scenarios(device, args.quick), args.scenario)
    if args.list:
        print("\n".join(s.name for s in chosen))
        return 0
    if not chosen:
        print(f"mtl-fast bench: no scenario matches {args.scenario}; see --list", file=sys.stderr)
        return 2

    settings = QUICK if args.quick else FULL
    copy_bytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    memcpy = memcpy_bandwidth(device, copy_bytes, budget_s=settings.budget_s)
    env = report.environment(device, memcpy)
    print(report.format_environment(env))
    print(report.LEGEND, flush=True)

    from tqdm.auto import tqdm
    results = []
    with tqdm(total=sum(len(s.method_names) for s in chosen), unit="method", file=sys.stderr,
              leave=False) as bar:
        for scenario in chosen:
            bar.set_description(scenario.name)
            rows = run_scenario(scenario, device, settings, memcpy, tick=lambda label: bar.update())
            results.extend(rows)
            bar.write(report.format_table(rows) + "\n", file=sys.stdout)
    claims = report.claim_results(results)
    if claims:
        print(report.format_claims(claims))
    if args.output:
        report.write_json(args.output, env, results, claims)
        print(f"wrote {args.output}")
    if args.plot:
        report.write_plot(args.plot, results, env)
        print(f"wrote {args.plot}")
    ours_failed = [r for r in results if r["check"] == "failed" and r["method"] in (SUBJECT, "reference")]
    for r in ours_failed:
        print(f"mtl-fast bench: {r['scenario']} {r['method']} failed its check: {r['check_detail']}",
              file=sys.stderr)
    return 1 if ours_failed else 0
