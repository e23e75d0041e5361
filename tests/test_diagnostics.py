"""mtl_fast.diagnostics against hand-worked Gram matrices, explicit Jacobians, and the backward / fork paths."""
import csv
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mtl_fast as mf
from mtl_fast import diagnostics

from states import same_state

NAN = float("nan")


def cosines_from_J(J: torch.Tensor) -> torch.Tensor:
    """cos(g_i, g_j) straight from the rows of J, 0 where a row is zero."""
    J = J.double()
    K = J.shape[0]
    out = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            ni, nj = J[i].norm(), J[j].norm()
            if ni > 0 and nj > 0:
                out[i, j] = J[i] @ J[j] / (ni * nj)
    return out


# Hand-worked cases: (J rows, expected norms, expected cosines, expected conflicting pairs).
HAND_WORKED = {
    "orthogonal": ([[3.0, 0.0], [0.0, 2.0]], [3.0, 2.0], [[1.0, 0.0], [0.0, 1.0]], 0),
    "opposite": ([[1.0, 1.0], [-2.0, -2.0]], [math.sqrt(2), math.sqrt(8)], [[1.0, -1.0], [-1.0, 1.0]], 1),
    "identical": ([[1.0, 2.0, 2.0]] * 3, [3.0] * 3, [[1.0] * 3] * 3, 0),
    "one zero": ([[0.0, 0.0], [1.0, -1.0]], [0.0, math.sqrt(2)], [[0.0, 0.0], [0.0, 1.0]], 0),
    "all zero": ([[0.0, 0.0]] * 2, [0.0, 0.0], [[0.0, 0.0], [0.0, 0.0]], 0),
    "single task": ([[3.0, 4.0]], [5.0], [[1.0]], 0),
    "mixed": ([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], [1.0, math.sqrt(2), 1.0],
              [[1.0, -1 / math.sqrt(2), 0.0], [-1 / math.sqrt(2), 1.0, -1 / math.sqrt(2)],
               [0.0, -1 / math.sqrt(2), 1.0]], 2),
}


@pytest.mark.parametrize("case", list(HAND_WORKED))
def test_hand_worked_gram(case):
    rows, norms, cosines, conflicts = HAND_WORKED[case]
    J = torch.tensor(rows, dtype=torch.float64)
    G = J @ J.T
    assert torch.allclose(diagnostics.gradient_norms(G), torch.tensor(norms, dtype=torch.float64))
    C = diagnostics.cosine_matrix(G)
    assert C.dtype == torch.float64 and C.shape == G.shape
    assert torch.allclose(C, torch.tensor(cosines, dtype=torch.float64), atol=1e-15)
    count = diagnostics.conflicting_pairs(G)
    assert count.dtype == torch.int64 and count.dim() == 0 and int(count) == conflicts


def test_directional_derivatives_are_g_dot_update():
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    d = w @ J  # the update
    assert torch.allclose(diagnostics.directional_derivatives(J @ J.T, w), J @ d)
    # float32 weights are accepted; the result is float64
    assert diagnostics.directional_derivatives(J @ J.T, w.float()).dtype == torch.float64


@pytest.mark.parametrize("dtype, scale", [(torch.float64, s) for s in (1e-150, 1e-20, 1.0, 1e20, 1e150)]
                         + [(torch.float32, s) for s in (1e-15, 1.0, 1e15)])
def test_cosines_against_explicit_J(dtype, scale):
    J = (torch.randn(4, 50, dtype=torch.float64) * scale).to(dtype)
    J[2] = -J[0] * 0.5  # an exactly conflicting pair
    G = mf.gram(J)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(diagnostics.cosine_matrix(G), cosines_from_J(J), atol=tol)
    assert torch.allclose(diagnostics.gradient_norms(G), J.double().norm(dim=1), rtol=tol)
    assert int(diagnostics.conflicting_pairs(G)) == int((cosines_from_J(J).triu(1) < 0).sum())


@settings(max_examples=40, deadline=None)
@given(K=st.integers(1, 5), P=st.integers(1, 8), seed=st.integers(0, 2 ** 31 - 1),
       zero_rows=st.sets(st.integers(0, 4)))
