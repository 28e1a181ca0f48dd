"""model/network.py, blocks.py, quantiles.py: invariances, masks, output constraints, loss.

Randomly initialised models, real forward passes in float64 (tolerance 1e-9 .. 1e-6),
so every invariance below is exact by construction, not learned.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from scipy.special import ndtr, ndtri

from helpers import open_zero_paths
from model.network import (
    MIEstimator,
    ModelConfig,
    add_cell_layers,
    add_column_statistics,
    add_row_layers,
    add_nonlinear_statistics,
    add_raw_statistics,
    add_refiner,
    switch_inputs,
    widen,
)
from model.preprocess import (
    NONLINEAR_FEATURES,
    NONLINEAR_KNN_ROWS,
    NONLINEAR_ROWS,
    RAW_CLIP,
    SHAPE_FEATURES,
    SUBSET_SEED,
    canonical_subset,
    normal_scores,
    canonical_correlations,
    column_statistics,
    ksg_stats_slice,
    marginal_shape_statistics,
    prepare_batch,
    set_statistics,
    hermite_statistics,
    nonlinear_statistics,
    norm_statistics,
    projected_ksg_statistics,
    raw_statistics,
    robust_standardize,
    stats_dim,
    stratified_statistics,
)
from model.quantiles import (
    apply_calibration,
    monotone_from_middle,
    fit_calibration,
    fit_calibration_by_n,
    n_range_labels,
    n_range_index,
    from_target,
    interpolate_quantiles,
    pinball_loss,
    to_target,
)

torch.set_num_threads(1)
SMALL = dict(dim=16, heads=2, cell_layers=2, cell_rows=24, inducing=4, row_layers=2, knn_rows=40, head_hidden=32)


def _model(**kw) -> MIEstimator:
    torch.manual_seed(0)
    return open_zero_paths(MIEstimator(ModelConfig(**{**SMALL, **kw})).double().eval())  # new inputs get a real path


def _run(model: MIEstimator, sets) -> np.ndarray:
    with torch.no_grad():
        return model(prepare_batch(sets, model.config).to(dtype=torch.float64)).numpy()


def _pair(n, dx, dy, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = np.tanh(x[:, :1]) + 0.7 * rng.normal(size=(n, dy))
    return x, y


@pytest.fixture(scope="module", params=[{}, dict(use_col_stats=True), dict(use_nonlinear_stats=True),
                                        dict(use_raw_stats=True), dict(use_raw_stats=True, refine_hidden=8, refine_members=2),
                                        dict(refine_hidden=8, refine_inputs="head"),
                                        dict(refine_hidden=8, refine_inputs="stats+shape")],
                ids=["plain", "col_stats", "strata", "raw_stats", "refiner", "refiner_head", "refiner_shape"])
def model(request):
    return _model(**request.param)


@pytest.mark.parametrize("n", [30, 100])  # 100 > cell_rows and > knn_rows: both subsets are used
def test_permutation_and_swap_invariance(model, n):
    x, y = _pair(n, 3, 2, seed=n)
    ref = _run(model, [(x, y)])
    rng = np.random.default_rng(1)
    rows = rng.permutation(n)
    variants = {
        "rows": (x[rows], y[rows]),
        "x coords": (x[:, [2, 0, 1]], y),
        "y coords": (x, y[:, ::-1]),
        "swap": (y, x),
        "all": (y[rows][:, ::-1], x[rows][:, [1, 2, 0]]),
    }
    for name, (a, b) in variants.items():
        np.testing.assert_allclose(_run(model, [(a, b)]), ref, rtol=1e-7, atol=1e-7, err_msg=name)


def test_swap_changes_nothing_even_with_unequal_dims(model):
    x, y = _pair(80, 1, 5, seed=3)
    np.testing.assert_allclose(_run(model, [(y, x)]), _run(model, [(x, y)]), rtol=1e-7, atol=1e-7)


def test_outputs_depend_on_the_data(model):
    """Guard against a degenerate network that the invariance tests would also pass."""
    x, y = _pair(60, 2, 2, seed=4)
    indep = np.random.default_rng(5).normal(size=y.shape)
    assert np.abs(_run(model, [(x, y)]) - _run(model, [(x, indep)])).max() > 1e-4


def test_padding_never_changes_the_output(model):
    sets = [_pair(60, 2, 2, 0), _pair(150, 5, 1, 1), _pair(7, 1, 1, 2), _pair(40, 1, 6, 3)]
    together = _run(model, sets)
    alone = np.concatenate([_run(model, [s]) for s in sets])
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [{}, dict(use_col_stats=True), dict(use_nonlinear_stats=True), dict(use_raw_stats=True),
     dict(use_cca=False, use_knn=False, input_transform="standardize")],
    ids=["default", "col_stats", "strata", "raw_stats", "ablation"],
)
def test_padding_invariance_in_float32(options):
    model = _model(**options).float()
    sets = [_pair(60, 2, 2, 0), _pair(150, 5, 1, 1), _pair(9, 1, 1, 2)]
    with torch.no_grad():
        together = model(prepare_batch(sets, model.config)).numpy()
        alone = np.concatenate([model(prepare_batch([s], model.config)).numpy() for s in sets])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def _edge_sets():
    rng = np.random.default_rng(0)
    x40 = rng.normal(size=(60, 40))
    const = rng.normal(size=(50, 3))
    const[:, 1] = 4.2
    dup = rng.normal(size=(50, 2))
    dup = np.concatenate([dup, dup[:, :1]], axis=1)
    return {
        "n=2": (rng.normal(size=(2, 1)), rng.normal(size=(2, 1))),
        "n=3, 2x2": (rng.normal(size=(3, 2)), rng.normal(size=(3, 2))),
        "1x1": (rng.normal(size=(100, 1)), rng.normal(size=(100, 1))),
        "40x40": (x40, x40 @ rng.normal(size=(40, 40)) + rng.normal(size=(60, 40))),
        "constant columns": (const, const[:, :2] + rng.normal(size=(50, 2))),
        "all constant": (np.ones((20, 2)), np.zeros((20, 1))),
        "duplicated columns": (dup, dup[:, ::-1]),
        "identical x and y": (dup, dup),
        "discrete": (rng.integers(0, 2, size=(80, 2)).astype(float), rng.integers(0, 3, size=(80, 1)).astype(float)),
    }


@pytest.mark.parametrize("name", list(_edge_sets()))
def test_outputs_are_finite_monotone_nonnegative(model, name):
    x, y = _edge_sets()[name]
    q = _run(model, [(x, y)])
    assert q.shape == (1, len(model.config.quantile_levels))
    assert np.isfinite(q).all() and (q >= 0).all() and np.all(np.diff(q, axis=1) >= 0)


def test_default_config_runs_and_is_small():
    torch.manual_seed(0)
    model = MIEstimator(ModelConfig()).eval()
    assert 20_000 < model.num_parameters() < 1_000_000
    x, y = _pair(300, 4, 4)
    with torch.no_grad():
        q = model(prepare_batch([(x, y)], model.config))
    assert torch.isfinite(q).all()


def test_config_round_trip_and_unknown_keys():
    cfg = ModelConfig(dim=24, heads=3, use_knn=False, quantile_levels=(0.1, 0.5, 0.9))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": "blue"})
    with pytest.raises(ValueError):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ValueError):
        ModelConfig(quantile_levels=(0.5, 0.4))


@pytest.mark.parametrize("options", [{}, dict(use_col_stats=True, use_nonlinear_stats=True, use_raw_stats=True)],
                         ids=["plain", "all_inputs"])
def test_gradients_reach_every_parameter(options):
    model = _model(**options).float().train()
    sets = [_pair(50, 2, 3, s) for s in range(3)]
    out = model(prepare_batch(sets, model.config, rng=np.random.default_rng(0)))
    out.sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead


# ---------------------------------------------------------------- quantiles.py


def test_switching_knn_on_starts_from_the_same_function_and_then_learns():
    old = _model(use_knn=False, cell_layers=0)
    new = switch_inputs(old, use_knn=True)
    assert new.config.use_knn and not old.config.use_knn
    sets = [_pair(80, 3, 2, seed=1), _pair(40, 1, 1, seed=2)]
    with_knn = prepare_batch(sets, new.config).to(dtype=torch.float64)
    assert with_knn.knn.abs().sum() > 0                    # the new inputs are really there
    with torch.no_grad():
        np.testing.assert_allclose(new(with_knn).numpy(), _run(old, sets), rtol=1e-12, atol=1e-12)
    # the zeroed weights that read the kNN inputs get gradients, so training can use them
    new.zero_grad()
    new(with_knn).sum().backward()
    dim = new.config.dim
    assert new.row_embed[0].weight.grad[:, 3 * dim:].abs().sum() > 0
    ksg = 3 * dim + 1 + new.config.cca_top
    assert new.head[0].weight.grad[:, ksg:ksg + 2].abs().sum() > 0
    # the layout switch_inputs relies on is the one set_statistics writes
    stats = set_statistics(None, 0.7, 50, 2, 3, new.config.cca_top)
    np.testing.assert_allclose(stats[ksg_stats_slice(new.config)], [0.7, np.log1p(0.7)])
    with pytest.raises(ValueError, match="not \\['dim'\\]"):
        switch_inputs(old, dim=8)


def _same_function_then_backward(old: MIEstimator, new: MIEstimator) -> list:
    """Assert that `new` (a grown `old`) computes old's outputs on a padded batch, then
    backpropagate through `new` once (so the new weights' gradients can be checked);
    returns the sets used."""
    sets = [_pair(80, 3, 2, seed=1), _pair(40, 1, 1, seed=2), _pair(25, 4, 4, seed=3)]
    with torch.no_grad():   # padded rows and columns included (three sizes in one batch)
        np.testing.assert_allclose(_run(new, sets), _run(old, sets), rtol=1e-12, atol=1e-12)
    new.zero_grad()
    new(prepare_batch(sets, new.config).to(dtype=torch.float64)).sum().backward()
    return sets


def test_adding_row_layers_starts_from_the_same_function_and_then_learns():
    old = _model(cell_layers=0)
    new = add_row_layers(old, old.config.row_layers + 1)
    assert len(new.row_layers) == len(old.row_layers) + 1 and new.num_parameters() > old.num_parameters()
    _same_function_then_backward(old, new)
    added = new.row_layers[-1].mab_out
    assert added.out.weight.grad.abs().sum() > 0 and added.ffn[-1].weight.grad.abs().sum() > 0
    assert add_row_layers(old, old.config.row_layers).config == old.config
    with pytest.raises(ValueError, match="already has"):
        add_row_layers(new, old.config.row_layers)


def test_adding_a_cell_layer_to_a_model_without_one_starts_from_the_same_function_and_then_learns():
    old = _model(cell_layers=0)
    new = add_cell_layers(old, 1)
    assert len(new.cell_layers) == 1 and new.num_parameters() > old.num_parameters()
    sets = _same_function_then_backward(old, new)
    layer = new.cell_layers[0]
    for lin in (layer.feature.mab.out, layer.feature.mab.ffn[-1], layer.sample.mab_out.out, layer.sample.mab_out.ffn[-1]):
        assert lin.weight.grad.abs().sum() > 0
    with torch.no_grad():   # once the new layer's weights move, the function changes
        layer.feature.mab.out.weight.normal_(0.0, 0.5)
        assert np.abs(_run(new, sets) - _run(old, sets)).max() > 1e-6
    assert add_cell_layers(old, 0).config == old.config
    with pytest.raises(ValueError, match="already has"):
        add_cell_layers(new, 0)


def test_turning_column_statistics_on_starts_from_the_same_function_and_then_learns():
    old = _model(cell_layers=0)
    new = add_column_statistics(old)
    assert new.config.use_col_stats and new.num_parameters() > old.num_parameters()
    sets = _same_function_then_backward(old, new)
    assert prepare_batch(sets, new.config).cols.abs().sum() > 0   # real (non-zero) inputs, read by a zero last layer
    assert new.col_embed[-1].weight.grad.abs().sum() > 0
    assert add_column_statistics(new) is new


def test_turning_nonlinear_statistics_on_starts_from_the_same_function_and_then_learns():
    old = _model(cell_layers=0)
    new = add_nonlinear_statistics(old, strata=3)
    assert new.config.use_nonlinear_stats and new.config.strata == 3 and new.num_parameters() > old.num_parameters()
    sets = _same_function_then_backward(old, new)
    stats = prepare_batch(sets, new.config).stats
    assert stats.shape[1] == prepare_batch(sets, old.config).stats.shape[1] + NONLINEAR_FEATURES
    assert stats[0, -NONLINEAR_FEATURES:].abs().sum() > 0   # real inputs ...
    head_new = new.head[0].weight.grad[:, -NONLINEAR_FEATURES:]
    assert head_new.abs().sum() > 0                       # ... read by zero weights that now get gradients
    assert add_nonlinear_statistics(new) is new
    with pytest.raises(ValueError, match="strata must be >= 2"):
        ModelConfig(use_nonlinear_stats=True, strata=1)


@pytest.mark.parametrize("nonlinear_first", [False, True])
def test_turning_raw_statistics_on_starts_from_the_same_function_and_then_learns(nonlinear_first):
    """In either order with the nonlinear statistics: each block of the head's input keeps its weights
    wherever the new block lands in the statistics vector."""
    old = _model(cell_layers=0, use_nonlinear_stats=nonlinear_first)
    with torch.no_grad():  # a head that really reads the old statistics, so a misplaced block would show
        old.head[0].weight.normal_(0.0, 0.3)
    new = add_raw_statistics(old)
    if not nonlinear_first:
        new = add_nonlinear_statistics(new, strata=old.config.strata)
    assert new.config.use_raw_stats and new.config.use_nonlinear_stats
    sets = _same_function_then_backward(old, new)
    raw = 1 + new.config.cca_top
    stats = prepare_batch(sets, new.config).stats
    assert stats.shape[1] == stats_dim(new.config) == prepare_batch(sets, old.config).stats.shape[1] + raw + (
        0 if nonlinear_first else NONLINEAR_FEATURES)
    assert stats[0, -raw:].abs().sum() > 0                 # real inputs, last in the vector ...
    assert new.head[0].weight.grad[:, -raw:].abs().sum() > 0  # ... read by zero weights that now get gradients
    assert add_raw_statistics(new) is new


def test_adding_a_refiner_starts_from_the_same_function_and_then_learns():
    old = _model(cell_layers=0, use_raw_stats=True)
    new = add_refiner(old, 8, members=2)
    assert (new.config.refine_hidden, new.config.refine_members) == (8, 2) and old.refine is None
    _same_function_then_backward(old, new)
    assert all(net[-1].weight.grad.abs().sum() > 0 for net in new.refine.nets)  # zero last layers get gradients
    with torch.no_grad():
        for net in new.refine.nets:
            net[-1].weight.normal_(0.0, 0.5)
    again = add_refiner(new, 4)  # a fresh refiner: the old one is dropped, the network kept
    assert (again.config.refine_hidden, again.config.refine_members) == (4, 1)
    _same_function_then_backward(old, again)
    sets = [_pair(60, 2, 3, seed=7)]
    q = _run(new, sets)
    assert np.abs(q - _run(old, sets)).max() > 1e-4 and (np.diff(q, axis=1) >= 0).all() and (q >= 0).all()
    with pytest.raises(ValueError, match="hidden and members must be >= 1"):
        add_refiner(old, 0)
    with pytest.raises(ValueError, match="hidden and members must be >= 1"):
        add_refiner(old, 8, members=0)
    with pytest.raises(ValueError, match="before the refiner"):
        add_nonlinear_statistics(new)
    with pytest.raises(ValueError, match="before adding its refiner"):
        widen(new, 2 * new.config.dim)
    with pytest.raises(ValueError, match="refine_hidden must be >= 0"):
        ModelConfig(refine_hidden=-1)
    with pytest.raises(ValueError, match="refine_members must be >= 1"):
        ModelConfig(refine_members=0)
    with pytest.raises(ValueError, match="refine_inputs must be one of"):
        ModelConfig(refine_inputs="pooled")
    head = add_refiner(old, 8, inputs="head")  # reads the head's whole input: 3 dim + S numbers besides Q
    assert head.refine.shift.numel() == len(old.config.quantile_levels) + 3 * old.config.dim + stats_dim(old.config)
    _same_function_then_backward(old, head)
    with pytest.raises(ValueError, match="refiner inputs must be one of"):
        head.refiner_context(torch.zeros(1, 3), "pooled")


def _gaussian_mi_reference(x: np.ndarray, y: np.ndarray) -> float:
    """-1/2 log(det C_xx det C_yy / det C) of the sample covariance: the Gaussian MI written without
    canonical correlations (an independent formula for the same quantity)."""
    c = np.cov(np.concatenate([x, y], axis=1), rowvar=False)
    d = x.shape[1]
    return 0.5 * (np.linalg.slogdet(c[:d, :d])[1] + np.linalg.slogdet(c[d:, d:])[1] - np.linalg.slogdet(c)[1])


def test_raw_statistics_read_near_deterministic_linear_relations_that_ranks_cannot():
    rng = np.random.default_rng(11)
    n, noise = 1000, 1e-3
    x = rng.normal(size=(n, 3))
    a = np.array([[1.0, 0.5], [-0.3, 2.0]])
    y = x[:, :2] @ a + noise * rng.normal(size=(n, 2))
    # I(X; Y) = 1/2 log det(Cov Y) / det(Cov noise), Cov Y = A^T A + noise^2 I: about 14.6 nats
    true_mi = 0.5 * (np.linalg.slogdet(a.T @ a + noise**2 * np.eye(2))[1] - 2 * np.log(noise**2))
    stats = raw_statistics(x, y, cca_top=4)
    assert stats.shape == (5,)
    raw_mi = np.expm1(stats[0])
    assert raw_mi == pytest.approx(_gaussian_mi_reference(x, y), rel=1e-6)  # same quantity, other formula
    assert raw_mi == pytest.approx(true_mi, abs=0.1)
    np.testing.assert_allclose(np.expm1(stats[1:3]).sum(), raw_mi, rtol=1e-9)  # two pairs carry it all
    assert not stats[3:].any()                                                  # the rest is 0-padding
    zx, zy = normal_scores(x), normal_scores(y)
    copula_mi = -0.5 * np.log1p(-canonical_correlations(zx, zy) ** 2).sum()
    assert copula_mi < true_mi - 1.5                        # ranks lose nats here; the raw values do not


def test_raw_statistics_are_invariant_and_robust_to_outliers():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(400, 3))
    y = np.concatenate([0.8 * x[:, :1] + 0.6 * rng.normal(size=(400, 1)), rng.normal(size=(400, 1))], axis=1)
    ref = raw_statistics(x, y, 3)
    assert np.expm1(ref[0]) == pytest.approx(_gaussian_mi_reference(x, y), rel=0.02)  # clip never reached here
    rows = rng.permutation(400)
    variants = {"rows": (x[rows], y[rows]), "x coords": (x[:, [2, 0, 1]], y), "y coords": (x, y[:, ::-1]),
                "swap": (y, x), "affine": (3 * x - 7, -0.01 * y + 2)}
    for name, (a, b) in variants.items():
        np.testing.assert_allclose(raw_statistics(a, b, 3), ref, rtol=1e-9, atol=1e-9, err_msg=name)
    # one wild row in both blocks would make the plain Pearson correlation near 1 (many nats) ...
    xo, yo = x.copy(), y.copy()
    xo[0], yo[0] = 1e6, 1e6
    plain = -0.5 * np.log1p(-canonical_correlations(xo - xo.mean(0), yo - yo.mean(0)) ** 2).sum()
    assert plain > 3
    # ... but after the robust scaling it is one clipped row of 400
    assert np.expm1(raw_statistics(xo, yo, 3)[0]) == pytest.approx(np.expm1(ref[0]), abs=0.1)


def test_marginal_shape_statistics_match_the_moments_of_known_distributions():
    rng = np.random.default_rng(21)
    n = 4000
    gauss = rng.normal(size=(n, 2))
    skewed = rng.exponential(size=(n, 3))  # skewness 2, kurtosis 9
    f = marginal_shape_statistics(gauss, skewed)
    assert f.shape == (SHAPE_FEATURES,)
    lo, hi = f[:5], f[5:]  # blockwise minimum, maximum of [min w, mean w, max log kurt, mean log kurt, mean |skew|]
    # the Gaussian block: kurtosis 3, skewness 0, sorted values on the normal quantiles (r > 0.999)
    assert lo[3] == pytest.approx(np.log(3.0), abs=0.15) and lo[4] < 0.1
    assert hi[0] > -np.log(1e-3) and lo[0] < -np.log(0.05)  # the exponential block's r is far below 1
    assert hi[3] == pytest.approx(np.log(9.0), abs=0.4) and hi[4] == pytest.approx(2.0, abs=0.3)
    assert (lo <= hi).all()


def test_marginal_shape_statistics_are_invariant_to_rows_coordinates_swaps_and_affine_maps():
    rng = np.random.default_rng(22)
    x = rng.standard_t(4, size=(300, 3))
    y = np.concatenate([x[:, :1] ** 3 + rng.normal(size=(300, 1)), rng.uniform(size=(300, 1))], axis=1)
    ref = marginal_shape_statistics(x, y)
    rows = rng.permutation(300)
    variants = {"rows": (x[rows], y[rows]), "x coords": (x[:, [2, 0, 1]], y), "y coords": (x, y[:, ::-1]),
                "swap": (y, x), "affine": (3 * x - 7, -0.01 * y + 2)}
    for name, (a, b) in variants.items():
        np.testing.assert_allclose(marginal_shape_statistics(a, b), ref, rtol=1e-9, atol=1e-9, err_msg=name)
    assert np.abs(marginal_shape_statistics(np.exp(x), y) - ref).max() > 0.1  # other monotone maps change it
    const = marginal_shape_statistics(np.ones((50, 1)), rng.normal(size=(50, 2)))
    assert np.isfinite(const).all() and const[0] == 0.0  # a constant column: w = 0, no NaN


def test_only_a_stats_shape_refiner_reads_the_raw_columns_shape():
    """Through a real forward pass: a monotone map of one coordinate leaves a copula-only model's answer
    alone (ranks), and moves the answer of a model whose refiner reads the marginal shape."""
    x, y = _pair(120, 2, 2, seed=6)
    bent = (np.concatenate([np.exp(x[:, :1]), x[:, 1:]], axis=1), y)
    plain = _model(refine_hidden=8, refine_inputs="stats")
    shaped = _model(refine_hidden=8, refine_inputs="stats+shape")
    np.testing.assert_allclose(_run(plain, [bent]), _run(plain, [(x, y)]), rtol=1e-9, atol=1e-9)
    assert np.abs(_run(shaped, [bent]) - _run(shaped, [(x, y)])).max() > 1e-4
    batch = prepare_batch([(x, y)], shaped.config)
    np.testing.assert_allclose(batch.shape[0].numpy(), marginal_shape_statistics(x, y), rtol=1e-6)
    assert not prepare_batch([(x, y)], plain.config).shape.any()  # computed only for a refiner that reads it
    head_in = shaped.head_input(batch.to(dtype=torch.float64))
    with pytest.raises(ValueError, match="need shape"):
        shaped.refiner_context(head_in, "stats+shape")


def test_robust_standardize():
    rng = np.random.default_rng(13)
    a = rng.normal(loc=5.0, scale=3.0, size=(20000, 1))
    z = robust_standardize(a)[:, 0]
    assert abs(np.median(z)) < 1e-12 and z.std() == pytest.approx(1.0, abs=0.03)   # MAD estimates sigma
    b = np.concatenate([np.zeros(80), rng.normal(size=20)])[:, None]                # MAD = 0: the std instead
    np.testing.assert_allclose(robust_standardize(b)[:, 0], b[:, 0] / b[:, 0].std(), rtol=1e-12)
    c = np.concatenate([rng.normal(size=(99, 1)), [[1e9]]])
    assert robust_standardize(c).max() == RAW_CLIP
    assert not robust_standardize(np.full((10, 2), 4.0)).any()                      # constant columns
    assert robust_standardize(np.arange(5.0)).shape == (5, 1)


def _scores(a: np.ndarray) -> np.ndarray:
    """Copula scores written independently of model.preprocess: ranks -> normal quantiles per column."""
    return ndtri((np.argsort(np.argsort(a, axis=0), axis=0) + 0.5) / len(a))


def _linear_mi(a: np.ndarray, b: np.ndarray) -> float:
    """Gaussian MI (nats) of the global canonical correlations of a (n, da) and b (n, db)."""
    return float(np.sum(-0.5 * np.log1p(-canonical_correlations(a, b) ** 2)))


def _radius_twist(y: np.ndarray, rate: float) -> np.ndarray:
    """Rotate each plane (0, 1), (2, 3), ... of y by an angle rate * |y| (the metagen spiral's idea)."""
    r = np.linalg.norm(y, axis=1, keepdims=True)
    c, s = np.cos(rate * r), np.sin(rate * r)
    out = y.copy()
    out[:, 0::2], out[:, 1::2] = c * y[:, 0::2] - s * y[:, 1::2], s * y[:, 0::2] + c * y[:, 1::2]
    return out


def test_stratified_statistics_see_through_a_radius_dependent_rotation():
    """y = x + noise (true MI known in closed form), then y twisted by an angle that grows
    with its radius: the global canonical correlations lose most of the MI, the strata of
    |y| keep much more of it; without the twist both read about the same."""
    rng = np.random.default_rng(0)
    n, d, noise = 4000, 4, 0.1
    x = rng.normal(size=(n, d))
    y = x + noise * rng.normal(size=(n, d))
    true_mi = d / 2 * np.log1p(1 / noise**2)                  # Gaussian channel, nats (~9.2)
    twisted = _radius_twist(y, 3.0)
    z = np.concatenate([_scores(x), _scores(twisted)], axis=1)  # the model sees copula scores
    feats = stratified_statistics(z, d, strata=4)
    strat_mi = np.expm1(feats[0])                             # the larger of the two stratified MIs
    plain = _linear_mi(z[:, :d], z[:, d:])
    assert plain < 0.3 * true_mi                              # the twist hides the dependence globally
    assert strat_mi > 0.2 * true_mi and strat_mi > 10 * plain  # ... the strata recover a good part of it
    assert feats[3] == pytest.approx(np.log(n / (4 * 2 * d)) / 5) and feats[4] == 1.0
    z0 = np.concatenate([_scores(x), _scores(y)], axis=1)     # no twist: strata and global agree roughly
    assert np.expm1(stratified_statistics(z0, d, 4)[1]) == pytest.approx(_linear_mi(z0[:, :d], z0[:, d:]), rel=0.25)


def test_stratified_statistics_ties_and_too_few_rows():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(90, 2)).astype(float)       # discrete: many tied row norms
    z = np.concatenate([x, x[:, :1] + rng.integers(0, 2, size=(90, 1))], axis=1)
    ref = stratified_statistics(z, 2, 4)
    assert ref[-1] == 1.0 and np.isfinite(ref).all()
    np.testing.assert_allclose(stratified_statistics(z[rng.permutation(90)], 2, 4), ref, rtol=1e-9, atol=1e-9)
    # fewer than 2 strata of 2 (dx + dy) rows each, or an empty block: disabled (zeros)
    assert not stratified_statistics(rng.normal(size=(11, 3)), 1, 4).any()
    assert stratified_statistics(rng.normal(size=(12, 3)), 1, 4)[-1] == 1.0
    assert not stratified_statistics(rng.normal(size=(50, 3)), 3, 4).any()


def test_hermite_statistics_see_u_shaped_and_spread_dependence():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 1))
    y = x**2 + 0.3 * rng.normal(size=(3000, 1))               # U-shaped: no linear correlation at all
    z = np.concatenate([_scores(x), _scores(y)], axis=1)
    linear = _linear_mi(z[:, :1], z[:, 1:])
    feats = np.expm1(hermite_statistics(z, 1))
    assert linear < 0.05 and feats[0] > 0.8 and feats[2] > 0.1   # the squares carry it
    indep = np.concatenate([_scores(x), _scores(rng.normal(size=(3000, 1)))], axis=1)
    assert np.expm1(hermite_statistics(indep, 1)).max() < 0.02
    assert not hermite_statistics(z[:11], 1).any()               # n < 4 D + 4: disabled


