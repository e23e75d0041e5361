"""`mtl-fast demo` end to end on tiny runs (a few steps: checks the plumbing and the report, not accuracy)."""
import json
import sys
import numpy as np
import pytest
import torch
from torch import nn

import mtl_fast
from mtl_fast import demo, loss_weighting
from mtl_fast.__main__ import main as cli_main
from mtl_fast.data import SHAPES_TASKS

TINY = ["--steps", "4", "--train-size", "128", "--val-size", "64", "--eval-every", "2", "--loop-steps", "0",
        "--no-progress"]


def run_demo(tmp_path, *args):
    """Runs the demo with ``args`` on top of TINY; returns (exit status, the JSON report or None)."""
    output = tmp_path / "out.json"
    status = demo.main([*TINY, "--output", str(output), *args])
    return status, (json.loads(output.read_text()) if output.exists() else None)


def test_strategy_groups():
    available = demo.available_strategies()
    assert list(available)[:4] == list(demo.CORE_STRATEGIES) == demo.strategy_names("core")
    default, everything = demo.strategy_names("default"), demo.strategy_names("all")
    assert default == [name for name in everything if available[name].in_default]
    assert set(everything) == set(available)
    for name in everything:  # every aggregator beyond the core has both levels, the default run takes -rep
        if name.endswith("-rep") and name != "pcgrad-rep":
            assert name in default and name[:-4] in everything and name[:-4] not in default
    with pytest.raises(ValueError, match="group"):
        demo.strategy_names("most")


def test_tiny_run_writes_valid_json(tmp_path, capsys):
    status, report = run_demo(tmp_path, "--strategies", "sum,pcgrad-rep", "--loop-steps", "2", "--device", "cpu")
    assert status == 0
    tasks = list(SHAPES_TASKS)
    assert [(r["strategy"], r["task"]) for r in report["results"]] == [(s, t) for s in ("sum", "pcgrad-rep")
                                                                        for t in tasks]
    for row in report["results"]:
        assert set(row) == {"strategy", "task", "accuracy", "chance"}
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["chance"] < 1.0
    for strategy in report["strategies"]:
        assert strategy["error"] is None and strategy["median_step_ms"] > 0
        assert strategy["curve"]["step"] == [2, 4] and set(strategy["curve"]["accuracy"]) == set(tasks)
    assert [s["level"] for s in report["strategies"]] == ["parameter", "representation"]
    loop = report["per_task_loop"]
    assert loop["strategy"] == "pcgrad" and loop["mtl_fast_ms"] > 0 and loop["per_task_loop_ms"] > 0
    assert report["config"]["steps"] == 4 and report["environment"]["device"] == "cpu"
    out = capsys.readouterr().out
    assert "chance" in out and "per-task loop" in out


def test_same_seed_same_results(tmp_path):
    """Every strategy starts from the same weights on the same batches: reruns reproduce the accuracies."""
    first = run_demo(tmp_path, "--strategies", "pcgrad")[1]["results"]
    second = run_demo(tmp_path, "--strategies", "pcgrad")[1]["results"]
    assert first == second


def test_user_npz_data(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", images=rng.integers(0, 256, (40, 28, 28, 3), dtype=np.uint8),
             labels=np.stack([np.arange(40) % 2, np.arange(40) % 5], 1), task_names=np.array(["odd", "mod5"]))
    status, report = run_demo(tmp_path, "--data", str(tmp_path / "mine.npz"), "--strategies", "sum",
                              "--val-fraction", "0.25")
    assert status == 0
    assert [(t["name"], t["classes"]) for t in report["tasks"]] == [("odd", 2), ("mod5", 5)]
    assert report["config"]["data"].endswith("mine.npz")


