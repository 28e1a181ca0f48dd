"""model/tracing.py: the traced single-set forward equals the eager network on real forward passes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.network import MIEstimator, ModelConfig
from model.preprocess import prepare_batch
from model.tracing import trace_single_set


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "col_stats"])
def model(request) -> MIEstimator:
    torch.manual_seed(1)
    m = MIEstimator(ModelConfig(dim=16, heads=2, cell_rows=16, knn_rows=64, use_col_stats=request.param))
    with torch.no_grad():  # non-trivial values everywhere (zero-initialised biases stay zero otherwise)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("n,dx,dy", [(5, 1, 1), (15, 2, 1), (100, 3, 3), (255, 1, 6), (600, 7, 2)])
def test_traced_equals_eager(model, n, dx, dy):
    """Shapes other than the traced example's (n below and above the cell/kNN subsets and
    the 256-query attention switch, other dims) give the eager values up to rounding."""
    fast = trace_single_set(model)
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, dx))
    y = np.sin(x[:, :1]) + 0.3 * rng.normal(size=(n, dy))
    batch = prepare_batch([(x, y)], model.config)
    with torch.inference_mode():
        ref = model(batch)
        got = fast(batch)
    assert got.shape == ref.shape == (1, len(model.config.quantile_levels))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert model.training is False


def test_traced_rejects_batches(model):
    fast = trace_single_set(model)
    rng = np.random.default_rng(0)
    sets = [(rng.normal(size=(20, 1)), rng.normal(size=(20, 1))) for _ in range(2)]
    with pytest.raises(ValueError, match="one set per call"):
        fast(prepare_batch(sets, model.config))


def test_tracing_keeps_the_training_mode(model):
    model.train()
    try:
        trace_single_set(model)
        assert model.training
    finally:
        model.eval()
