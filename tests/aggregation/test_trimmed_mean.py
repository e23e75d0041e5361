"""TrimmedMean: the median at K = 3, the oracle, half precision, TorchJD."""
import pytest
import torch

import mtl_fast as mf
from mtl_fast import reference as ref
from mtl_fast.aggregation.trimmed_mean import NETWORK_MIN_ROW, sort_rows
from zoo2_cases import jacobian


def test_k3_trim1_is_the_median_and_trim0_the_mean():
    J = jacobian(3)
    assert torch.equal(mf.TrimmedMean(1)(J), J.median(dim=0).values)
    assert torch.allclose(mf.TrimmedMean(0)(J), J.mean(0))


@pytest.mark.parametrize("K,b", [(5, 1), (7, 2), (64, 10)])
def test_matches_the_oracle_on_chunks(K, b):
    J = jacobian(K, P=30, seed=K)
    chunks = [J[:, :12].reshape(K, 3, 4), J[:, 12:]]
    out = mf.aggregate(chunks, mf.TrimmedMean(b))
    assert torch.allclose(torch.cat([out[0].reshape(-1), out[1]]), ref.trimmed_mean(J, b), atol=1e-12)


def test_half_precision_and_size_check():
    J = jacobian(5).half()
    assert mf.TrimmedMean(1)(J).dtype == torch.float16
    with pytest.raises(ValueError, match="trim_number"):
        mf.TrimmedMean(2)(jacobian(4))


def test_against_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    J = jacobian(9, seed=1)
    assert torch.allclose(mf.TrimmedMean(3)(J), aggregation.TrimmedMean(3)(J), atol=1e-12)


@pytest.mark.parametrize("K", [1, 2, 3, 5, 8, 13, 64])
def test_sorting_network_against_torch_sort(K):
    x = torch.randn(K, 40, dtype=torch.float64)
    x[:, ::4] = x[0, ::4]  # ties
    x[-1, 1] = float("inf")
    assert torch.equal(torch.stack(sort_rows(x)), x.sort(dim=0).values)


def test_long_rows_take_the_network_and_keep_a_nan():
    J = jacobian(5, P=NETWORK_MIN_ROW, seed=4)
    assert torch.allclose(mf.TrimmedMean(2)(J), J.sort(dim=0).values[2:3].mean(0), atol=1e-12)
    for position in range(5):
        broken = J.clone()
        broken[position, 3] = float("nan")
        out = mf.TrimmedMean(1)(broken)
        assert torch.isnan(out[3]) and torch.isfinite(out[torch.arange(NETWORK_MIN_ROW) != 3]).all()
