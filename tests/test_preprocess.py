"""model/preprocess.py: copula transform, canonical correlations, subsets, kNN statistics, Batch.

Each function is checked against an independent computation (scipy, brute force).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from scipy.special import digamma, ndtri
from scipy.stats import rankdata

from model.network import ModelConfig
from model.preprocess import (
    QUANT_SCALE,
    R_MAX,
    _kth_smallest,
    canonical_correlations,
    canonical_subset,
    canonical_variates,
    grouped_canonical_correlations,
    knn_statistics,
    ksg_among,
    normal_scores,
    prepare_batch,
    quantized_scores,
    set_statistics,
    standardize,
)

torch.set_num_threads(1)


def test_normal_scores_match_scipy_with_ties_and_constant_columns():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.normal(size=50), rng.integers(0, 4, size=50), np.full(50, 3.0), rng.exponential(size=50)])
    z = normal_scores(a)
    for j in range(a.shape[1]):
        expected = ndtri(rankdata(a[:, j]) / 51) if np.ptp(a[:, j]) > 0 else np.zeros(50)
        np.testing.assert_allclose(z[:, j], expected, atol=1e-12)
    assert np.all(z[:, 2] == 0)
    np.testing.assert_allclose(normal_scores(a[:, 0]), z[:, :1])  # 1-D input is one column


def test_standardize():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.normal(3, 2, size=40), np.ones(40)])
    z = standardize(a)
    np.testing.assert_allclose(z[:, 0], (a[:, 0] - a[:, 0].mean()) / a[:, 0].std())
    assert np.all(z[:, 1] == 0)


@pytest.mark.parametrize("n,dx,dy", [(200, 3, 2), (12, 4, 6), (30, 1, 1), (9, 3, 3)])
def test_canonical_correlations_match_subspace_angles(n, dx, dy):
    rng = np.random.default_rng(n + dx)
    x = rng.normal(size=(n, dx))
    y = 0.5 * x[:, :1] + rng.normal(size=(n, dy))
    r = canonical_correlations(x, y)
    expected = np.sort(np.cos(subspace_angles(x - x.mean(0), y - y.mean(0))))[::-1][: min(dx, dy)]
    np.testing.assert_allclose(r, np.clip(expected, 0, R_MAX), atol=1e-7)
    assert r.shape == (min(dx, dy),) and np.all(np.diff(r) <= 0) and np.all((r >= 0) & (r < 1))


@pytest.mark.parametrize("dx,dy", [(3, 2), (1, 1), (20, 18)])
def test_grouped_canonical_correlations_match_each_group_alone(dx, dy):
    # the batched path against scipy's principal angles per group, and the degenerate groups
    # (a duplicated column, fewer rows than columns, too few rows) against the per-group call
    rng = np.random.default_rng(dx * 7 + dy)
    sizes = [120, 90, 4 * (dx + dy), 2, 0, 60, (dx + dy) // 2 + 2]
    group = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(group)
    x = rng.normal(size=(group.size, dx))
    y = 0.7 * x[:, :1] * (1 + group[:, None] % 3) + rng.normal(size=(group.size, dy))
    if dx > 1:
        x[group == 5, 1] = x[group == 5, 0]  # exact rank deficiency in group 5
    z = np.concatenate([x, y], axis=1)
    got = grouped_canonical_correlations(z, dx, group, len(sizes), min_rows=3)
    assert len(got) == len(sizes)
    for k, r in enumerate(got):
        assert (r is None) == (sizes[k] < 3)
        if r is None:
            continue
        rows = z[group == k]
        np.testing.assert_allclose(r, canonical_correlations(rows[:, :dx], rows[:, dx:]), atol=1e-10)
        if rows.shape[0] > 2 * (dx + dy) and not (k == 5 and dx > 1):
            c = rows - rows.mean(0)
            angles = np.sort(np.cos(subspace_angles(c[:, :dx], c[:, dx:])))[::-1][: min(dx, dy)]
            np.testing.assert_allclose(r, np.clip(angles, 0, R_MAX), atol=1e-7)
    assert grouped_canonical_correlations(z, dx, np.zeros(group.size, dtype=int), 1, min_rows=z.shape[0] + 1) == [None]


@pytest.mark.parametrize("duplicate", [False, True])
def test_canonical_variates_carry_the_canonical_correlations(duplicate):
    # pair i of the variates correlates at r_i, and different pairs not at all; a duplicated
    # column (exact rank deficiency) takes the SVD path and must give the same answer
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 4))
    y = np.stack([x[:, 0] + 0.5 * rng.normal(size=300), x[:, 1] - x[:, 2] + 2 * rng.normal(size=300),
                  rng.normal(size=300)], axis=1)
    if duplicate:
        x[:, 3] = x[:, 0]
    px, py = canonical_variates(x, y, top=2)
    assert px.shape == py.shape == (300, 2)
    c = np.corrcoef(np.concatenate([px, py], axis=1).T)
    np.testing.assert_allclose(np.diag(c[:2, 2:]), canonical_correlations(x, y)[:2], atol=1e-10)
    np.testing.assert_allclose(c[0, 1], 0.0, atol=1e-10)
    np.testing.assert_allclose([c[0, 3], c[1, 2]], 0.0, atol=1e-10)


def test_canonical_correlations_recover_known_rho():
    rng = np.random.default_rng(1)
    n, rhos = 20000, np.array([0.9, 0.5, 0.0])
    x = rng.normal(size=(n, 3))
    y = rhos * x + np.sqrt(1 - rhos**2) * rng.normal(size=(n, 3))
    # invertible linear maps do not change canonical correlations
    r = canonical_correlations(x @ rng.normal(size=(3, 3)), y @ rng.normal(size=(3, 3)))
    np.testing.assert_allclose(r, rhos, atol=0.03)


def test_canonical_correlations_degenerate_inputs():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 3))
    x[:, 1] = 1.0  # constant
    y = np.column_stack([x[:, 0], x[:, 0]])  # duplicated columns, exactly dependent on x
    r = canonical_correlations(x, y)
    assert r.shape == (2,) and np.isfinite(r).all()
    assert r[0] == pytest.approx(R_MAX) and r[1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(canonical_correlations(np.ones((5, 2)), rng.normal(size=(5, 2))) == 0)
    r = canonical_correlations(rng.normal(size=(6, 4)), rng.normal(size=(6, 4)))  # n - 1 < dx + dy
    assert np.isfinite(r).all() and r.max() <= R_MAX


def test_canonical_subset_is_invariant():
    rng = np.random.default_rng(3)
    n, dx = 300, 2
    z = np.column_stack([rng.normal(size=(n, dx)), rng.normal(size=(n, 3))])
    sel = canonical_subset(z, dx, 50)
    assert sel.size == 50 and np.unique(sel).size == 50
    perm = rng.permutation(n)
    sel_p = canonical_subset(z[perm], dx, 50)
    assert set(perm[sel_p]) == set(sel)
    swapped = np.column_stack([z[:, dx:][:, ::-1], z[:, :dx]])
    assert set(canonical_subset(swapped, 3, 50)) == set(sel)
    assert canonical_subset(z, dx, 50, rng=np.random.default_rng(0)).size == 50
    assert np.array_equal(canonical_subset(z[:40], dx, 50), np.arange(40))


def test_canonical_subset_drops_ambiguous_ties():
    """Rows (a, b) and (b, a) tie on every swap-invariant key; they must be taken together or not at all."""
    rng = np.random.default_rng(4)
    base = rng.normal(size=(100, 2))
    z = np.concatenate([base, base[:, ::-1]])  # every row has a mirrored partner
    for seed in range(5):
        sel = set(canonical_subset(z, 1, 30, seed=seed))
        assert all((i in sel) == ((i + 100) % 200 in sel) for i in range(200))
        assert len(sel) >= 2


def _ksg_brute(z, dx, k):
    n = z.shape[0]
    d = np.abs(z[:, None, :] - z[None, :, :])
    dxm, dym = d[..., :dx].max(-1), d[..., dx:].max(-1)
    np.fill_diagonal(dxm, np.inf)
    np.fill_diagonal(dym, np.inf)
    joint = np.maximum(dxm, dym)
    eps = np.sort(joint, axis=1)[:, k - 1]
    nx = (dxm < eps[:, None]).sum(1)
    ny = (dym < eps[:, None]).sum(1)
    return digamma(k) + digamma(n) - digamma(nx + 1) - digamma(ny + 1)


def test_knn_statistics_match_brute_force_ksg():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 2))
    y = x[:, :1] + 0.5 * rng.normal(size=(150, 1))
    z = np.column_stack([normal_scores(x), normal_scores(y)]).astype(np.float32).astype(np.float64)
    feats, mean = knn_statistics(z, 2, np.arange(150), 3)
    expected = _ksg_brute(z, 2, 3)
    np.testing.assert_allclose(feats[:, 0], expected, atol=1e-4)
    assert mean == pytest.approx(expected.mean(), abs=1e-5)


@pytest.mark.parametrize("width", [1, 7, 63, 64, 191, 192, 200, 512, 513, 1000, 1024, 1500])
@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_kth_smallest_matches_a_full_sort(width, dtype):
    rng = np.random.default_rng(width)
    a = rng.integers(0, 50 if width > 100 else 5, size=(37, width)).astype(dtype)  # many ties
    for k in (1, 3, 5):
        if k > width:
            continue
        want = np.sort(a, axis=1)[:, k - 1]
        np.testing.assert_array_equal(_kth_smallest(a.copy(), k), want)


def _correlated_scores(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x[:, :1] + 0.5 * rng.normal(size=(n, 1))
    return np.column_stack([normal_scores(x), normal_scores(y)])


@pytest.mark.parametrize("n, refs", [(150, 150), (700, 600)])  # 600 int16 columns: the lanes of _kth_smallest
def test_quantized_knn_statistics_match_brute_force_on_the_rounded_scores(n, refs):
    z = _correlated_scores(n, 8)
    ref = np.arange(refs)
    feats, mean = knn_statistics(z, 2, ref, 3, quantize=True)
    zq = np.rint(z * QUANT_SCALE) / QUANT_SCALE  # exact in float64: the distances are too
    want_feats, want_mean = knn_statistics(zq, 2, ref, 3)  # exact float32 path on the rounded scores ...
    if refs == n:
        np.testing.assert_allclose(feats[:, 0], _ksg_brute(zq, 2, 3), atol=1e-9)  # ... and brute force
    np.testing.assert_allclose(feats[:, :3], want_feats[:, :3], atol=1e-9)
    np.testing.assert_allclose(feats[:, 3], want_feats[:, 3], atol=1e-6)  # log eps: float32 rounding
    assert mean == pytest.approx(want_mean, abs=1e-9)
    exact_feats, exact_mean = knn_statistics(z, 2, ref, 3)
    assert abs(mean - exact_mean) < 0.01  # rounding moves a few neighbours across eps, not the estimate
    assert np.mean(np.abs(feats[:, 0] - exact_feats[:, 0]) > 1e-9) < 0.2


def test_ksg_among_matches_brute_force_ksg_on_each_problem():
    """Several KSG problems on shared rows in one pass == a brute-force KSG per problem on the
    reference rows alone (scores rounded to 1 / QUANT_SCALE, the int16 path's grid)."""
    rng = np.random.default_rng(11)
    a = rng.normal(size=(300, 5))
    a[:, 2:] += np.tanh(2 * a[:, :2]).sum(axis=1, keepdims=True)  # dependence between the blocks
    u = normal_scores(a)
    ref = np.sort(rng.choice(300, 120, replace=False))
    problems = [([0], [1]), ([0, 1], [2, 3, 4]), ([4], [2]), ([1, 3], [0])]
    got = ksg_among(u, problems, ref, 3)
    sub = np.rint(u[ref] * QUANT_SCALE) / QUANT_SCALE
    want = [_ksg_brute(sub[:, xs + ys], len(xs), 3).mean() for xs, ys in problems]
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert got[1] > got[0] + 0.3  # the dependent blocks read clearly above the independent pair
    heavy = rng.standard_t(2, size=(150, 3)) * 3  # |u| >= 4: the float32 fallback, one problem at a time
    assert quantized_scores(heavy) is None
    want = [_ksg_brute(heavy[:, xs + ys].astype(np.float32).astype(np.float64), len(xs), 3).mean()
            for xs, ys in [([0], [1, 2]), ([2], [0])]]
    np.testing.assert_allclose(ksg_among(heavy, [([0], [1, 2]), ([2], [0])], np.arange(150), 3), want, atol=1e-9)


def test_quantized_knn_falls_back_to_float32_for_large_scores():
    rng = np.random.default_rng(9)
    z = rng.standard_t(2, size=(200, 2)) * 3  # |z| >= 4 somewhere: out of the int16 range
    assert quantized_scores(z) is None
    a, am = knn_statistics(z, 1, np.arange(200), 3, quantize=True)
    b, bm = knn_statistics(z, 1, np.arange(200), 3)
    np.testing.assert_array_equal(a, b)
    assert quantized_scores(np.array([[4.0 - 1 / QUANT_SCALE]])) is not None


def test_prepare_batch_uses_the_quantized_knn_path_when_configured():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(300, 2))
    y = x + rng.normal(size=(300, 2))
    exact = prepare_batch([(x, y)], ModelConfig(knn_rows=64))
    rounded = prepare_batch([(x, y)], ModelConfig(knn_rows=64, knn_quantize=True))
    assert not torch.equal(exact.knn, rounded.knn)
    torch.testing.assert_close(rounded.knn, exact.knn, atol=0.2, rtol=0)


