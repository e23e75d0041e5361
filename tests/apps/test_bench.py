"""The benchmark harness (mtl_fast.apps.bench): its correctness checks accept every real method and reject a
wrong one, and ``mtl-fast bench --quick`` writes the documented JSON. No timing is asserted."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import mtl_fast
from mtl_fast.apps.bench import main
from mtl_fast.apps.bench import scenarios as sc
from mtl_fast.apps.bench.runner import Settings, check_method, run_scenario

CPU = torch.device("cpu")
TINY = Settings(budget_s=0.01, min_reps=2, max_reps=4, rounds=2)


@pytest.mark.parametrize("scenario", [
    sc._aggregate(5, 1000, torch.float32, CPU),
    sc._aggregate(4, 999, torch.float64, CPU),
    sc._aggregate(3, 512, torch.bfloat16, CPU),
    *[sc._solver(cls, 5, CPU) for cls in sc.gram_aggregators()],
    sc._train("classic", "backward", 4, 3, CPU),
    sc._train("classic", "fork", 4, 3, CPU),
], ids=lambda s: s.name)
def test_every_method_passes_its_check(scenario: sc.Scenario) -> None:
    built = scenario.build()
    assert [m.name for m in built.methods] == scenario.method_names
    for method in built.methods:
        tolerance = method.tolerance or built.tolerance
        status, error, why = check_method(method, tolerance)
        assert status in ("ok", "unchecked"), f"{method.name}: {why}"
        assert status == "unchecked" or error <= tolerance


def test_torchjd_orders_are_reproduced() -> None:
    """TorchJD's PCGrad draws its own orders; the harness predicts them, which is what makes it checkable at
    K > 2, where the order changes the result."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    K = 6
    J = torch.randn(K, 300, dtype=torch.float64)
    got = sc._seeded(lambda: aggregation.PCGrad()(J), sc.SEED)
    want = mtl_fast.reference.pcgrad(J, sc.torchjd_pcgrad_orders(K, sc.SEED))
    torch.testing.assert_close(got, want)


def test_a_wrong_method_is_rejected_and_not_timed() -> None:
    scenario = sc._aggregate(6, 2000, torch.float32, CPU)
    built = scenario.build()
    honest = built.methods[0]
    J = torch.randn(6, 2000, generator=torch.Generator().manual_seed(sc.SEED))  # the scenario's J
    # A "fast path" that forgets the projections: the plain sum of the task gradients.
    wrong = sc.Method("wrong", honest.run, lambda: (mtl_fast.aggregate(J, mtl_fast.Sum()), honest.outputs()[1]))
    status, error, why = check_method(wrong, built.tolerance)
    assert status == "failed" and error > built.tolerance and "oracle" in why

    raising = sc.Method("raising", honest.run, lambda: 1 / 0)
    assert check_method(raising, built.tolerance)[0] == "failed"

    rigged = dataclasses.replace(scenario, method_names=scenario.method_names + ["wrong"],
                                 build=lambda: sc.Built(built.methods + [wrong], built.tolerance))
    rows = {r["method"]: r for r in run_scenario(rigged, CPU, TINY, memcpy_bytes_per_s=1e10)}
    assert rows["wrong"]["check"] == "failed" and "median_s" not in rows["wrong"]
    assert rows["mtl_fast"]["check"] == "ok" and rows["mtl_fast"]["median_s"] > 0


def test_bench_fails_when_mtl_fast_is_wrong(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sc.mtl_fast, "aggregate", lambda J, aggregator: J.sum(dim=0))
    assert main(["--quick", "--scenario", "aggregate/pcgrad/K2-P100000"]) == 1
    assert "mtl_fast failed its check" in capsys.readouterr().err


def test_quick_json_schema(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--scenario", "aggregate/pcgrad/K2-P100000", "solver/PCGrad",
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    env = doc["environment"]
    for key in ("device", "torch", "cuda", "backend", "cpu_count", "torch_threads", "memcpy_gbps", "csrc_tree"):
        assert key in env
    assert env["backend"] == mtl_fast.backend()
    results = doc["results"]
    assert {r["scenario"] for r in results} == {"aggregate/pcgrad/K2-P100000-float32", "solver/PCGrad/K8"}
    for r in results:
        assert r["check"] in ("ok", "unchecked")
        for key in ("method", "median_s", "q1_s", "q3_s", "iqr_s", "reps", "speedup", "peak_memory_bytes"):
            assert key in r
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"]
    aggregate = [r for r in results if r["group"] == "aggregate"]
    assert all(r["gbps"] > 0 and r["memcpy_fraction"] > 0 for r in aggregate)
    assert next(r for r in results if r["method"] == "mtl_fast")["speedup"] == 1.0
    assert "== aggregate/pcgrad/K2-P100000-float32" in capsys.readouterr().out


def test_list_and_bad_usage(capsys) -> None:
    assert main(["--quick", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "aggregate/pcgrad/K8-P100000-float32" in names and "train/classic/backward/K8-B64" in names
    assert main(["--quick", "--scenario", "no-such-scenario"]) == 2
    assert main(["--threads", "0", "--list"]) == 2


def test_plot_or_a_clear_message(tmp_path, capsys) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert main(["--quick", "--plot", str(tmp_path / "x.png")]) == 2
        assert "matplotlib" in capsys.readouterr().err
        return
    assert main(["--quick", "--scenario", "solver/PCGrad", "--plot", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").stat().st_size > 0


def test_claims_pass_or_fail_and_the_legend(capsys) -> None:
    """Claims are statements with PASS / FAIL (or 'measured' without a bound); the legend explains the columns."""
    from mtl_fast.apps.bench import report

    def row(scenario: str, method: str, median: float) -> dict:
        return {"scenario": scenario, "method": method, "median_s": median, "q1_s": median, "q3_s": median}

    results = [row("aggregate/pcgrad/K8-P100000-float32", "torchjd", 6.0),
               row("aggregate/pcgrad/K8-P100000-float32", "mtl_fast", 1.0),
               row("aggregate/pcgrad/K32-P100000-float32", "torchjd", 4.0),
               row("aggregate/pcgrad/K32-P100000-float32", "mtl_fast", 1.0),
               row("train/classic/backward/K8-B64", "per_task_loop", 1.2),
               row("train/classic/backward/K8-B64", "mtl_fast", 1.0)]
    claims = report.claim_results(results)
    assert [c["passed"] for c in claims if c["bound"]] == [True, False]
    text = report.format_claims(claims)
    assert "PASS     mtl_fast aggregates with PCGrad at least 5x faster than TorchJD" in text
    assert "FAIL     mtl_fast aggregates with PCGrad at least 8x faster" in text and "measured" in text
    assert "issue" not in text.lower()
    assert main(["--quick", "--scenario", "solver/PCGrad"]) == 0
    out = capsys.readouterr().out
    assert "mtl_fast x: this method's median time / mtl_fast's" in out
