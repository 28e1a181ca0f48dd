"""Classical baselines: KSG against a brute-force O(n^2) implementation and exact Gaussian
MI, the Gaussian-copula baseline against exact MI and an independent CCA, InfoNCE's
bound, bootstrap quantiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import digamma

from eval.baselines import (
    BootstrapEstimator,
    GaussianCopulaEstimator,
    InfoNCEEstimator,
    KSGEstimator,
    canonical_correlations,
    gaussian_copula_mi,
    infonce_mi,
    ksg_mi,
)
from eval.baselines.ksg import ksg_mi_prepared, ksg_prepare

torch.set_num_threads(1)


def gaussian_pair(n: int, rhos: list[float], extra_x: int = 0, extra_y: int = 0, seed: int = 0, mix: bool = True):
    """x (n, k + extra_x), y (n, k + extra_y) Gaussian with canonical correlations rhos, mixed by
    random invertible linear maps (MI unchanged); returns x, y, exact MI in nats."""
    rng = np.random.default_rng(seed)
    k = len(rhos)
    r = np.asarray(rhos)
    u = rng.standard_normal((n, k))
    v = r * u + np.sqrt(1 - r**2) * rng.standard_normal((n, k))
    x = np.hstack([u, rng.standard_normal((n, extra_x))])
    y = np.hstack([v, rng.standard_normal((n, extra_y))])
    if mix:
        x = x @ (rng.standard_normal((x.shape[1], x.shape[1])) + 2 * np.eye(x.shape[1]))
        y = y @ (rng.standard_normal((y.shape[1], y.shape[1])) + 2 * np.eye(y.shape[1]))
    return x, y, float(-0.5 * np.sum(np.log(1 - r**2)))


def ksg_brute_force(xs: np.ndarray, ys: np.ndarray, k: int) -> float:
    """KSG algorithm 1 with full pairwise max-norm distance matrices (no trees)."""
    n = xs.shape[0]
    dxm = np.max(np.abs(xs[:, None, :] - xs[None, :, :]), axis=2)
    dym = np.max(np.abs(ys[:, None, :] - ys[None, :, :]), axis=2)
    dz = np.maximum(dxm, dym)
    np.fill_diagonal(dz, np.inf)
    eps = np.sort(dz, axis=1)[:, k - 1]
    np.fill_diagonal(dxm, np.inf)
    np.fill_diagonal(dym, np.inf)
    n_x = np.sum(dxm < eps[:, None], axis=1)
    n_y = np.sum(dym < eps[:, None], axis=1)
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("dims", [(1, 1), (2, 3), (4, 1)])
def test_ksg_matches_brute_force(k, dims):
    x, y, _ = gaussian_pair(300, [0.7], extra_x=dims[0] - 1, extra_y=dims[1] - 1, seed=k)
    xs, ys = ksg_prepare(x, y, seed=1)
    assert ksg_mi_prepared(xs, ys, k) == pytest.approx(ksg_brute_force(xs, ys, k), rel=1e-12, abs=1e-12)
    # the public function = prepare + the same computation
    assert ksg_mi(x, y, k, seed=1) == pytest.approx(ksg_brute_force(xs, ys, k), rel=1e-12, abs=1e-12)


def test_ksg_brute_force_with_ties_and_no_jitter():
    # integer-valued data has many equal distances: the strict "< eps" rule matters
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, size=(200, 1)).astype(float) + rng.standard_normal((200, 1)) * 0.01
    y = np.round(x + rng.standard_normal((200, 1)), 1)
    xs, ys = ksg_prepare(x, y, jitter=0.0)
    assert ksg_mi_prepared(xs, ys, 3) == pytest.approx(ksg_brute_force(xs, ys, 3), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("rhos", [[0.6], [0.5, 0.5], [0.0]])
def test_ksg_close_to_exact_gaussian_mi(rhos):
    x, y, mi = gaussian_pair(5000, rhos, seed=11)
    # tolerance 0.04 nats: KSG's bias and spread at n = 5000 in <= 4 joint dims are ~0.01
    assert ksg_mi(x, y) == pytest.approx(mi, abs=0.04)


def test_ksg_estimator_interface_and_errors():
    x, y, _ = gaussian_pair(100, [0.0], seed=2)
    est = KSGEstimator()
    assert est.estimate(x, y) >= 0.0  # clipped
    q = est.estimate_quantiles(x, y, [0.1, 0.5, 0.9])
    assert q.shape == (3,) and np.all(q == est.estimate(x, y))
    assert not est.has_interval and est.name == "ksg"
    with pytest.raises(ValueError, match="k < n"):
        ksg_mi(x[:3], y[:3], k=3)
    with pytest.raises(ValueError, match="same number of rows"):
        ksg_mi(x, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        ksg_mi(np.full_like(x, np.nan), y)


def test_gaussian_baseline_close_to_exact_mi():
    x, y, mi = gaussian_pair(20000, [0.9, 0.5], extra_x=1, extra_y=2, seed=5)
    # large n: the copula estimate is within 0.03 nats of -1/2 sum log(1 - rho^2) = mi
    assert gaussian_copula_mi(x, y) == pytest.approx(mi, abs=0.03)
    assert gaussian_copula_mi(x, y, copula=False) == pytest.approx(mi, abs=0.03)


def test_canonical_correlations_match_textbook_cca():
    x, y, _ = gaussian_pair(500, [0.8, 0.3], extra_x=1, seed=7)
    c = np.cov(np.hstack([x, y]).T)
    sxx, syy, sxy = c[:3, :3], c[3:, 3:], c[:3, 3:]
    # squared canonical correlations = eigenvalues of Sxx^-1 Sxy Syy^-1 Syx
    ev = np.sort(np.real(scipy.linalg.eigvals(np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T))))[::-1][:2]
    np.testing.assert_allclose(canonical_correlations(x, y), np.sqrt(ev), rtol=1e-9)


def test_copula_baseline_invariant_to_monotone_maps():
    x, y, _ = gaussian_pair(400, [0.7, 0.2], seed=9)
    base = gaussian_copula_mi(x, y)
    assert gaussian_copula_mi(np.exp(x), y) == base
    assert gaussian_copula_mi(x**3, np.arcsinh(5 * y)) == base


def test_gaussian_baseline_handles_constant_column_and_small_n():
    x, y, _ = gaussian_pair(50, [0.7], seed=1)
    x2 = np.hstack([x, np.ones((50, 1))])
    assert gaussian_copula_mi(x2, y) == pytest.approx(gaussian_copula_mi(x, y), rel=1e-9)
    # n <= dx + dy + 1: canonical correlations are forced to 1; the cap keeps the answer finite
    rng = np.random.default_rng(0)
    assert math.isfinite(gaussian_copula_mi(rng.standard_normal((5, 3)), rng.standard_normal((5, 3))))


def test_infonce_bounded_by_log_batch_and_positive_when_dependent():
    x, y, mi = gaussian_pair(1024, [0.95, 0.95], seed=4, mix=False)
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    est = infonce_mi(x, y, steps=100, batch_size=64, seed=0)
    assert math.isfinite(est)
    assert est <= math.log(64) + 1e-6
    assert est > 1.0  # true MI is 2.33 nats; a trained critic finds clearly positive MI
    # leaves torch's threads and global RNG alone
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)


def test_infonce_small_on_independent_data_and_seeded():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((600, 2)), rng.standard_normal((600, 2))
    a = infonce_mi(x, y, steps=60, batch_size=64, seed=3)
    assert a < 0.15  # held-out bound; true MI 0
    assert infonce_mi(x, y, steps=60, batch_size=64, seed=3) == a
    est = InfoNCEEstimator(steps=20, batch_size=32)
    assert est.estimate(x, y) >= 0.0 and not est.has_interval


def test_bootstrap_quantiles_sorted_and_cover_point_estimate():
    levels = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    covered = 0
    for seed in range(8):
        x, y, _ = gaussian_pair(300, [0.6], seed=100 + seed)
        boot = BootstrapEstimator(GaussianCopulaEstimator(), n_boot=40, seed=seed, recentre=False)
        q = boot.estimate_quantiles(x, y, levels)
        assert q.shape == (7,) and np.all(np.diff(q) >= 0) and np.all(q >= 0)
        covered += q[0] <= boot.estimate(x, y) <= q[-1]
    assert covered >= 7


def test_bootstrap_recentred_ksg_median_is_point_estimate():
    x, y, _ = gaussian_pair(200, [0.8], seed=12)
    boot = BootstrapEstimator(KSGEstimator(), n_boot=20, seed=0)
    assert boot.name == "ksg_boot" and boot.has_interval
    q = boot.estimate_quantiles(x, y, [0.05, 0.5, 0.95])
    assert np.all(np.diff(q) >= 0)
    assert q[1] == pytest.approx(KSGEstimator().estimate(x, y), abs=1e-12)
    assert q[0] < q[1] < q[2]
    np.testing.assert_array_equal(q, boot.estimate_quantiles(x, y, [0.05, 0.5, 0.95]))  # seeded