def test_norm_statistics_see_a_shared_radius():
    """x = r g, y = r h with independent Gaussian directions g, h and a shared heavy-tailed
    scale r: uncorrelated coordinates, but the norms move together."""
    rng = np.random.default_rng(3)
    n = 2000
    r = np.exp(rng.normal(size=(n, 1)))
    x, y = r * rng.normal(size=(n, 3)), r * rng.normal(size=(n, 3))
    z = np.concatenate([_scores(x), _scores(y)], axis=1)
    ref = np.arange(1000)
    ksg, gauss = norm_statistics(z, 3, ref, 3)
    assert ksg > 0.15 and gauss > 0.15
    free = np.concatenate([_scores(x), _scores(rng.normal(size=(n, 3)))], axis=1)
    assert np.abs(norm_statistics(free, 3, ref, 3)).max() < 0.03


def test_projected_ksg_reads_each_canonical_pair_of_a_rotated_gaussian_channel():
    """y = x R + s e with R orthogonal: every canonical pair carries 1/2 log(1 + 1/s^2) nats
    (closed form), which KSG on the first pair (two columns) reads accurately; KSG on the four
    projected pairs reads more than that, less than their total."""
    rng = np.random.default_rng(4)
    n, d, s = 3000, 6, 0.6
    x = rng.normal(size=(n, d))
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    y = x @ rot + s * rng.normal(size=(n, d))
    per_pair = 0.5 * np.log1p(1 / s**2)                       # ~0.72 nats
    z = np.concatenate([_scores(x), _scores(y)], axis=1)
    four, first = projected_ksg_statistics(z, d, np.arange(1024), 3)
    assert first == pytest.approx(per_pair, abs=0.12)
    assert first + 0.3 < four < 4 * per_pair
    assert not projected_ksg_statistics(z[: 2 * d + 3], d, np.arange(15), 3).any()   # n < D + 4


