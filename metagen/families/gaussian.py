"""Jointly Gaussian (X, Y) with chosen canonical correlations, then random invertible
linear maps on X and on Y (MI unchanged). Exact MI: I = -1/2 sum_k log(1 - rho_k^2).

Structures (family names):
    gaussian_dense     every canonical pair correlated, equal MI shares
    gaussian_sparse    a few pairs carry the MI, the other coordinates are noise
    gaussian_two_pair  at most two correlated pairs
    gaussian_latent    X = Wx z + s ex, Y = Wy z + s ey with r shared latent factors z
    gaussian_random    every pair correlated, random (Dirichlet) MI shares
All aim at a target MI (nats), clipped to MAX_PAIR_MI per pair.
"""
from __future__ import annotations

import math

import numpy as np

from metagen.families.common import (MAX_PAIR_MI, gaussian_mi_from_cov, mi_from_rho, mvn_logpdf,
                                     random_invertible, rho_from_mi, split_mi)
from metagen.sampler import as_2d

__all__ = ["LinearGaussian", "canonical_factor", "build_gaussian", "gaussian_capacity", "GAUSSIAN_STRUCTURES"]

GAUSSIAN_STRUCTURES = ("dense", "sparse", "two_pair", "latent", "random")


class LinearGaussian:
    """(x, y) = mean + L g with g ~ N(0, I_m): a joint Gaussian with covariance L L^T.

    ``mi`` is the exact MI in nats when known from the construction (canonical
    correlations); otherwise it is computed from the covariance's log determinants.
    """

    mi_stderr = 0.0

    def __init__(self, factor: np.ndarray, dim_x: int, mean: np.ndarray | None = None, mi: float | None = None):
        self.factor = np.asarray(factor, dtype=np.float64)          # (dim_x + dim_y, m)
        self.dim_x = int(dim_x)
        self.dim_y = self.factor.shape[0] - self.dim_x
        self.mean = np.zeros(self.factor.shape[0]) if mean is None else np.asarray(mean, dtype=np.float64)
        self.cov = self.factor @ self.factor.T
        self._mi = gaussian_mi_from_cov(self.cov, self.dim_x) if mi is None else float(mi)

    def mutual_information(self) -> float:
        """Exact I(X; Y) in nats."""
        return self._mi

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim_x), (n, dim_y) float64."""
        z = rng.standard_normal((n, self.factor.shape[1])) @ self.factor.T + self.mean
        return z[:, :self.dim_x], z[:, self.dim_x:]

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """log p(x, y), (n,)."""
        return mvn_logpdf(np.concatenate([as_2d(x), as_2d(y)], axis=1), self.mean, self.cov)

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        """log p(x), (n,)."""
        d = self.dim_x
        return mvn_logpdf(as_2d(x), self.mean[:d], self.cov[:d, :d])

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        """log p(y), (n,)."""
        d = self.dim_x
        return mvn_logpdf(as_2d(y), self.mean[d:], self.cov[d:, d:])


def canonical_factor(rho: np.ndarray, dim_x: int, dim_y: int, a: np.ndarray | None = None,
                     b: np.ndarray | None = None) -> np.ndarray:
    """Factor L (dim_x + dim_y, dim_x + dim_y) of (A x0, B y0) where x0 ~ N(0, I) and
    y0_k = rho_k x0_k + sqrt(1 - rho_k^2) e_k (k < len(rho)), y0_j = e_j otherwise.

    ``rho`` has length <= min(dim_x, dim_y); A (dim_x, dim_x) and B (dim_y, dim_y) are
    invertible (identity if None). The canonical correlations of the result are rho.
    """
    rho = np.asarray(rho, dtype=np.float64)
    k = len(rho)
    if k > min(dim_x, dim_y):
        raise ValueError(f"{k} canonical pairs do not fit dims ({dim_x}, {dim_y})")
    d = dim_x + dim_y
    f = np.zeros((d, d))
    f[:dim_x, :dim_x] = np.eye(dim_x)
    idx = np.arange(k)
    f[dim_x + idx, idx] = rho
    noise = np.ones(dim_y)
    noise[:k] = np.sqrt(np.clip(1.0 - rho * rho, 0.0, None))
    f[dim_x:, dim_x:] = np.diag(noise)
    if a is not None:
        f[:dim_x] = a @ f[:dim_x]
    if b is not None:
        f[dim_x:] = b @ f[dim_x:]
    return f


def gaussian_capacity(structure: str, dim_x: int, dim_y: int) -> float:
    """Largest MI (nats) a structure reaches in dims (dim_x, dim_y)."""
    k = min(dim_x, dim_y)
    if structure == "two_pair":
        k = min(k, 2)
    return MAX_PAIR_MI * k


def _latent(dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> LinearGaussian:
    k = min(dim_x, dim_y)
    r_min = max(1, math.ceil(target / MAX_PAIR_MI - 1e-9))
    r = int(rng.integers(r_min, max(r_min, min(k, r_min + 3)) + 1))
    wx = rng.standard_normal((dim_x, r))
    wy = rng.standard_normal((dim_y, r))

    def build(log_s: float) -> np.ndarray:
        s = math.exp(log_s)
        return np.block([[wx, s * np.eye(dim_x), np.zeros((dim_x, dim_y))],
                         [wy, np.zeros((dim_y, dim_x)), s * np.eye(dim_y)]])

    # With S = W W^T + s^2 I: log|S| = d log s^2 + log|I_r + W^T W / s^2|; the d log s^2
    # terms cancel in the MI, leaving r x r determinants (cheap for large dims).
    gx, gy = wx.T @ wx, wy.T @ wy
    ex, ey, exy = (np.linalg.eigvalsh(g) for g in (gx, gy, gx + gy))

    def mi(log_s: float) -> float:
        inv = math.exp(-2.0 * log_s)
        return float(0.5 * (np.sum(np.log1p(ex * inv)) + np.sum(np.log1p(ey * inv)) - np.sum(np.log1p(exy * inv))))

    target = min(target, MAX_PAIR_MI * r)
    lo, hi = -8.0, 10.0                       # MI decreases in the noise scale s
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mi(mid) > target:
            lo = mid
        else:
            hi = mid
    f = build(0.5 * (lo + hi))
    return LinearGaussian(f, dim_x, mean=rng.normal(0.0, 1.0, dim_x + dim_y))


def build_gaussian(structure: str, dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> LinearGaussian:
    """A Gaussian sampler of the given structure aiming at ``target`` nats (clipped to capacity)."""
    if structure not in GAUSSIAN_STRUCTURES:
        raise ValueError(f"unknown Gaussian structure {structure!r}")
    target = max(0.0, min(float(target), gaussian_capacity(structure, dim_x, dim_y)))
    if structure == "latent":
        return _latent(dim_x, dim_y, target, rng)
    k = min(dim_x, dim_y)
    need = max(1, math.ceil(target / MAX_PAIR_MI - 1e-9))
    if structure == "dense":
        pairs, uneven = k, False
    elif structure == "random":
        pairs, uneven = k, True
    elif structure == "two_pair":
        pairs, uneven = min(k, 2), True
    else:  # sparse: a few pairs, but enough to carry the target
        few = max(1, min(3, k // 3))
        pairs, uneven = min(k, max(need, int(rng.integers(1, few + 1)))), True
    shares = split_mi(target, pairs, rng, uneven=uneven)
    rho = rho_from_mi(shares) * rng.choice([-1.0, 1.0], size=pairs)
    order = rng.permutation(k)[:pairs]         # which canonical coordinates are coupled
    full = np.zeros(k)
    full[order] = rho
    factor = canonical_factor(full, dim_x, dim_y, random_invertible(dim_x, rng), random_invertible(dim_y, rng))
    return LinearGaussian(factor, dim_x, mean=rng.normal(0.0, 1.0, dim_x + dim_y), mi=mi_from_rho(full))
