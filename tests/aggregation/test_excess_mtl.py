"""ExcessMTL: the oracle over steps (with and without warm-up), uniform first step, TorchJD with warm-up."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from zoo2_cases import jacobian

JS = [jacobian(3, seed=s) * (1 + s) for s in range(6)]


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_matches_the_oracle_over_steps(warmup):
    agg = mf.ExcessMTL(0.5, warmup)
    for J, d in zip(JS, ref.excess_mtl(JS, 0.5, warmup)):
        assert torch.allclose(mf.aggregate(J, agg), d, atol=1e-10)


def test_first_step_is_uniform_and_weights_on_the_simplex():
    agg = mf.ExcessMTL()
    assert torch.allclose(mf.aggregate(JS[0], agg), JS[0].mean(0))
    for J in JS[1:]:
        mf.aggregate(J, agg)
    assert torch.isclose(agg.alpha.sum(), torch.tensor(1.0, dtype=torch.float64)) and (agg.alpha > 0).all()


def test_against_torchjd_with_warmup():
    aggregation = pytest.importorskip("torchjd.aggregation")
    ours, theirs = mf.ExcessMTL(1.0, 2), aggregation.ExcessMTL(1.0, 2)
    for J in JS:
        # TorchJD divides by E0 + 1e-7 where this divides by E0
        assert torch.allclose(mf.aggregate(J, ours), theirs(J), rtol=1e-6, atol=1e-6)