@pytest.mark.parametrize("data", ["continuous", "discrete"])
def test_nonlinear_statistics_are_invariant(data):
    rng = np.random.default_rng(5)
    if data == "continuous":
        x = rng.normal(size=(300, 3))
        y = np.concatenate([np.tanh(x[:, :1]) + 0.5 * rng.normal(size=(300, 1)), rng.normal(size=(300, 1))], axis=1)
    else:
        x = rng.integers(0, 3, size=(300, 3)).astype(float)
        y = np.concatenate([x[:, :1] + rng.integers(0, 2, size=(300, 1)), rng.integers(0, 4, size=(300, 1))], axis=1)
    config = ModelConfig(use_nonlinear_stats=True, knn_rows=128)

    def stats(a, b):
        return prepare_batch([(a, b)], config).stats[0, -NONLINEAR_FEATURES:].double().numpy()

    ref = stats(x, y)
    assert np.isfinite(ref).all() and np.abs(ref).sum() > 0
    rows = rng.permutation(300)
    for name, (a, b) in {"rows": (x[rows], y[rows]), "x coords": (x[:, [2, 0, 1]], y), "y coords": (x, y[:, ::-1]),
                         "swap": (y, x)}.items():
        np.testing.assert_allclose(stats(a, b), ref, rtol=1e-5, atol=1e-5, err_msg=name)
    zx, zy = _scores(x), _scores(y)
    assert nonlinear_statistics(np.concatenate([zx, zy], axis=1), 3, np.arange(128), config).shape == (NONLINEAR_FEATURES,)


