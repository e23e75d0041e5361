"""`mtl-fast demo` end to end on tiny runs (a few steps: checks the plumbing and the report, not accuracy)."""
import json
import sys
import numpy as np
import pytest
import torch
from torch import nn

import mtl_fast
from mtl_fast import loss_weighting
from mtl_fast.__main__ import main as cli_main
from mtl_fast.apps import demo
from mtl_fast.apps.data import MULTIDIGITS_TASKS, SHAPES_TASKS
from mtl_fast.apps.demo import strategies

TINY = ["--steps", "4", "--train-size", "128", "--val-size", "64", "--eval-every", "2", "--loop-steps", "0",
        "--noise-seeds", "2", "--no-progress"]


def run_demo(tmp_path, *args):
    """Runs the demo with ``args`` on top of TINY; returns (exit status, the JSON report or None)."""
    output = tmp_path / "out.json"
    status = demo.main([*TINY, "--output", str(output), *args])
    return status, (json.loads(output.read_text()) if output.exists() else None)


def test_strategy_groups():
    available = strategies.STRATEGIES
    assert list(available)[:4] == list(strategies.CORE_STRATEGIES) == strategies.strategy_names("core")
    default, everything = strategies.strategy_names("default"), strategies.strategy_names("all")
    assert default == [name for name in everything if available[name].in_default]
    assert set(everything) == set(available)
    # every aggregator beyond the core has both levels (where it applies at the representation level), the default
    # run takes the first zoo's -rep; zoo II and the Gram engine run in 'all' only
    for name in everything:
        if name.endswith("-rep") and name != "pcgrad-rep":
            assert name[:-4] in everything and name[:-4] not in default
    assert {"mgda-rep", "upgrad-rep", "graddrop-rep"} <= set(default)
    assert not {"config-rep", "moco", "pcgrad-engine"} & set(default) and {"moco", "pcgrad-engine"} <= set(everything)
    with pytest.raises(ValueError, match="group"):
        strategies.strategy_names("most")
    for s in available.values():  # every row says what it does, at a known level
        assert s.level in strategies.LEVELS and s.explanation and "\n" not in s.explanation


def test_tiny_run_writes_valid_json(tmp_path, capsys):
    status, report = run_demo(tmp_path, "--strategies", "sum,pcgrad-rep", "--loop-steps", "2", "--device", "cpu")
    assert status == 0
    tasks = list(SHAPES_TASKS)
    assert [(r["strategy"], r["task"]) for r in report["results"]] == [(s, t) for s in ("sum", "pcgrad-rep")
                                                                        for t in tasks]
    for row in report["results"]:
        assert set(row) == {"strategy", "task", "accuracy", "chance", "beyond_noise"}
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
    def broken(classes, seed):
        raise RuntimeError("solver diverged")

    monkeypatch.setitem(strategies.STRATEGIES, "broken",
                        strategies.Strategy("broken", "parameter", "always fails", broken))
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
    assert [s["name"] for s in report["strategies"]] == strategies.strategy_names("default")


def test_a_new_table_row_joins_the_run(tmp_path, monkeypatch):
    """A new aggregator (at both levels) and a new loss weighting, added to the table, train by name."""
    class Halves(mtl_fast.GramAggregator):
        def weights(self, G):
            return torch.full((G.shape[0],), 0.5, dtype=torch.float64, device=G.device)

    class LearnedWeighting(nn.Module, loss_weighting.LossWeighting):
        def __init__(self, num_tasks: int) -> None:
            super().__init__()
            self.log_weights = nn.Parameter(torch.zeros(num_tasks))

        def weighted_losses(self, losses):
            return [w * loss for w, loss in zip(self.log_weights.exp(), losses)]

    rows = [*strategies.both_levels("halves", "every task weighted 1/2", lambda classes, seed: Halves()),
            strategies.loss_level("learned", "learned log-weights", lambda tasks, seed: LearnedWeighting(tasks))]
    for row in rows:
        monkeypatch.setitem(strategies.STRATEGIES, row.name, row)
    available = strategies.STRATEGIES
    assert available["halves"].level == "parameter" and available["halves-rep"].level == "representation"
    assert available["learned"].level == "loss"
    assert {"halves-rep", "learned"} <= set(strategies.strategy_names("default"))
    status, report = run_demo(tmp_path, "--strategies", "halves,halves-rep,learned")
    assert status == 0 and all(s["error"] is None for s in report["strategies"])


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


def test_multidigits_run(tmp_path):
    pytest.importorskip("sklearn")
    status, report = run_demo(tmp_path, "--dataset", "multidigits", "--strategies", "sum,mgda-rep")
    assert status == 0
    assert [(t["name"], t["classes"]) for t in report["tasks"]] == list(MULTIDIGITS_TASKS.items())
    assert report["config"]["data"] == "multidigits"


def test_noise_band_and_conflict_in_the_report(tmp_path, capsys):
    status, report = run_demo(tmp_path, "--strategies", "sum,pcgrad-rep", "--noise-seeds", "3")
    assert status == 0
    assert [r["seed"] for r in report["noise"]["sum_seeds"]] == [0, 1, 2]
    assert set(report["noise"]["threshold"]) == set(SHAPES_TASKS)
    assert all(r["beyond_noise"] in (None, "+", "-") for r in report["results"])
    matrix = torch.tensor(report["cosines"]["matrix"])
    assert matrix.shape == (6, 6) and torch.allclose(matrix.diagonal(), torch.ones(6))
    out = capsys.readouterr().out
    assert "Gradient conflict under the plain sum" in out and "mean cosine with the other tasks'" in out
    assert len(report["cosines"]["with_the_rest"]) == 6
    assert "levels: parameter = mtl_fast.backward" in out and "seed noise" in out
    assert "PCGrad: projects" in out  # each row says what its strategy does