def test_knn_workspace_first_made_under_inference_mode_serves_training_calls():
    """The kNN step keeps per-thread buffers: made first during a prediction (inference
    mode), they must still be writable by a later training call in the same thread."""
    import threading

    rng = np.random.default_rng(6)
    x = rng.normal(size=(120, 1))
    y = x + rng.normal(size=(120, 1))
    z = np.column_stack([normal_scores(x), normal_scores(y)]).astype(np.float32).astype(np.float64)
    expected = _ksg_brute(z, 1, 3)
    got, errors = [], []

    def fresh_thread():          # a new thread has no workspace yet
        try:
            with torch.inference_mode():
                got.append(knn_statistics(z, 1, np.arange(120), 3)[0][:, 0])
            got.append(knn_statistics(z, 1, np.arange(120), 3)[0][:, 0])
        except Exception as exc:  # noqa: BLE001 - re-raised in the test's thread below
            errors.append(exc)

    t = threading.Thread(target=fresh_thread)
    t.start()
    t.join()
    assert not errors, errors
    assert len(got) == 2
    for feats in got:
        np.testing.assert_allclose(feats, expected, atol=1e-4)


def test_ksg_mean_is_close_to_the_true_gaussian_mi():
    rng = np.random.default_rng(6)
    rho, n = 0.8, 500
    x = rng.normal(size=(n, 1))
    y = rho * x + np.sqrt(1 - rho**2) * rng.normal(size=(n, 1))
    z = np.column_stack([normal_scores(x), normal_scores(y)])
    _, mean = knn_statistics(z, 1, np.arange(n), 3)
    assert mean == pytest.approx(-0.5 * np.log(1 - rho**2), abs=0.08)