@pytest.mark.parametrize("data", ["continuous", "discrete"])
def test_nonlinear_statistics_are_their_parts_on_the_documented_rows(data):
    """prepare_batch's 12 statistics == the four documented functions, called one by one, on the
    canonical subset of NONLINEAR_ROWS rows with KSG among its canonical subset of
    NONLINEAR_KNN_ROWS (the fused KSG pass and the shortcut for the reference rows change nothing)."""
    rng = np.random.default_rng(8)
    n = 3 * NONLINEAR_ROWS // 2
    if data == "continuous":
        x = rng.normal(size=(n, 3))
        y = np.concatenate([np.sin(2 * x[:, :1]) + 0.3 * rng.normal(size=(n, 1)), rng.normal(size=(n, 2))], axis=1)
    else:  # ties: the canonical order has tie groups, so the reference rows take the general path
        x = rng.integers(0, 6, size=(n, 3)).astype(float)
        y = np.concatenate([x[:, :1] + rng.integers(0, 3, size=(n, 1)), rng.integers(0, 5, size=(n, 2))], axis=1)
    config = ModelConfig(use_nonlinear_stats=True, knn_rows=256)
    got = prepare_batch([(x, y)], config).stats[0, -NONLINEAR_FEATURES:].double().numpy()
    z = np.concatenate([normal_scores(x), normal_scores(y)], axis=1)
    zs = z[canonical_subset(z, 3, NONLINEAR_ROWS, seed=SUBSET_SEED + 2)]
    ref = canonical_subset(zs, 3, NONLINEAR_KNN_ROWS, seed=SUBSET_SEED + 3)
    k = config.knn_k
    want = np.concatenate([stratified_statistics(zs, 3, config.strata), hermite_statistics(zs, 3),
                           norm_statistics(zs, 3, ref, k), projected_ksg_statistics(zs, 3, ref, k)])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nonlinear_statistics(zs, 3, ref, config), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 3])
