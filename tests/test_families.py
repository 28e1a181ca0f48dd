"""metagen families: each exact MI against an independent Monte Carlo estimate of
E[log p(x, y) - log p(x) - log p(y)] computed from the family's log densities on a
fresh sample (tolerance: 4 standard errors + 0.02 nats), plus the aiming at targets."""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from metagen.families import FAMILY_NAMES, build_family, family_capacity
from metagen.families.common import MAX_PAIR_MI, gaussian_mi_from_cov, mi_from_rho, random_invertible, split_mi
from metagen.families.gaussian import GAUSSIAN_STRUCTURES, build_gaussian, canonical_factor, LinearGaussian
from metagen.families.mixture import build_mixture
from metagen.families.onedim import (AdditiveUniform, Bimodal, Staircase, build_additive_uniform, build_bimodal,
                                     build_pairs, build_staircase)
from metagen.families.student_t import StudentT, build_student_t, student_t_dof_mi
from metagen.sampler import IndependentBlocks, IndependentPair, NoiseSampler

torch.set_num_threads(1)
MC_N = 30_000
SLACK = 0.02


def mc_mi(sampler, n: int = MC_N, seed: int = 12345) -> tuple[float, float]:
    """Independent MC estimate of I(X;Y) (nats) and its standard error."""
    rng = np.random.default_rng(seed)
    x, y = sampler.sample(n, rng)
    v = sampler.log_density(x, y) - sampler.log_density_x(x) - sampler.log_density_y(y)
    assert np.isfinite(v).all()
    return float(v.mean()), float(v.std() / math.sqrt(n))


def assert_mc_agrees(sampler, exact: float, seed: int = 12345, extra_se: float = 0.0, n: int = MC_N) -> None:
    est, se = mc_mi(sampler, n=n, seed=seed)
    se = math.hypot(se, extra_se)
    assert abs(est - exact) <= 4 * se + SLACK, f"MC {est:.4f} +- {se:.4f} vs exact {exact:.4f}"


# ------------------------------------------------------------------ Gaussian

@pytest.mark.parametrize("structure", GAUSSIAN_STRUCTURES)
@pytest.mark.parametrize("dx,dy,target", [(1, 1, 0.7), (3, 5, 2.5), (12, 15, 9.0), (20, 11, 30.0)])
def test_gaussian_mi_matches_monte_carlo_and_logdet(structure, dx, dy, target):
    rng = np.random.default_rng(zlib.crc32(f"{structure}{dx}{dy}".encode()))
    s = build_gaussian(structure, dx, dy, target, rng)
    assert (s.dim_x, s.dim_y) == (dx, dy)
    mi = s.mutual_information()
    # independent closed form: log-determinants of the covariance
    assert mi == pytest.approx(gaussian_mi_from_cov(s.cov, dx), rel=1e-6, abs=1e-8)
    # aims at the target (clipped to what the structure reaches)
    want = min(target, family_capacity(f"gaussian_{structure}", dx, dy))
    assert mi == pytest.approx(want, rel=1e-3, abs=1e-3)
    assert_mc_agrees(s, mi)


def test_canonical_factor_has_requested_canonical_correlations():
    rng = np.random.default_rng(0)
    rho = np.array([0.9, -0.5, 0.1])
    f = canonical_factor(rho, 4, 3, random_invertible(4, rng), random_invertible(3, rng))
    cov = f @ f.T
    sxx, syy, sxy = cov[:4, :4], cov[4:, 4:], cov[:4, 4:]
    wx = np.linalg.inv(np.linalg.cholesky(sxx))
    wy = np.linalg.inv(np.linalg.cholesky(syy))
    sv = np.linalg.svd(wx @ sxy @ wy.T, compute_uv=False)
    np.testing.assert_allclose(np.sort(sv), np.sort(np.abs(rho)), atol=1e-10)


def test_split_mi_respects_cap_and_total():
    rng = np.random.default_rng(1)
    for target, k in [(0.0, 3), (5.0, 1), (17.9, 3), (30.0, 64)]:
        s = split_mi(target, k, rng, uneven=True)
        assert s.shape == (k,) and (s >= 0).all() and (s <= MAX_PAIR_MI + 1e-12).all()
        assert s.sum() == pytest.approx(min(target, k * MAX_PAIR_MI), abs=1e-9)