def test_cosines_property(K, P, seed, zero_rows):
    J = torch.randn(K, P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    for k in zero_rows:
        if k < K:
            J[k] = 0.0
    C = diagnostics.cosine_matrix(J @ J.T)
    assert torch.isfinite(C).all()
    assert torch.equal(C, C.T) and (C.abs() <= 1.0).all()
    assert torch.allclose(C, cosines_from_J(J), atol=1e-12)


@pytest.mark.parametrize("bad", [NAN, float("inf"), -float("inf")])
def test_non_finite_gram_gives_nan_and_no_exception(bad):
    G = torch.eye(3, dtype=torch.float64)
    G[1, 2] = bad
    w = torch.ones(3, dtype=torch.float64)
    for value in (diagnostics.gradient_norms(G), diagnostics.cosine_matrix(G),
                  diagnostics.directional_derivatives(G, w)):
        assert torch.isnan(value).all()
    assert int(diagnostics.conflicting_pairs(G)) == 0
    s = diagnostics.summary(G, w)
    assert math.isnan(s.to_dict()["cosines"][0][0])


def test_summary_and_to_dict():
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    G, w = J @ J.T, torch.tensor([1.0, 0.5], dtype=torch.float64)
    s = diagnostics.summary(G, w)
    assert s.num_tasks == 2
    assert torch.equal(s.cosines, diagnostics.cosine_matrix(G))
    assert torch.equal(s.directional, diagnostics.directional_derivatives(G, w))
    d = s.to_dict()
    assert d["norms"] == pytest.approx([1.0, math.sqrt(2)])
    assert d["cosines"] == [pytest.approx([1.0, -1 / math.sqrt(2)]), pytest.approx([-1 / math.sqrt(2), 1.0])]
    assert d["conflicts"] == 1 and isinstance(d["conflicts"], int)
    assert d["weights"] == [1.0, 0.5]
    assert d["directional"] == pytest.approx([0.5, 0.0])


def test_bad_input_names_the_argument():
    G = torch.eye(2)
    with pytest.raises(ValueError, match="G: .*square"):
        diagnostics.cosine_matrix(torch.ones(2, 3))
    with pytest.raises(ValueError, match="G: .*square"):
        diagnostics.gradient_norms(torch.ones(2))
    with pytest.raises(ValueError, match="G: "):
        diagnostics.conflicting_pairs(torch.ones(0, 0))
    with pytest.raises(TypeError, match="G: .*floating"):
        diagnostics.cosine_matrix(torch.eye(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="G: .*Tensor"):
        diagnostics.cosine_matrix([[1.0]])
    with pytest.raises(ValueError, match=r"w: .*\(2,\)"):
        diagnostics.directional_derivatives(G, torch.ones(3))
    with pytest.raises(ValueError, match=r"w: "):
        diagnostics.summary(G, torch.ones(2, 1))
    with pytest.raises(TypeError, match="w: .*floating"):
        diagnostics.summary(G, torch.ones(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="w: .*Tensor"):
        diagnostics.summary(G, [1.0, 1.0])


def test_values_stay_on_the_device():
    """On the meta device every host read (item, tolist, bool, cpu copy of data) raises, so these calls
    completing proves they never synchronise."""
    G = torch.empty(3, 3, device="meta", dtype=torch.float64)
    w = torch.empty(3, device="meta", dtype=torch.float64)
    s = diagnostics.summary(G, w)
    for t in (s.norms, s.cosines, s.conflicts, s.weights, s.directional, diagnostics.conflicting_pairs(G)):
        assert t.device.type == "meta"
    monitor = diagnostics.Monitor(every=1000)
    for _ in range(3):
        monitor.update(s)
    assert monitor.mean().cosines.device.type == "meta" and monitor.rows == []


@pytest.mark.cuda
def test_no_host_sync_on_cuda():
    G = torch.randn(3, 5, device="cuda", dtype=torch.float64)
    G = G @ G.T
    recorder = diagnostics.Recorder(mf.Mean())
    monitor = diagnostics.Monitor(every=1000)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        w = recorder.weights(G)
        monitor.update(recorder.last)
        monitor.update(diagnostics.summary(G, w))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert recorder.last.cosines.is_cuda


def per_task_trunk_J(net, x, ys):
    """Row k: task k's gradient of the trunk parameters, flattened."""
    losses = net.losses(net(x), ys)
    trunk = list(net.trunk.parameters())
    return torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, trunk, retain_graph=True)])
                        for loss in losses])


