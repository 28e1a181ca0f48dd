"""Shared pieces of the families: the per-pair MI cap, MI splitting, random linear maps and
multivariate normal / Student-t log densities."""
from __future__ import annotations

import numpy as np
from scipy.special import gammaln

__all__ = ["MAX_PAIR_MI", "split_mi", "rho_from_mi", "mi_from_rho", "random_invertible",
           "mvn_logpdf", "mvt_logpdf", "gaussian_mi_from_cov"]

# Largest MI (nats) put on one coupled coordinate pair: 1 - rho^2 = exp(-12), so the
# noise is still ~1e-3 of the signal and survives the float32 cast of the samples.
MAX_PAIR_MI = 6.0


def mi_from_rho(rho: np.ndarray) -> float:
    """Gaussian MI of canonical correlations rho: -1/2 sum log(1 - rho_k^2), nats."""
    rho = np.asarray(rho, dtype=np.float64)
    return float(-0.5 * np.sum(np.log1p(-rho * rho)))


def rho_from_mi(mi: np.ndarray) -> np.ndarray:
    """Inverse of ``mi_from_rho`` per pair: rho = sqrt(1 - exp(-2 I))."""
    mi = np.asarray(mi, dtype=np.float64)
    return np.sqrt(-np.expm1(-2.0 * mi))


def split_mi(target: float, k: int, rng: np.random.Generator, *, uneven: bool, cap: float = MAX_PAIR_MI) -> np.ndarray:
    """Split ``target`` nats over k pairs, each <= cap (target is clipped to k * cap).

    Equal shares when ``uneven`` is False, otherwise Dirichlet(1) shares; shares over the
    cap are clipped and the excess is redistributed (water filling). Returns (k,) >= 0.
    """
    target = min(float(target), k * cap)
    w = rng.dirichlet(np.ones(k)) if uneven else np.full(k, 1.0 / k)
    share = target * w
    for _ in range(4 * k + 4):
        over = share > cap
        if not over.any():
            break
        excess = float(np.sum(share[over] - cap))
        share[over] = cap
        free = share < cap
        share[free] += excess * w[free] / w[free].sum()
    return np.minimum(share, cap)


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random (d, d) orthogonal matrix."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_invertible(d: int, rng: np.random.Generator, cond: float = 10.0) -> np.ndarray:
    """A random (d, d) matrix Q1 diag(s) Q2 with singular values log-uniform in
    [cond^-1/2, cond^1/2], so its condition number is at most ``cond``."""
    s = np.exp(rng.uniform(-0.5, 0.5, size=d) * np.log(cond))
    return (random_orthogonal(d, rng) * s) @ random_orthogonal(d, rng)


def gaussian_mi_from_cov(cov: np.ndarray, dim_x: int) -> float:
    """I(X; Y) of a joint Gaussian with covariance ``cov`` (d, d): 1/2 [log|Sxx| + log|Syy| - log|S|]."""
    _, lx = np.linalg.slogdet(cov[:dim_x, :dim_x])
    _, ly = np.linalg.slogdet(cov[dim_x:, dim_x:])
    _, lj = np.linalg.slogdet(cov)
    return float(0.5 * (lx + ly - lj))


def _maha(a: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, float]:
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (a - mean).T)                 # (d, n)
    return np.sum(z * z, axis=0), float(2.0 * np.sum(np.log(np.diag(chol))))


def mvn_logpdf(a: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(a; mean, cov) for a (n, d): (n,)."""
    q, logdet = _maha(a, mean, cov)
    d = a.shape[1]
    return -0.5 * (q + logdet + d * np.log(2 * np.pi))


def mvt_logpdf(a: np.ndarray, mean: np.ndarray, scale: np.ndarray, nu: float) -> np.ndarray:
    """log density of a multivariate Student-t (dof nu, scale matrix ``scale``) at a (n, d): (n,)."""
    q, logdet = _maha(a, mean, scale)
    d = a.shape[1]
    return (gammaln((nu + d) / 2) - gammaln(nu / 2) - 0.5 * d * np.log(nu * np.pi) - 0.5 * logdet
            - 0.5 * (nu + d) * np.log1p(q / nu))