# ------------------------------------------------------------------ Student-t

@pytest.mark.parametrize("dx,dy,nu,rho", [
    (1, 1, 1.5, [0.0]),            # heavy tails, zero correlation: all MI from the dof term
    (1, 1, 3.0, [0.8]),
    (2, 3, 5.0, [0.0, 0.0]),
    (3, 4, 2.5, [0.95, 0.3, 0.0]),
    (12, 11, 4.0, [0.999] * 5 + [0.5] * 6),   # high MI (> 4 nats), dims > 10
    (6, 6, 1.5, [0.0] * 6),
])
def test_student_t_closed_form_matches_monte_carlo(dx, dy, nu, rho):
    rng = np.random.default_rng(dx * 100 + dy)
    rho = np.asarray(rho)
    f = canonical_factor(rho, dx, dy, random_invertible(dx, rng), random_invertible(dy, rng))
    s = StudentT(f, dx, nu, mi_from_rho(rho), mean=rng.normal(size=dx + dy))
    exact = s.mutual_information()
    assert exact > mi_from_rho(rho)            # heavy tails add MI even at zero correlation
    assert_mc_agrees(s, exact)


def test_student_t_dof_term_against_quadrature_and_limits():
    # f(nu, 1, 1) = h(X) + h(Y) - h(X, Y) for a bivariate t with identity scale, where
    # h(X) is computed by 1-D quadrature of the univariate t density (independent of
    # the closed form) and h(X, Y) by a radial 1-D quadrature.
    nu = 2.5
    h1 = stats.t(df=nu).entropy()
    def radial(r):  # bivariate t density with identity scale at radius r, times 2 pi r
        logp = (math.lgamma((nu + 2) / 2) - math.lgamma(nu / 2) - math.log(math.pi * nu)
                - 0.5 * (nu + 2) * math.log1p(r * r / nu))
        return -math.exp(logp) * logp * 2 * math.pi * r
    h2 = integrate.quad(radial, 0, np.inf, limit=200)[0]
    assert student_t_dof_mi(nu, 1, 1) == pytest.approx(2 * h1 - h2, rel=1e-5)
    assert student_t_dof_mi(1e6, 5, 7) < 1e-4
    assert all(student_t_dof_mi(a, 3, 4) > student_t_dof_mi(a * 2, 3, 4) > 0 for a in (1.5, 3.0, 10.0))


@pytest.mark.parametrize("dx,dy,target", [(1, 1, 0.05), (1, 1, 3.0), (4, 6, 12.0), (30, 40, 34.0)])
def test_student_t_aims_at_target(dx, dy, target):
    for seed in range(3):
        s = build_student_t(dx, dy, target, np.random.default_rng(seed))
        assert s.mutual_information() == pytest.approx(min(target, family_capacity("student_t", dx, dy)), abs=1e-3)


# ------------------------------------------------------------------ one-dimensional families

@pytest.mark.parametrize("a", [0.02, 0.3, 1.0, 2.5])
def test_additive_uniform_closed_form(a):
    assert_mc_agrees(AdditiveUniform(a), AdditiveUniform(a).mutual_information())


def test_additive_uniform_against_entropy_quadrature():
    a = 0.4
    s = AdditiveUniform(a)
    def integrand(y):
        p = math.exp(float(s.log_density_y(np.array([[y]]))[0]))
        return -p * math.log(p) if p > 0 else 0.0
    h_y = integrate.quad(integrand, 0, 1 + a, points=[a, 1], limit=200)[0]
    assert s.mutual_information() == pytest.approx(h_y - math.log(a), abs=1e-7)


@pytest.mark.parametrize("rho", [0.0, 0.6, 0.999])
def test_bimodal_closed_form_and_bimodality(rho):
    s = Bimodal(rho, (3.0, 2.0), (5.0, 3.0))
    assert_mc_agrees(s, s.mutual_information())
    x, _ = s.sample(20_000, np.random.default_rng(0))
    hist, _ = np.histogram(x[:, 0], bins=np.linspace(-6, 6, 25))
    mid = len(hist) // 2
    assert hist[mid - 1:mid + 1].max() < 0.5 * hist.max()     # a valley at 0: two modes


