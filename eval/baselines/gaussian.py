"""Gaussian / CCA baseline after the copula transform.

Each column is replaced by its normal scores (average ranks r in 1..n mapped to
Phi^{-1}(r / (n + 1))), which makes the estimate invariant to coordinate-wise strictly
increasing maps. Then the canonical correlations r_k between the X and Y score blocks
give the MI of a Gaussian with those canonical correlations:

    I = -1/2 * sum_k log(1 - r_k^2)      (nats)

This is exact in the large-n limit for any Gaussian copula (a Gaussian pushed through
coordinate-wise monotone maps) and blind to non-Gaussian dependence (e.g. a curve
embedded in 2-D). When n <= dx + dy + 1 the sample canonical correlations are forced
to 1; each r_k is capped at `r_max` (default 1 - 1e-12, about 13.5 nats per pair), so the
answer is then large and meaningless rather than infinite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import ndtri
from scipy.stats import rankdata

from .interface import as_pair, point_quantiles

R_MAX = 1.0 - 1e-12


def normal_scores(a: np.ndarray) -> np.ndarray:
    """Per-column copula transform of a (n, d): average ranks -> standard normal quantiles.

    Ties share their average rank; a constant column becomes all zeros.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    n = a.shape[0]
    ranks = rankdata(a, axis=0, method="average")
    return ndtri(ranks / (n + 1.0))


def _orthonormal_basis(a: np.ndarray, rtol: float) -> np.ndarray:
    """Orthonormal basis (n, r) of the column space of the centred a (n, d); r may be 0."""
    ac = a - a.mean(axis=0, keepdims=True)
    if ac.size == 0:
        return ac[:, :0]
    u, s, _ = np.linalg.svd(ac, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return ac[:, :0]
    keep = s > rtol * s[0]
    return u[:, keep]


def canonical_correlations(a: np.ndarray, b: np.ndarray, *, rtol: float = 1e-10) -> np.ndarray:
    """Sample canonical correlations of a (n, da) and b (n, db), sorted descending, in [0, 1].

    Computed as the singular values of Qa^T Qb, with Qa, Qb orthonormal bases of the
    centred columns (directions with singular value below rtol * largest are dropped,
    so constant or collinear columns do not crash). Shape (min(rank a, rank b),).
    """
    qa = _orthonormal_basis(np.asarray(a, dtype=np.float64), rtol)
    qb = _orthonormal_basis(np.asarray(b, dtype=np.float64), rtol)
    if qa.shape[1] == 0 or qb.shape[1] == 0:
        return np.zeros(0)
    r = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.clip(r, 0.0, 1.0)


def gaussian_mi_from_correlations(r: np.ndarray, r_max: float = R_MAX) -> float:
    """-1/2 sum log(1 - r_k^2) in nats, with every r_k capped at r_max."""
    r = np.minimum(np.asarray(r, dtype=np.float64), r_max)
    return float(-0.5 * np.sum(np.log1p(-(r**2))))


def gaussian_copula_mi(x: np.ndarray, y: np.ndarray, *, copula: bool = True, r_max: float = R_MAX) -> float:
    """Gaussian(-copula) MI in nats of x (n, dx), y (n, dy); >= 0.

    copula=True (default) applies the normal-score transform first; copula=False uses the
    raw values (the MI of a Gaussian with the sample covariance).
    """
    x, y = as_pair(x, y)
    if x.shape[0] < 3:
        raise ValueError(f"the Gaussian baseline needs n >= 3, got n={x.shape[0]}")
    if copula:
        x, y = normal_scores(x), normal_scores(y)
    return gaussian_mi_from_correlations(canonical_correlations(x, y), r_max)


@dataclass
class GaussianCopulaEstimator:
    """Gaussian-copula / CCA point estimator (MI in nats); deterministic, `seed` unused."""

    copula: bool = True
    r_max: float = R_MAX
    seed: int = 0
    name: str = "gaussian"
    has_interval: bool = False

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        """MI point estimate in nats."""
        return gaussian_copula_mi(x, y, copula=self.copula, r_max=self.r_max)

    def estimate_quantiles(self, x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        """(Q,) array holding the point estimate at every level (no interval)."""
        return point_quantiles(self.estimate(x, y), levels)