def test_widening_starts_from_the_same_function_and_then_learns(factor):
    old = _model(use_col_stats=True, use_nonlinear_stats=True)  # cell and row layers, column features, strata: every kind
    new = widen(old, factor * old.config.dim, seed=1)
    assert new.config == dataclasses.replace(old.config, dim=factor * old.config.dim)
    assert new.num_parameters() > 2 * old.num_parameters()
    _same_function_then_backward(old, new)
    # the copies of an old unit read different shares of it, so they get different gradients
    w = new.row_layers[0].mab_out.ffn[0].weight  # (ffn_mult dim, dim): rows are hidden units
    g = w.grad.reshape(-1, factor, w.shape[1])  # new hidden units factor*i .. factor*i + factor - 1 copy old unit i
    assert (g[:, 0] - g[:, 1]).abs().max() > 1e-6
    copies = w.detach().reshape(-1, factor, w.shape[1])
    wt = copies.reshape(-1, factor, w.shape[1] // factor, factor).sum(dim=3)  # summed over each input's copies
    torch.testing.assert_close(wt[:, 0], wt[:, 1])  # ... and start as the same function of the old units
    assert (copies[:, 0] - copies[:, 1]).abs().max() > 1e-3
    # other seeds split differently, same function; and the split is a real one (not all equal shares)
    other = widen(old, factor * old.config.dim, seed=2)
    assert not torch.equal(other.head[0].weight, new.head[0].weight)
    sets = [_pair(60, 2, 3, seed=4)]
    np.testing.assert_allclose(_run(other, sets), _run(old, sets), rtol=1e-12, atol=1e-12)
    for bad in (old.config.dim, old.config.dim + 1, old.config.dim // 2):
        with pytest.raises(ValueError, match="multiple of the current"):
            widen(old, bad)


def _column_statistics_reference(z: np.ndarray, dx: int) -> np.ndarray:
    """column_statistics written with np.corrcoef, one column at a time."""
    n, d = z.shape
    out = np.zeros((d, 8))
    for j in range(d):
        others = range(dx, d) if j < dx else range(dx)
        own = [k for k in (range(dx) if j < dx else range(dx, d)) if k != j]
        r = np.array([np.corrcoef(z[:, j], z[:, k])[0, 1] for k in others])
        s = np.array([np.corrcoef(z[:, j] ** 2, z[:, k] ** 2)[0, 1] for k in others])
        a = np.array([max(abs(np.corrcoef(np.abs(z[:, j]), z[:, k])[0, 1]), abs(np.corrcoef(z[:, j], np.abs(z[:, k]))[0, 1]))
                      for k in others])
        w = max((abs(np.corrcoef(z[:, j], z[:, k])[0, 1]) for k in own), default=0.0)
        out[j] = [np.abs(r).max(), np.sqrt(np.mean(r**2)), np.abs(s).max(), np.sqrt(np.mean(s**2)), a.max(), w,
                  np.sqrt(n) * np.abs(r).max() / 8, np.sqrt(n) * np.abs(s).max() / 8]
    return out


def test_column_statistics_match_a_reference_and_are_equivariant():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 5))
    z[:, 3] = z[:, 0] ** 2 + 0.5 * rng.normal(size=200)   # y column 0 depends on x column 0 through its magnitude
    z[:, 4] = z[:, 1] + 0.5 * rng.normal(size=200)        # y column 1 depends linearly on x column 1
    got = column_statistics(z, 3)
    np.testing.assert_allclose(got, _column_statistics_reference(z, 3), rtol=1e-10, atol=1e-12)
    rows = rng.permutation(200)
    np.testing.assert_allclose(column_statistics(z[rows], 3), got, atol=1e-12)
    perm = [2, 0, 1, 4, 3]
    np.testing.assert_allclose(column_statistics(z[:, perm], 3), got[perm], atol=1e-12)
    swapped = np.concatenate([z[:, 3:], z[:, :3]], axis=1)
    np.testing.assert_allclose(column_statistics(swapped, 2), np.concatenate([got[3:], got[:3]]), atol=1e-12)
    # the independent x column 2 scores low everywhere; the dependent pairs high where they should
    assert got[2, 6] < 0.45 and got[2, 7] < 0.45     # independence: |r| ~ 1 / sqrt(n), so z-score / 8 ~ 0.1-0.3
    assert got[1, 6] > 1.2 and got[4, 6] > 1.2       # linear pair: correlation z-score
    assert got[0, 7] > 1.0 and got[3, 4] > 0.5       # magnitude pair: squared-score and |z| features
    assert got[0, 0] < 0.3                          # ... which plain correlation misses
    assert not column_statistics(z[:, :1], 1).any()  # one block empty: nothing to compare