@pytest.mark.parametrize("p", [[0.5, 0.5], [0.7, 0.2, 0.1], list(np.full(200, 1 / 200))])
def test_staircase_closed_form(p):
    s = Staircase(np.array(p))
    assert s.mutual_information() == pytest.approx(stats.entropy(p), abs=1e-12)
    assert_mc_agrees(s, s.mutual_information())


@pytest.mark.parametrize("build", [build_additive_uniform, build_bimodal, build_staircase])
@pytest.mark.parametrize("target", [0.01, 0.4, 2.0, 5.5])
def test_one_d_builders_aim_at_target(build, target):
    s = build(target, np.random.default_rng(3))
    assert s.mutual_information() == pytest.approx(target, abs=2e-3)


@pytest.mark.parametrize("name", ["additive_uniform", "bimodal", "staircase"])
def test_one_d_families_in_high_dims_add_up(name):
    s = build_pairs(name, 13, 11, 14.0, np.random.default_rng(7))
    assert (s.dim_x, s.dim_y) == (13, 11)
    assert s.mutual_information() == pytest.approx(14.0, abs=1e-3)
    assert_mc_agrees(s, s.mutual_information(), n=10_000)


# ------------------------------------------------------------------ composition, mixtures, independence

def test_independent_blocks_mi_adds():
    rng = np.random.default_rng(11)
    blocks = [build_gaussian("dense", 3, 2, 2.0, rng), build_student_t(2, 4, 1.5, rng), AdditiveUniform(0.2),
              NoiseSampler(2, 0)]
    s = IndependentBlocks(blocks, rng)
    assert (s.dim_x, s.dim_y) == (8, 7)
    total = sum(b.mutual_information() for b in blocks)
    assert s.mutual_information() == pytest.approx(total)
    assert_mc_agrees(s, total)


@pytest.mark.parametrize("dx,dy,target", [(1, 1, 1.0), (3, 2, 4.0), (12, 9, 10.0)])
def test_mixture_monte_carlo_mi(dx, dy, target):
    s = build_mixture(dx, dy, target, np.random.default_rng(dx + 10 * dy))
    mi, se = s.mutual_information(), s.mi_stderr
    assert se <= 0.0105 or mi > 10
    assert (s.dim_x, s.dim_y) == (dx, dy)
    assert_mc_agrees(s, mi, seed=999, extra_se=se)     # fresh points, different seed
    s2 = build_mixture(dx, dy, target, np.random.default_rng(dx + 10 * dy))
    assert s2.mutual_information() == mi               # deterministic


def test_blocks_family():
    s = build_family("blocks", 10, 14, 12.0, np.random.default_rng(5))
    assert (s.dim_x, s.dim_y) == (10, 14)
    assert s.mutual_information() == pytest.approx(12.0, abs=0.3)
    assert_mc_agrees(s, s.mutual_information(), extra_se=s.mi_stderr)


def test_independent_pair_has_zero_dependence():
    base = build_gaussian("dense", 2, 2, 3.0, np.random.default_rng(0))
    s = IndependentPair(base)
    assert s.mutual_information() == 0.0
    n = 20_000
    x, y = s.sample(n, np.random.default_rng(1))
    xb, yb = base.sample(n, np.random.default_rng(1))
    c = np.corrcoef(np.c_[x, y].T)[:2, 2:]
    cb = np.corrcoef(np.c_[xb, yb].T)[:2, 2:]
    assert np.abs(c).max() < 4 / math.sqrt(n) + 0.01       # no correlation left ...
    assert np.abs(cb).max() > 0.3                          # ... where the base had plenty
    np.testing.assert_allclose(x.std(axis=0), xb.std(axis=0), rtol=0.05)   # same marginals


@pytest.mark.parametrize("name", [f for f in FAMILY_NAMES])
@pytest.mark.parametrize("dx,dy", [(1, 1), (2, 7), (64, 5)])
def test_every_family_builds_with_exact_dims_and_finite_samples(name, dx, dy):
    rng = np.random.default_rng(zlib.crc32(f"{name}{dx}{dy}".encode()))
    s = build_family(name, dx, dy, 3.0, rng)
    x, y = s.sample(50, rng)
    assert x.shape == (50, dx) and y.shape == (50, dy)
    assert np.isfinite(x).all() and np.isfinite(y).all()
    mi = s.mutual_information()
    assert mi >= -4 * s.mi_stderr and math.isfinite(mi)
    if name == "independent":
        assert mi == 0.0