def test_no_band_with_a_single_seed(tmp_path, capsys):
    status, report = run_demo(tmp_path, "--strategies", "sum", "--noise-seeds", "1")
    assert status == 0 and report["noise"]["threshold"] is None
    assert all(r["beyond_noise"] is None for r in report["results"])
    assert "No seed-noise band" in capsys.readouterr().out


def _run(name, accuracy):
    row = strategies.STRATEGIES[name]
    return demo.training.StrategyRun(row, accuracy=accuracy)


def test_marks_only_differences_beyond_the_seed_noise():
    sums = [_run("sum", [0.50, 0.90]), _run("sum", [0.52, 0.90]), _run("sum", [0.48, 0.90])]
    band = demo.reporting.noise_band(sums, val_size=1000)
    # stdev 0.02 over 3 seeds: t(2 dof) * 0.02 * sqrt(4/3); a task with no spread still needs one validation image.
    assert band.threshold[0] == pytest.approx(4.30 * 0.02 * (4 / 3) ** 0.5) and band.threshold[1] == pytest.approx(1e-3)
    assert [band.verdict(0, a) for a in (0.61, 0.59, 0.40)] == ["+", "", "-"]
    assert band.verdict(1, 0.9) == "" and band.verdict(1, 0.95) == "+"
    text = demo.reporting.table([_run("mgda-rep", [0.60, 0.90])], ["a", "b"], [0.25, 0.5], band)
    assert "60.0+" in text and "90.0 " in text and "sum, 3 seeds" in text


def test_conflict_lines_name_the_conflicting_task():
    cosines = torch.tensor([[1.0, 0.3, -0.4], [0.3, 1.0, -0.2], [-0.4, -0.2, 1.0]])
    against_rest = torch.tensor([-0.05, 0.04, -0.30])
    lines = demo.reporting.conflict_lines(cosines, against_rest, ["a", "b", "c"], measurements=5)
    assert "c -0.30" in lines[1] and lines[1].index("c -0.30") < lines[1].index("a -0.05")
    assert lines[2].startswith("  c conflicts with the others") and "a -0.40" in lines[2]


def test_cosine_with_the_rest_from_the_gram_matrix():
    J = torch.randn(4, 50, dtype=torch.float64)
    rest = [J.sum(0) - J[k] for k in range(4)]
    want = torch.stack([J[k] @ rest[k] / (J[k].norm() * rest[k].norm()) for k in range(4)])
    torch.testing.assert_close(demo.reporting.against_the_rest(J @ J.T), want)


def test_plot_has_the_cosine_panel(tmp_path):
    pytest.importorskip("matplotlib")
    status, _ = run_demo(tmp_path, "--strategies", "sum", "--plot", str(tmp_path / "curves.png"))
    assert status == 0 and (tmp_path / "curves.png").stat().st_size > 1000


def test_toy_prints_where_each_method_ends(capsys):
    assert cli_main(["demo", "toy", "--steps", "5", "--methods", "sum,mgda,nashmtl"]) == 0
    out = capsys.readouterr().out
    assert "CAGrad" in out and "Pareto set" in out
    for name in ("sum", "mgda", "nashmtl"):
        assert f"{name:<11} reached the Pareto set from" in out


def test_toy_pareto_set():
    toy = demo.toy
    # Each task's own optimum is on the Pareto set; a point above the x1 axis is beaten by one on it.
    points = torch.tensor([[7.0, -8.3552], [-7.0, -8.3552]], dtype=torch.float64)
    _, front = toy.pareto_front(*toy._grid())
    assert all(toy._on_front(toy.toy_losses(p), front) for p in points)
    assert not toy._on_front(toy.toy_losses(torch.tensor([0.0, 5.0], dtype=torch.float64)), front)


def test_toy_methods_move_towards_the_set():
    toy = demo.toy
    paths = toy.run_toy(["mgda", "upgrad"], steps=400, lr=0.05)
    assert len(paths) == 2 * len(toy.STARTS)
    for path in paths:
        assert path.points.shape == (401, 2) and torch.isfinite(path.points).all()
        start = toy.toy_losses(path.points[0])
        assert path.final_losses[0] + path.final_losses[1] < float(start.sum())


def test_toy_plot(tmp_path):
    pytest.importorskip("matplotlib")
    assert cli_main(["demo", "toy", "--steps", "3", "--methods", "sum,pcgrad", "--plot", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_toy_bad_usage(capsys):
    assert demo.toy.main(["--methods", "nope"]) == 2 and "nope" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["demo", "toy", "--help"], ["bench", "--help"],
                                  ["demo", "--list-strategies"]])
def test_plain_words(argv, capsys):
    """What a user reads speaks of the classic MTL network, and carries no issue numbers."""
    try:
        cli_main(argv)
    except SystemExit:
        pass
    text = capsys.readouterr().out.lower()
    assert text and "origin" not in text and "issue" not in text