def test_target_transform_round_trip():
    mi = torch.tensor([0.0, 0.3, 2.0, 35.0], dtype=torch.float64)
    np.testing.assert_allclose(to_target(mi).numpy(), np.log1p(mi.numpy()))
    np.testing.assert_allclose(from_target(to_target(mi)).numpy(), mi.numpy(), rtol=1e-12)
    assert from_target(torch.tensor([-0.5])).item() == 0.0


def test_pinball_loss_matches_numpy():
    rng = np.random.default_rng(0)
    pred, target, levels = rng.normal(size=(7, 5)), rng.normal(size=7), np.array([0.05, 0.2, 0.5, 0.8, 0.95])
    expected = np.mean(
        [
            [tau * (t - p) if t >= p else (1 - tau) * (p - t) for p, tau in zip(row, levels)]
            for row, t in zip(pred, target)
        ]
    )
    got = pinball_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(levels))
    assert abs(got.item() - expected) < 1e-12
    # weighted: each set's mean over the grid, averaged with the weights (an integer weight = the set repeated)
    w = np.arange(1, len(target) + 1, dtype=np.float64)
    repeated = np.repeat(np.arange(len(target)), w.astype(int))
    want = pinball_loss(torch.from_numpy(pred[repeated]), torch.from_numpy(target[repeated]), torch.from_numpy(levels))
    got_w = pinball_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(levels), torch.from_numpy(w))
    assert abs(got_w.item() - want.item()) < 1e-12


def test_interpolation_exact_on_grid_monotone_and_extrapolates():
    levels = np.array(ModelConfig().quantile_levels)
    rng = np.random.default_rng(0)
    grid = np.cumsum(rng.uniform(0.0, 0.3, size=(4, levels.size)), axis=1)
    np.testing.assert_allclose(interpolate_quantiles(levels, grid, levels), grid, atol=1e-12)
    fine = np.linspace(0.001, 0.999, 500)
    vals = interpolate_quantiles(levels, grid, fine)
    assert vals.shape == (4, 500) and np.all(np.diff(vals, axis=1) >= -1e-12) and (vals >= 0).all()
    # linear in Phi^-1(level) inside a segment: check the midpoint in u of segment 3
    u = 0.5 * (ndtri(levels[3]) + ndtri(levels[4]))
    mid = interpolate_quantiles(levels, grid, [float(ndtr(u))])
    np.testing.assert_allclose(mid[:, 0], 0.5 * (grid[:, 3] + grid[:, 4]), atol=1e-9)
    t = torch.from_numpy(grid)
    assert isinstance(interpolate_quantiles(levels, t, [0.3]), torch.Tensor)
    with pytest.raises(ValueError):
        interpolate_quantiles(levels, grid, [1.0])


def test_calibration_reaches_nominal_coverage():
    rng = np.random.default_rng(0)
    levels = np.array(ModelConfig().quantile_levels)
    n = 400
    target = rng.gamma(2.0, 0.5, size=n)
    # a badly calibrated, too narrow predictor
    pred = np.clip(target[:, None] * 0.8 + 0.1 * ndtri(levels)[None, :] + rng.normal(0, 0.3, size=(n, 1)), 0, None)
    offsets = fit_calibration(pred, target, levels)
    cov = np.mean(target[:, None] <= pred + offsets, axis=0)
    assert np.all(np.abs(cov - levels) <= 1.0 / n + 1e-12)
    cal = apply_calibration(pred, offsets)
    assert np.all(np.diff(cal, axis=1) >= 0) and (cal >= 0).all()
    cov_cal = np.mean(target[:, None] <= cal, axis=0)
    # the repair only moves quantiles outward: lower ones down, upper ones up, so every central interval
    # still covers at least its nominal share
    lower = levels < 0.5
    assert np.all(cov_cal[lower] <= levels[lower] + 1.0 / n + 1e-12)
    assert np.all(cov_cal[~lower] >= levels[~lower] - 1.0 / n - 1e-12)


def test_calibration_repairs_crossing_offsets_outward_from_the_median():
    """A low level's offset above higher levels' (a 1% level fitted on a few sets) must not drag a narrow set's
    5% ... median up to it, as a running max over the grid did: the crossing value is capped by the levels above
    it, every other value is the set's own quantile plus its level's offset; likewise at the top. Grids that
    stay ordered are returned as they are."""
    levels = np.array(ModelConfig().quantile_levels)
    q = levels.size
    mid = int(np.flatnonzero(levels == 0.5)[0])
    assert mid == (q - 1) // 2
    offsets = np.zeros(q)
    offsets[0], offsets[-1] = 0.3, -0.3  # 1% raised, 99% lowered, by more than a narrow set's tail spacing
    narrow = 1.0 + 0.05 * ndtri(levels)[None, :]  # (1, Q) spacing ~0.03 near the ends
    wide = 1.0 + 1.0 * ndtri(levels)[None, :]  # (1, Q) spacing ~0.7 near the ends: no crossing
    cal = apply_calibration(np.concatenate([narrow, wide]), offsets)
    expected = narrow[0] + offsets
    expected[0] = narrow[0, 1]  # capped by the 2.5% level
    expected[-1] = narrow[0, -2]  # raised to the 97.5% level
    np.testing.assert_allclose(cal[0], expected, atol=1e-12)
    np.testing.assert_allclose(cal[1], np.maximum(wide[0] + offsets, 0.0), atol=1e-12)
    np.testing.assert_allclose(cal[0, 1:-1], narrow[0, 1:-1])  # 2.5% ... 97.5%: untouched, median included
    for grid in (np.sort(np.random.default_rng(3).normal(size=(5, q)), axis=1), -np.ones((2, q))):
        np.testing.assert_array_equal(monotone_from_middle(grid), grid)
    shuffled = np.random.default_rng(4).normal(size=(6, q))
    fixed = monotone_from_middle(shuffled)
    assert np.all(np.diff(fixed, axis=1) >= 0)
    assert np.all(fixed[:, :mid] <= shuffled[:, :mid]) and np.all(fixed[:, mid + 1:] >= shuffled[:, mid + 1:])
    np.testing.assert_array_equal(fixed[:, mid], shuffled[:, mid])


