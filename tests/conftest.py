import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-based tests: bounded and derandomised (the same cases on every run) by default; the long profile runs
# ten times as many cases, for the benchmark settings and CI's extended run.
settings.register_profile("default", max_examples=25, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=250, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def small_multitask_net():
    """make(K, batch, dtype) -> (net, x, ys): the classic MultiTaskNet (shared trunk + K linear heads) on a tiny
    MLP trunk, with a batch of 3x2x2 inputs and 4-class targets."""
    from mtl_fast.apps.models import MultiTaskNet
    from torch import nn

    def make(K: int = 3, batch: int = 6, dtype: torch.dtype = torch.float64):
        trunk = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh())
        trunk.out_features = 5
        net = MultiTaskNet([4] * K, trunk=trunk).to(dtype)
        x = torch.randn(batch, 3, 2, 2, dtype=dtype)
        ys = [torch.randint(0, 4, (batch,)) for _ in range(K)]
        return net, x, ys
    return make