def test_knn_queries_outside_the_reference_and_tiny_sets():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(60, 3))
    feats, _ = knn_statistics(z, 1, np.arange(0, 60, 3), 3)
    assert feats.shape == (60, 4) and np.isfinite(feats).all()
    feats, _ = knn_statistics(rng.normal(size=(2, 2)), 1, np.arange(2), 3)  # k > n - 1
    assert np.isfinite(feats).all()
    feats, _ = knn_statistics(np.zeros((10, 2)), 1, np.arange(10), 3)  # all identical rows
    assert np.isfinite(feats).all()


def test_set_statistics_are_swap_symmetric_and_gaussian_mi_is_exact():
    r = np.array([0.9, 0.3])
    s = set_statistics(r, 0.4, 100, 2, 5, cca_top=4)
    assert np.allclose(s, set_statistics(r, 0.4, 100, 5, 2, cca_top=4))
    assert s[0] == pytest.approx(np.log1p(-0.5 * np.sum(np.log(1 - r**2))))
    assert len(s) == len(set_statistics(None, None, 100, 2, 5, cca_top=4))


def test_prepare_batch_layout_and_masks():
    cfg = ModelConfig(cell_rows=16, knn_rows=32)
    rng = np.random.default_rng(8)
    sets = [(rng.normal(size=(40, 2)), rng.normal(size=(40, 3))), (rng.normal(size=(10, 1)), rng.normal(size=10))]
    b = prepare_batch(sets, cfg)
    assert b.size == 2 and b.rows.shape == (2, 40, 5) and b.cells.shape == (2, 16, 5)
    assert b.row_mask.sum(1).tolist() == [40, 10] and b.cell_mask.sum(1).tolist() == [16, 10]
    assert b.col_mask.tolist() == [[True, True, True, True, True], [True, False, True, False, False]]
    assert b.is_y.tolist() == [False, False, True, True, True]
    np.testing.assert_allclose(b.rows[1, :10, 2].numpy(), normal_scores(sets[1][1])[:, 0], atol=1e-6)
    assert torch.all(b.rows[1, 10:] == 0) and torch.all(b.rows[1, :, [1, 3, 4]] == 0)
    assert torch.all(b.knn[1, 10:] == 0)
    b64 = b.to("cpu", dtype=torch.float64)
    assert b64.rows.dtype == torch.float64 and b64.row_mask.dtype == torch.bool
    with pytest.raises(ValueError):
        prepare_batch([(np.zeros((1, 1)), np.zeros((1, 1)))], cfg)
    with pytest.raises(ValueError):
        prepare_batch([], cfg)


