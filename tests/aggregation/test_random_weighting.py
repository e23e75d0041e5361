"""Random: seeded draws on the simplex, resumable."""
import torch

import mtl_fast as mf
from mtl_fast import reference as ref


def test_seeded_softmax_of_a_normal_draw():
    G = torch.eye(5, dtype=torch.float64)
    w = mf.Random(seed=3).weights(G)
    z = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(w, ref.random_weights(z))
    assert (w > 0).all() and torch.isclose(w.sum(), torch.tensor(1.0, dtype=torch.float64))
    agg = mf.Random(seed=3)
    assert not torch.equal(agg.weights(G), agg.weights(G))  # a new draw every step
