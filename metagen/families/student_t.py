"""Multivariate Student-t (X, Y) with shared dof nu and a block scale matrix.

(x, y) = mean + L g / sqrt(w), g ~ N(0, I), w ~ chi2(nu) / nu. The scale matrix
S = L L^T comes from canonical correlations rho_k and random invertible maps, as in
the Gaussian family. Exact MI (derivation: for a d-dim t,
h = -lnG((nu+d)/2) + lnG(nu/2) + d/2 log(nu pi) + 1/2 log|S| + (nu+d)/2 [psi((nu+d)/2) - psi(nu/2)],
marginals of a joint t are t with the same nu, and I = h(X) + h(Y) - h(X, Y); the
log(nu pi) terms cancel and the log-determinants give the Gaussian part):

    I = -1/2 sum log(1 - rho_k^2) + f(nu, dx, dy)
    f = lnG(nu/2) + lnG((nu+dx+dy)/2) - lnG((nu+dx)/2) - lnG((nu+dy)/2)
        + (nu+dx)/2 psi((nu+dx)/2) + (nu+dy)/2 psi((nu+dy)/2)
        - (nu+dx+dy)/2 psi((nu+dx+dy)/2) - nu/2 psi(nu/2)

f > 0 (the shared scale w couples X and Y even with zero correlation) and f -> 0 as
nu -> infinity.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import digamma, gammaln

from metagen.families.common import MAX_PAIR_MI, mi_from_rho, mvt_logpdf, random_invertible, rho_from_mi, split_mi
from metagen.families.gaussian import canonical_factor
from metagen.sampler import as_2d

__all__ = ["StudentT", "student_t_dof_mi", "build_student_t", "student_t_capacity"]

NU_MIN, NU_MAX = 1.5, 1e6


def student_t_dof_mi(nu: float, dim_x: int, dim_y: int) -> float:
    """The dof term f(nu, dx, dy) of the Student-t MI (nats), see the module docstring."""
    a, bx, by, c = nu / 2, (nu + dim_x) / 2, (nu + dim_y) / 2, (nu + dim_x + dim_y) / 2
    return float(gammaln(a) + gammaln(c) - gammaln(bx) - gammaln(by)
                 + bx * digamma(bx) + by * digamma(by) - c * digamma(c) - a * digamma(a))


class StudentT:
    """Joint multivariate t: (x, y) = mean + L g / sqrt(w); exact MI, see module docstring."""

    mi_stderr = 0.0

    def __init__(self, factor: np.ndarray, dim_x: int, nu: float, gauss_mi: float, mean: np.ndarray | None = None):
        self.factor = np.asarray(factor, dtype=np.float64)
        self.dim_x = int(dim_x)
        self.dim_y = self.factor.shape[0] - self.dim_x
        self.nu = float(nu)
        self.gauss_mi = float(gauss_mi)
        self.mean = np.zeros(self.factor.shape[0]) if mean is None else np.asarray(mean, dtype=np.float64)
        self.scale = self.factor @ self.factor.T

    def mutual_information(self) -> float:
        """I = Gaussian part + f(nu, dx, dy), nats."""
        return self.gauss_mi + student_t_dof_mi(self.nu, self.dim_x, self.dim_y)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim_x), (n, dim_y) float64."""
        g = rng.standard_normal((n, self.factor.shape[1])) @ self.factor.T
        w = rng.chisquare(self.nu, size=(n, 1)) / self.nu
        z = g / np.sqrt(w) + self.mean
        return z[:, :self.dim_x], z[:, self.dim_x:]

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return mvt_logpdf(np.concatenate([as_2d(x), as_2d(y)], axis=1), self.mean, self.scale, self.nu)

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        d = self.dim_x
        return mvt_logpdf(as_2d(x), self.mean[:d], self.scale[:d, :d], self.nu)

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        d = self.dim_x
        return mvt_logpdf(as_2d(y), self.mean[d:], self.scale[d:, d:], self.nu)


def student_t_capacity(dim_x: int, dim_y: int) -> float:
    """Largest MI (nats) the builder aims at in dims (dim_x, dim_y)."""
    return MAX_PAIR_MI * min(dim_x, dim_y) + student_t_dof_mi(NU_MIN, dim_x, dim_y)


def _nu_for_dof_mi(value: float, dim_x: int, dim_y: int) -> float:
    """nu with f(nu, dx, dy) = value (f decreases in nu), by bisection on log nu."""
    lo, hi = math.log(NU_MIN), math.log(NU_MAX)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if student_t_dof_mi(math.exp(mid), dim_x, dim_y) > value:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def build_student_t(dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> StudentT:
    """A Student-t sampler aiming at ``target`` nats: draw nu log-uniform in [1.5, 30]; if
    its dof term alone exceeds the target (or, with probability 0.15, on purpose: zero
    correlation, all MI from the heavy tails), solve nu for the dof term; the rest of
    the target goes to canonical correlations."""
    target = max(0.0, min(float(target), student_t_capacity(dim_x, dim_y)))
    nu = math.exp(rng.uniform(math.log(NU_MIN), math.log(30.0)))
    f = student_t_dof_mi(nu, dim_x, dim_y)
    if rng.uniform() < 0.15 and target <= student_t_dof_mi(NU_MIN, dim_x, dim_y):
        nu = _nu_for_dof_mi(target, dim_x, dim_y)
    elif f > target:
        nu = _nu_for_dof_mi(target * rng.uniform(0.2, 0.9), dim_x, dim_y)
    f = student_t_dof_mi(nu, dim_x, dim_y)
    k = min(dim_x, dim_y)
    shares = split_mi(max(target - f, 0.0), k, rng, uneven=bool(rng.uniform() < 0.5))
    rho = rho_from_mi(shares) * rng.choice([-1.0, 1.0], size=k)
    factor = canonical_factor(rho, dim_x, dim_y, random_invertible(dim_x, rng), random_invertible(dim_y, rng))
    return StudentT(factor, dim_x, nu, mi_from_rho(rho), mean=rng.normal(0.0, 1.0, dim_x + dim_y))
