"""The PyTorch Lightning recipes of the README: mf.backward under manual optimisation, mf.fork under automatic
optimisation. Each checks the trunk's gradient of the first step against the aggregate computed by hand."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import mtl_fast as mf

L = pytest.importorskip("lightning", reason="lightning is not installed (it comes with the test extra: "
                                            "pip install -e .[test])")


# --- the recipes, as the README shows them -------------------------------------------------------------------

class ManualMultiTask(L.LightningModule):
    """Manual optimisation: mf.backward takes the place of self.manual_backward."""

    def __init__(self, net, aggregator):
        super().__init__()
        self.net = net
        self.aggregator = mf.diagnostics.Recorder(aggregator)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, *ys = batch
        opt = self.optimizers()
        opt.zero_grad()
        losses = self.net.losses(self.net(x), ys)
        mf.backward(losses, self.net.trunk.parameters(), aggregator=self.aggregator)
        opt.step()
        self.log("conflicts", self.aggregator.last.conflicts.float())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ForkMultiTask(L.LightningModule):
    """Automatic optimisation: mf.fork between trunk and heads; Lightning's own backward does the rest."""

    def __init__(self, net, aggregator):
        super().__init__()
        self.net = net
        self.aggregator = aggregator

    def training_step(self, batch, batch_idx):
        x, *ys = batch
        feats = mf.fork(self.net.trunk(x), self.net.num_tasks, aggregator=self.aggregator)
        return sum(F.cross_entropy(head(f), y) for head, f, y in zip(self.net.task_heads, feats, ys))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# --- the checks ----------------------------------------------------------------------------------------------

def first_step_grads(module_class):
    """module_class, recording every parameter's gradient just before the first optimiser step."""
    class Recording(module_class):
        first_grads = None

        def on_before_optimizer_step(self, optimizer):
            if self.first_grads is None:
                self.first_grads = {name: p.grad.clone() for name, p in self.net.named_parameters()}
    return Recording


def train_two_steps(module, x, ys, tmp_path):
    loader = DataLoader(TensorDataset(x, *ys), batch_size=4)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert trainer.global_step == 2


def test_manual_optimisation_with_backward(small_multitask_net, tmp_path):
    net, x, ys = small_multitask_net(K=3, batch=8, dtype=torch.float32)
    initial = copy.deepcopy(net)
    module = first_step_grads(ManualMultiTask)(net, mf.MGDA())
    train_two_steps(module, x, ys, tmp_path)

    # by hand, on the first batch: per-task trunk gradients J, w = MGDA's weights of J J^T, update w @ J
    losses = initial.losses(initial(x[:4]), [y[:4] for y in ys])
    trunk = list(initial.trunk.parameters())
    per_task = [torch.autograd.grad(loss, trunk, retain_graph=True) for loss in losses]
    J = torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in per_task]).double()
    w = mf.MGDA().weights(J @ J.T)
    expected = (w @ J).float()
    got = torch.cat([module.first_grads[f"trunk.{name}"].reshape(-1) for name, _ in initial.trunk.named_parameters()])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    # a head gets its own task's ordinary gradient
    head_grad = torch.autograd.grad(losses[1], initial.task_heads[1].weight)[0]
    assert torch.allclose(module.first_grads["task_heads.1.weight"], head_grad, rtol=1e-5, atol=1e-7)
    assert module.aggregator.steps == 2


def test_fork_inside_automatic_optimisation(small_multitask_net, tmp_path):
    net, x, ys = small_multitask_net(K=2, batch=8, dtype=torch.float32)
    initial = copy.deepcopy(net)
    module = first_step_grads(ForkMultiTask)(net, mf.UPGrad())
    train_two_steps(module, x, ys, tmp_path)

    # by hand: the K feature gradients (each flattened over batch x features) combined with UPGrad's weights,
    # then one backward through the trunk
    features = initial.trunk(x[:4])
    per_task = [torch.autograd.grad(F.cross_entropy(head(features), y[:4]), features, retain_graph=True)[0]
                for head, y in zip(initial.task_heads, ys)]
    J = torch.stack([g.reshape(-1) for g in per_task]).double()
    w = mf.UPGrad().weights(J @ J.T)
    combined = (w @ J).float().view_as(features)
    expected = torch.autograd.grad(features, list(initial.trunk.parameters()), grad_outputs=combined)
    for (name, _), want in zip(initial.trunk.named_parameters(), expected):
        assert torch.allclose(module.first_grads[f"trunk.{name}"], want, rtol=1e-4, atol=1e-6), name