def _cca_by_svd(x, y):
    """The SVD path alone (the reference for the Gram fast path)."""
    import torch

    from model.preprocess import _canonical_correlations_svd

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    return _canonical_correlations_svd(torch.from_numpy(x - x.mean(0)), torch.from_numpy(y - y.mean(0)),
                                       min(x.shape[1], y.shape[1]))


@pytest.mark.parametrize("case", ["plain", "high_rho", "correlated_columns", "duplicate", "constant", "n_below_d",
                                  "near_duplicate", "copula_scores"])
def test_canonical_correlations_fast_path_equals_svd_path(case):
    """The Gram/eigh fast path (or its SVD fallback) gives the SVD path's values to 1e-9."""
    from model.preprocess import _normal_scores_t

    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    n, dx, dy = 300, 4, 3
    x = rng.normal(size=(n, dx))
    y = 0.6 * x[:, :dy] + 0.8 * rng.normal(size=(n, dy))
    if case == "high_rho":
        y[:, 0] = x[:, 0] + 1e-5 * rng.normal(size=n)  # one pair with r = 1 - 5e-11: clipped at R_MAX
        y[:, 1] = x[:, 1] + 1e-3 * rng.normal(size=n)
    elif case == "correlated_columns":
        x[:, 1] = x[:, 0] + 0.05 * rng.normal(size=n)  # ill-conditioned x block
    elif case == "duplicate":
        x[:, 2] = x[:, 0]
    elif case == "constant":
        y[:, 2] = 3.0
    elif case == "n_below_d":
        x, y = x[:5], y[:5]
    elif case == "near_duplicate":
        x[:, 3] = x[:, 0]
        x[:2, 3] = x[1::-1, 0]  # two values swapped: rank 4 with a tiny fourth singular value
    elif case == "copula_scores":
        z = _normal_scores_t(np.ascontiguousarray(np.concatenate([x, np.tanh(y)], axis=1).T)).T
        x, y = z[:, :dx], z[:, dx:]
    np.testing.assert_allclose(canonical_correlations(x, y), _cca_by_svd(x, y), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_kth_smallest_with_the_largest_value_in_the_data(dtype):
    """The lanes start from the dtype's largest value as a placeholder; data holding that value
    (the int16 path's "far" self entries) must still count as itself."""
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    a = rng.integers(0, 20, size=(50, 700)).astype(dtype)  # int16: wide enough for the lanes
    a[rng.random(a.shape) < 0.5] = top
    a[0] = top  # a row of nothing but the largest value
    a[1, :-2] = top  # two small values, both in the columns the lanes leave over
    for k in (1, 2, 3, 4):
        want = np.sort(a, axis=1)[:, k - 1]
        np.testing.assert_array_equal(_kth_smallest(a.copy(), k), want)
