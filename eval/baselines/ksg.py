"""Kraskov-Stoegbauer-Grassberger (KSG) mutual-information estimator, algorithm 1.

Kraskov, Stoegbauer, Grassberger, "Estimating mutual information", Phys. Rev. E 69,
066138 (2004), eq. (8):

    I = psi(k) + psi(n) - < psi(n_x(i) + 1) + psi(n_y(i) + 1) >_i

where eps_i is the max-norm distance from sample i to its k-th nearest neighbour in the
joint space (z = (x, y), max-norm over all coordinates), and n_x(i) (n_y(i)) counts the
other samples strictly closer than eps_i to sample i in the x (y) space, also in the
max-norm. Each column is standardised first and a tiny Gaussian jitter (1e-10 by default,
seeded) breaks ties, as Kraskov et al. recommend. Neighbour search and counting use
scipy's cKDTree: O(n log n) per dimension-bounded query, vectorised over samples.

KSG cannot exceed about psi(n) - psi(k) (roughly log n) and is biased low at high MI;
it is a point estimator (use eval.baselines.bootstrap for intervals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma

from .interface import as_pair, point_quantiles, standardise


def ksg_prepare(x: np.ndarray, y: np.ndarray, *, jitter: float = 1e-10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standardise every column of x (n, dx) and y (n, dy) and add seeded N(0, jitter^2) noise.

    Returns float64 arrays with the input shapes.
    """
    x, y = as_pair(x, y)
    xs, ys = standardise(x), standardise(y)
    if jitter > 0:
        rng = np.random.default_rng(seed)
        xs = xs + jitter * rng.standard_normal(xs.shape)
        ys = ys + jitter * rng.standard_normal(ys.shape)
    return xs, ys


def ksg_neighbour_counts(xs: np.ndarray, ys: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KSG-1 neighbour statistics for prepared data xs (n, dx), ys (n, dy).

    Returns (eps, n_x, n_y): eps (n,) the max-norm distance to the k-th nearest
    neighbour in the joint space, and n_x, n_y (n,) int64 the number of other samples
    at max-norm distance strictly below eps in the x and y spaces.
    """
    n = xs.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"KSG needs 1 <= k < n, got k={k}, n={n}")
    z = np.hstack([xs, ys])
    # k + 1 neighbours: the sample itself is among those at distance 0.
    dist, _ = cKDTree(z).query(z, k=k + 1, p=np.inf)
    eps = dist[:, k]
    # "strictly closer than eps" == "within the largest float below eps".
    radius = np.nextafter(eps, 0.0)
    positive = eps > 0
    counts = []
    for part in (xs, ys):
        c = np.zeros(n, dtype=np.int64)
        if positive.any():
            found = cKDTree(part).query_ball_point(part[positive], radius[positive], p=np.inf, return_length=True)
            c[positive] = np.asarray(found, dtype=np.int64) - 1  # drop the sample itself
        counts.append(c)
    return eps, counts[0], counts[1]


def ksg_mi_prepared(xs: np.ndarray, ys: np.ndarray, k: int = 3) -> float:
    """KSG-1 MI in nats of already prepared (standardised, jittered) data; may be negative."""
    n = xs.shape[0]
    _, n_x, n_y = ksg_neighbour_counts(xs, ys, k)
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_x + 1) + digamma(n_y + 1)))


def ksg_mi(x: np.ndarray, y: np.ndarray, k: int = 3, *, jitter: float = 1e-10, seed: int = 0) -> float:
    """KSG-1 estimate of I(X;Y) in nats from x (n, dx), y (n, dy); raw, may be negative.

    Columns are standardised and jittered by `jitter` (seeded by `seed`) first.
    Raises ValueError if n <= k or the input is malformed.
    """
    xs, ys = ksg_prepare(x, y, jitter=jitter, seed=seed)
    return ksg_mi_prepared(xs, ys, k)


@dataclass
class KSGEstimator:
    """KSG-1 point estimator (MI in nats).

    `clip_negative` (default True) reports max(estimate, 0), since MI >= 0 is known;
    `ksg_mi` gives the raw value.
    """

    k: int = 3
    seed: int = 0
    jitter: float = 1e-10
    clip_negative: bool = True
    name: str = "ksg"
    has_interval: bool = False

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        """MI point estimate in nats."""
        mi = ksg_mi(x, y, self.k, jitter=self.jitter, seed=self.seed)
        return max(mi, 0.0) if self.clip_negative else mi

    def estimate_quantiles(self, x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        """(Q,) array holding the point estimate at every level (no interval)."""
        return point_quantiles(self.estimate(x, y), levels)