@pytest.mark.parametrize("aggregator", [mf.UPGrad(), mf.MGDA(), mf.PCGrad(seed=0), mf.Sum(), mf.Weighted([1, 2, 3])],
                         ids=repr)
def test_recorder_with_backward(small_multitask_net, aggregator):
    net, x, ys = small_multitask_net()
    J = per_task_trunk_J(net, x, ys)
    recorder = diagnostics.Recorder(aggregator)
    w = mf.backward(net.losses(net(x), ys), net.trunk.parameters(), aggregator=recorder)
    assert recorder.steps == 1
    last = recorder.last
    assert torch.allclose(last.cosines, cosines_from_J(J), atol=1e-12)
    assert torch.allclose(last.norms, J.norm(dim=1))
    assert torch.equal(last.weights, w)
    update = torch.cat([p.grad.reshape(-1) for p in net.trunk.parameters()])
    assert torch.allclose(update, w @ J, atol=1e-12)
    assert torch.allclose(last.directional, J @ update, atol=1e-12)


def test_recorder_with_fork(small_multitask_net):
    net, x, ys = small_multitask_net()
    features = net.trunk(x)
    J = torch.stack([torch.autograd.grad(nn.functional.cross_entropy(head(features), y), features,
                                         retain_graph=True)[0].reshape(-1) for head, y in zip(net.task_heads, ys)])
    monitor = diagnostics.Monitor()
    recorder = diagnostics.Recorder(mf.UPGrad(), monitor=monitor)
    for step in range(2):
        feats = mf.fork(net.trunk(x), net.num_tasks, aggregator=recorder)
        sum(nn.functional.cross_entropy(head(f), y) for head, f, y in zip(net.task_heads, feats, ys)).backward()
    assert recorder.steps == 2 and len(monitor.rows) == 2
    assert torch.allclose(recorder.last.cosines, cosines_from_J(J), atol=1e-12)
    assert monitor.rows[-1]["cosine_0_1"] == pytest.approx(float(cosines_from_J(J)[0, 1]))


def test_recorder_rejects_non_gram_aggregators():
    with pytest.raises(TypeError, match="aggregator: .*GradDrop"):
        diagnostics.Recorder(mf.GradDrop())
    with pytest.raises(TypeError, match="monitor: "):
        diagnostics.Recorder(mf.Sum(), monitor="log.csv")


def test_recorder_state_is_the_wrapped_aggregators():
    gradvac, twin = mf.GradVac(seed=0), mf.GradVac(seed=0)  # the twin takes the same steps, unwrapped
    recorder = diagnostics.Recorder(gradvac)
    J = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    recorder.weights(J @ J.T)
    twin.weights(J @ J.T)
    state = recorder.state_dict()
    assert same_state(state, twin.state_dict())
    recorder.weights(J.flip(0) @ J.flip(0).T)
    recorder.load_state_dict(state)
    assert same_state(gradvac.state_dict(), state)
    recorder.reset()
    twin.reset()
    assert same_state(gradvac.state_dict(), twin.state_dict())


def test_recorder_keeps_a_skipped_step_out_of_the_means():
    recorder = diagnostics.Recorder(mf.UPGrad())
    monitor = diagnostics.Monitor(every=2)
    for G in (torch.eye(2, dtype=torch.float64), torch.full((2, 2), NAN, dtype=torch.float64)):
        recorder.weights(G)
        monitor.update(recorder.last)
    assert torch.isnan(recorder.last.weights).all()
    row = monitor.rows[0]
    assert row["skipped"] == 1 and row["cosine_0_1"] == 0.0 and row["norm_0"] == 1.0