def _grouped_predictor(seed: int, n: int = 900):
    """levels (Q,), groups (n,) in {0, 1, 2}, target (n,), pred (n, Q): quantiles too narrow
    everywhere, and far more so in group 2 (its spread is 3x larger)."""
    rng = np.random.default_rng(seed)
    levels = np.array(ModelConfig().quantile_levels)
    groups = rng.integers(0, 3, size=n)
    target = rng.gamma(2.0, 0.5, size=n)
    noise = rng.normal(0, 0.3, size=(n, 1)) * np.where(groups == 2, 3.0, 1.0)[:, None]
    return levels, groups, target, target[:, None] + 0.1 * ndtri(levels)[None, :] + noise


def test_group_robust_calibration_covers_every_group():
    levels, groups, target, pred = _grouped_predictor(1)
    n = target.size
    rng = np.random.default_rng(11)
    pooled = fit_calibration(pred, target, levels)
    robust = fit_calibration(pred, target, levels, groups=groups)
    for g in range(3):
        sel = groups == g
        cov = np.mean(target[sel, None] <= pred[sel] + robust, axis=0)
        assert np.all(cov[levels > 0.5] >= levels[levels > 0.5] - 1e-12)
        assert np.all(cov[levels < 0.5] <= levels[levels < 0.5] + 1.0 / sel.sum() + 1e-12)
    # pooled offsets leave the wide group under-covered: the check above is not vacuous
    sel = groups == 2
    lo, hi = np.searchsorted(levels, 0.05), np.searchsorted(levels, 0.95)
    inside = lambda off: np.mean((target[sel] >= pred[sel, lo] + off[lo]) & (target[sel] <= pred[sel, hi] + off[hi]))
    assert inside(pooled) < 0.85 and inside(robust) >= 0.9 - 1.0 / sel.sum()
    assert robust[levels == 0.5] == pooled[levels == 0.5]
    # one group (or groups too small to fit) = the pooled offsets
    np.testing.assert_array_equal(fit_calibration(pred, target, levels, groups=np.zeros(n)), pooled)
    np.testing.assert_array_equal(fit_calibration(pred, target, levels, groups=groups, min_group=n + 1), pooled)
    with pytest.raises(ValueError, match="groups must have shape"):
        fit_calibration(pred, target, levels, groups=groups[:-1])
    # several groupings (e.g. dimension ranges and transform kinds): every group of each is covered
    other = rng.integers(0, 2, size=n)
    both = fit_calibration(pred, target, levels, groups=[groups, other])
    for labels in (groups, other):
        for g in np.unique(labels):
            sel = labels == g
            cov = np.mean(target[sel, None] <= pred[sel] + both, axis=0)
            assert np.all(cov[levels > 0.5] >= levels[levels > 0.5] - 1e-12)
    assert np.all(both[levels > 0.5] >= robust[levels > 0.5]) and np.all(both[levels < 0.5] <= robust[levels < 0.5])
    np.testing.assert_array_equal(fit_calibration(pred, target, levels, groups=[groups]), robust)
    with pytest.raises(ValueError, match="groups must have shape"):
        fit_calibration(pred, target, levels, groups=[groups, other[:-1]])


def test_central_robust_blends_pooled_and_group_robust_offsets():
    """central_robust: the central levels (0.1 < tau < 0.9) move from the pooled offsets (0) to the
    group-robust ones (1, the default) linearly; the tails stay robust; bad values are refused."""
    levels, groups, target, pred = _grouped_predictor(3)
    pooled = fit_calibration(pred, target, levels)
    robust = fit_calibration(pred, target, levels, groups=groups)
    central = (levels > 0.1) & (levels < 0.9)
    np.testing.assert_array_equal(fit_calibration(pred, target, levels, groups=groups, central_robust=1.0), robust)
    zero = fit_calibration(pred, target, levels, groups=groups, central_robust=0.0)
    np.testing.assert_array_equal(zero[central], pooled[central])
    np.testing.assert_array_equal(zero[~central], robust[~central])
    half = fit_calibration(pred, target, levels, groups=groups, central_robust=0.5)
    np.testing.assert_allclose(half[central], 0.5 * (pooled[central] + robust[central]))
    assert np.any(robust[central] != pooled[central])  # the blend is not vacuous here
    # the 50% interval: pooled covers the mix at ~nominal, robust well above it, half in between
    lo, hi = np.searchsorted(levels, 0.25), np.searchsorted(levels, 0.75)
    inside = lambda off: np.mean((target >= pred[:, lo] + off[lo]) & (target <= pred[:, hi] + off[hi]))
    assert inside(pooled) < inside(half) < inside(robust)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="central_robust must lie in"):
            fit_calibration(pred, target, levels, groups=groups, central_robust=bad)


def test_tail_robust_blends_the_tails_alone():
    """tail_robust: the levels tau <= 0.1 and tau >= 0.9 move from the pooled offsets (0) to the
    group-robust ones (1, the default) linearly, the central levels keep central_robust's blend;
    the 90% interval then covers the mix less than the robust one and at least the pooled one."""
    levels, groups, target, pred = _grouped_predictor(5)
    pooled = fit_calibration(pred, target, levels)
    robust = fit_calibration(pred, target, levels, groups=groups)
    central = (levels > 0.1) & (levels < 0.9)
    assert np.any(robust[~central] != pooled[~central])  # the blend is not vacuous here
    np.testing.assert_array_equal(fit_calibration(pred, target, levels, groups=groups, tail_robust=1.0), robust)
    zero = fit_calibration(pred, target, levels, groups=groups, central_robust=0.5, tail_robust=0.0)
    np.testing.assert_array_equal(zero[~central], pooled[~central])
    np.testing.assert_array_equal(zero[central], fit_calibration(pred, target, levels, groups=groups,
                                                                 central_robust=0.5)[central])
    half = fit_calibration(pred, target, levels, groups=groups, tail_robust=0.5)
    np.testing.assert_allclose(half[~central], 0.5 * (pooled[~central] + robust[~central]))
    np.testing.assert_array_equal(half[central], robust[central])
    lo, hi = np.searchsorted(levels, 0.05), np.searchsorted(levels, 0.95)
    assert levels[lo] == 0.05 and levels[hi] == 0.95
    inside = lambda off: np.mean((target >= pred[:, lo] + off[lo]) & (target <= pred[:, hi] + off[hi]))
    assert inside(pooled) <= inside(half) <= inside(robust) and inside(pooled) < inside(robust)
    assert inside(pooled) >= 0.9 - 1.0 / target.size  # pooled: nominal on the mix (split-conformal)
    # fit_calibration_by_n passes it to each range's fit
    rng = np.random.default_rng(6)
    n_sets = rng.integers(10, 3000, size=target.size)
    by_n = fit_calibration_by_n(pred, target, levels, n_sets, [1000], groups=[groups], tail_robust=0.0)
    small = n_sets <= 1000
    np.testing.assert_array_equal(by_n[0], fit_calibration(pred[small], target[small], levels, groups=[groups[small]],
                                                           tail_robust=0.0))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="tail_robust must lie in"):
            fit_calibration(pred, target, levels, groups=groups, tail_robust=bad)