@pytest.mark.parametrize("args, message", [
    (["--strategies", "sum,nope"], "unknown 'nope'"),
    (["--steps", "0"], "--steps: expected a positive number"),
    (["--data", "/nonexistent/data.npz"], "no such file"),
])
def test_bad_usage_exits_2(tmp_path, capsys, args, message):
    status, report = run_demo(tmp_path, *args)
    assert status == 2 and report is None
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    status, _ = run_demo(tmp_path, "--plot", str(tmp_path / "curves.png"))
    assert status == 2 and "pip install" in capsys.readouterr().err


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    status, _ = run_demo(tmp_path, "--strategies", "sum,pcgrad-rep", "--plot", str(tmp_path / "curves.png"))
    assert status == 0 and (tmp_path / "curves.png").stat().st_size > 1000


def test_a_failing_strategy_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    available = demo.available_strategies()

    def broken(classes, seed):
        raise RuntimeError("solver diverged")

    available["broken"] = demo.Strategy("broken", "parameter", "always fails", broken)
    monkeypatch.setattr(demo, "available_strategies", lambda: available)
    status, report = run_demo(tmp_path, "--strategies", "broken,sum")
    assert status == 1
    assert [s["error"] for s in report["strategies"]] == ["RuntimeError: solver diverged", None]
    assert {r["strategy"] for r in report["results"]} == {"sum"}


def test_every_default_strategy_trains(tmp_path):
    """The whole default group (the zoo and the loss weightings, with their update and epoch hooks: an epoch is
    4 steps here) runs without error."""
    status, report = run_demo(tmp_path, "--strategies", "default", "--steps", "5", "--eval-every", "5",
                              "--batch-size", "32")
    assert status == 0, [s["error"] for s in report["strategies"] if s["error"]]
    assert [s["name"] for s in report["strategies"]] == demo.strategy_names("default")


def test_new_aggregators_and_loss_weightings_are_picked_up(tmp_path, monkeypatch):
    """An aggregator exported by mtl_fast and a loss weighting in mtl_fast.loss_weighting join the run by name."""
    class Halves(mtl_fast.GramAggregator):
        def weights(self, G):
            return torch.full((G.shape[0],), 0.5, dtype=torch.float64, device=G.device)

    class LearnedWeighting(nn.Module, loss_weighting.LossWeighting):
        def __init__(self, num_tasks: int) -> None:
            super().__init__()
            self.log_weights = nn.Parameter(torch.zeros(num_tasks))

        def weighted_losses(self, losses):
            return [w * loss for w, loss in zip(self.log_weights.exp(), losses)]

    monkeypatch.setattr(mtl_fast, "Halves", Halves, raising=False)
    monkeypatch.setattr(mtl_fast, "__all__", [*mtl_fast.__all__, "Halves"])
    monkeypatch.setattr(loss_weighting, "LearnedWeighting", LearnedWeighting, raising=False)
    monkeypatch.setattr(loss_weighting, "__all__", [*loss_weighting.__all__, "LearnedWeighting"])
    available = demo.available_strategies()
    assert available["halves"].level == "parameter" and available["halves-rep"].level == "representation"
    assert available["learned"].level == "loss"
    assert {"halves-rep", "learned"} <= set(demo.strategy_names("default"))
    status, report = run_demo(tmp_path, "--strategies", "halves,halves-rep,learned")
    assert status == 0 and all(s["error"] is None for s in report["strategies"])


def test_runs_without_a_weighting_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "mtl_fast.loss_weighting", None)  # as if the module did not exist
    assert all(s.level != "loss" for s in demo.available_strategies().values())


def test_cli_dispatch(capsys):
    assert cli_main(["demo", "--list-strategies"]) == 0
    assert "pcgrad-rep" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_requested_without_a_gpu(tmp_path, capsys):
    status, _ = run_demo(tmp_path, "--device", "cuda")
    assert status == 2 and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.cuda
def test_tiny_run_on_cuda(tmp_path):
    status, report = run_demo(tmp_path, "--device", "cuda", "--strategies", "sum,pcgrad,pcgrad-rep,dwa",
                              "--loop-steps", "2")
    assert status == 0 and report["environment"]["device"].startswith("cuda")
    assert all(s["error"] is None for s in report["strategies"]) and report["per_task_loop"]["speedup"] > 0