def summaries(n: int, K: int = 3):
    out = []
    for _ in range(n):
        J = torch.randn(K, 7, dtype=torch.float64)
        out.append(diagnostics.summary(J @ J.T, torch.rand(K, dtype=torch.float64)))
    return out


def expected_row(window):
    """The row a Monitor writes for a window of finite summaries, computed here from their to_dict()."""
    dicts = [s.to_dict() for s in window]
    K = len(dicts[0]["norms"])

    def mean(f):
        return sum(f(d) for d in dicts) / len(dicts)

    row = {"skipped": 0, "conflicts": mean(lambda d: d["conflicts"])}
    for k in range(K):
        row[f"norm_{k}"] = mean(lambda d: d["norms"][k])
        row[f"weight_{k}"] = mean(lambda d: d["weights"][k])
        row[f"directional_{k}"] = mean(lambda d: d["directional"][k])
    for i in range(K):
        for j in range(i + 1, K):
            row[f"cosine_{i}_{j}"] = mean(lambda d: d["cosines"][i][j])
    return row


def test_monitor_csv_and_jsonl_round_trip(tmp_path):
    steps = summaries(7)
    with diagnostics.Monitor(csv=tmp_path / "d.csv", jsonl=tmp_path / "d.jsonl", every=3) as monitor:
        for s in steps:
            monitor.update(s)
    # rows at steps 3 and 6, and the partial window at close
    assert [row["step"] for row in monitor.rows] == [3, 6, 7]
    for row, window in zip(monitor.rows, (steps[0:3], steps[3:6], steps[6:7])):
        for key, value in expected_row(window).items():
            assert row[key] == pytest.approx(value), key
    with open(tmp_path / "d.csv", newline="") as f:
        from_csv = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    with open(tmp_path / "d.jsonl") as f:
        from_jsonl = [json.loads(line) for line in f]
    assert from_csv == monitor.rows
    assert from_jsonl == monitor.rows
    assert list(from_jsonl[0])[:3] == ["step", "skipped", "conflicts"]
    mean = monitor.mean()
    assert torch.allclose(mean.cosines, torch.stack([s.cosines for s in steps]).mean(0))
    assert float(mean.conflicts) == pytest.approx(sum(int(s.conflicts) for s in steps) / 7)


def test_monitor_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="every: "):
        diagnostics.Monitor(every=0)
    with pytest.raises(TypeError, match="every: "):
        diagnostics.Monitor(every=2.0)
    with pytest.raises(TypeError, match="tensorboard: "):
        diagnostics.Monitor(tensorboard=3)
    monitor = diagnostics.Monitor()
    with pytest.raises(TypeError, match="diagnostics: "):
        monitor.update({"norms": []})
    with pytest.raises(ValueError, match="mean: "):
        monitor.mean()
    monitor.update(summaries(1, K=3)[0])
    with pytest.raises(ValueError, match="diagnostics: has 2 tasks"):
        monitor.update(summaries(1, K=2)[0])


def test_monitor_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(log_dir=str(tmp_path / "given"))
    with diagnostics.Monitor(tensorboard=writer) as monitor:
        for s in summaries(2):
            monitor.update(s)
    writer.close()
    with diagnostics.Monitor(tensorboard=tmp_path / "opened") as monitor:
        monitor.update(summaries(1)[0])
    for folder in ("given", "opened"):
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / folder).iterdir())


def test_monitor_tensorboard_missing(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package looks like
    with pytest.raises(ImportError, match="pip install tensorboard"):
        diagnostics.Monitor(tensorboard=tmp_path)


def test_monitor_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    monitor = diagnostics.Monitor()
    with pytest.raises(ValueError, match="plot: "):
        monitor.plot(tmp_path / "none.png")
    for s in summaries(4):
        monitor.update(s)
    monitor.plot(tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 0


def test_monitor_plot_without_matplotlib(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monitor = diagnostics.Monitor()
    monitor.update(summaries(1)[0])
    with pytest.raises(ImportError, match="pip install matplotlib"):
        monitor.plot(tmp_path / "d.png")