def test_upper_tail_fits_upper_levels_higher_above_the_first_edge():
    """upper_tail k: above the first n edge the levels tau >= 0.9 are fitted at 1 - k (1 - tau), so
    on the calibration sets of those ranges they cover at least that; the first range is unchanged."""
    rng = np.random.default_rng(4)
    levels = np.array(ModelConfig().quantile_levels)
    n_sets = rng.integers(10, 3000, size=1200)
    target = rng.gamma(2.0, 0.5, size=n_sets.size)
    pred = target[:, None] + 0.1 * ndtri(levels)[None, :] + rng.normal(0, 0.3, size=(n_sets.size, 1))
    plain = fit_calibration_by_n(pred, target, levels, n_sets, [1000])
    k = 0.7
    up = fit_calibration_by_n(pred, target, levels, n_sets, [1000], upper_tail=k)
    np.testing.assert_array_equal(up[0], plain[0])
    tail = levels >= 0.9
    np.testing.assert_array_equal(up[1, ~tail], plain[1, ~tail])
    large = n_sets > 1000
    np.testing.assert_array_equal(up[1], fit_calibration(pred[large], target[large],
                                                         np.where(tail, 1 - k * (1 - levels), levels)))
    cov = np.mean(target[large, None] <= pred[large] + up[1], axis=0)
    assert np.all(cov[tail] >= 1 - k * (1 - levels[tail]) - 1e-12)
    assert np.all(up[1, tail] >= plain[1, tail]) and np.any(up[1, tail] > plain[1, tail])
    # with central_robust passed through to each range's fit
    dims = rng.integers(0, 2, size=n_sets.size)
    both = fit_calibration_by_n(pred, target, levels, n_sets, [1000], groups=[dims], central_robust=0.5)
    np.testing.assert_array_equal(both[0], fit_calibration(pred[~large], target[~large], levels, groups=[dims[~large]],
                                                           central_robust=0.5))
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match="upper_tail must lie in"):
            fit_calibration_by_n(pred, target, levels, n_sets, [1000], upper_tail=bad)


@pytest.mark.slow
def test_tiny_overfit_reduces_pinball_loss():
    _overfit(steps=300)


def test_tiny_overfit_smoke():
    _overfit(steps=40, factor=0.8)


def _overfit(steps: int, factor: float = 0.5) -> None:
    """Adam on 16 fixed Gaussian sets with known MI: the pinball loss must fall clearly."""
    rng = np.random.default_rng(0)
    sets, mi = [], []
    for i in range(16):
        rho = rng.uniform(0.0, 0.95)
        d = 1 + i % 3
        x = rng.normal(size=(80, d))
        y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(80, d))
        sets.append((x, y))
        mi.append(-0.5 * d * np.log(1 - rho**2))
    torch.manual_seed(0)
    model = MIEstimator(ModelConfig(**SMALL))
    batch = prepare_batch(sets, model.config)
    target = to_target(torch.tensor(mi, dtype=torch.float32))
    levels = torch.tensor(model.config.quantile_levels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = pinball_loss(model(batch), target, levels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < factor * losses[0], (losses[0], losses[-5:])


def test_calibration_by_n_range_covers_each_range():
    """Mondrian offsets: each n range fitted on its own sets gets its nominal coverage, where one
    pooled row (fitted on a mix dominated by small n) leaves the sharp large-n range under-covered."""
    rng = np.random.default_rng(2)
    levels = np.array(ModelConfig().quantile_levels)
    n_sets = np.concatenate([rng.integers(10, 1001, size=800), rng.integers(1001, 5001, size=200)])
    target = rng.gamma(2.0, 0.5, size=n_sets.size)
    large = n_sets > 1000
    # the predictor is too narrow and biased upwards at large n only
    noise = rng.normal(0, 0.3, size=(n_sets.size, 1)) + np.where(large, 0.4, 0.0)[:, None]
    pred = target[:, None] + 0.1 * ndtri(levels)[None, :] + noise
    rows = fit_calibration_by_n(pred, target, levels, n_sets, [1000])
    assert rows.shape == (2, levels.size)
    for r, sel in enumerate([~large, large]):  # each row is the plain fit on that range's sets alone
        np.testing.assert_array_equal(rows[r], fit_calibration(pred[sel], target[sel], levels))
    assert np.array_equal(n_range_index(n_sets, [1000]), large.astype(int))
    assert list(n_range_index([1000, 1001, 5, 20000], [10, 1000])) == [1, 2, 0, 2]  # ranges (lo, hi]
    cal = apply_calibration(pred, rows, n=n_sets, n_edges=[1000])
    pooled = apply_calibration(pred, fit_calibration(pred, target, levels))
    lo, hi = np.searchsorted(levels, 0.05), np.searchsorted(levels, 0.95)
    inside = lambda q, sel: np.mean((target[sel] >= q[sel, lo]) & (target[sel] <= q[sel, hi]))
    for sel in (~large, large):
        assert inside(cal, sel) >= 0.9 - 1e-12
        cov = np.mean(target[sel, None] <= cal[sel], axis=0)
        assert np.all(np.abs(cov - levels)[levels < 0.9] <= 1.0 / sel.sum() + 1e-12)
    assert inside(pooled, large) < 0.85  # the check above is not vacuous
    # group-robust within each range, as fit_calibration's groups
    dims = rng.integers(0, 2, size=n_sets.size)
    robust = fit_calibration_by_n(pred, target, levels, n_sets, [1000], groups=[dims])
    np.testing.assert_array_equal(robust[1], fit_calibration(pred[large], target[large], levels, groups=[dims[large]]))
    # a (1, Q) table and no edges is the single-row case
    np.testing.assert_array_equal(apply_calibration(pred, rows[:1]), apply_calibration(pred, rows[0]))
    # documented errors
    with pytest.raises(ValueError, match="n range n > 4000: .* need at least 100"):   # named by its bounds
        fit_calibration_by_n(pred, target, levels, n_sets, [4000])
    assert n_range_labels([300, 1000]) == ["n <= 300", "300 < n <= 1000", "n > 1000"] and n_range_labels([]) == ["all n"]
    with pytest.raises(ValueError, match="strictly increasing"):
        fit_calibration_by_n(pred, target, levels, n_sets, [1000, 500])
    with pytest.raises(ValueError, match="n must have shape"):
        fit_calibration_by_n(pred, target, levels, n_sets[:-1], [1000])
    with pytest.raises(ValueError, match="need pred_grid"):
        apply_calibration(pred, rows, n_edges=[1000])
    with pytest.raises(ValueError, match="must have shape"):
        apply_calibration(pred, rows, n=n_sets, n_edges=[500, 1000])
