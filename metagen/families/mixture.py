"""(X, Y) jointly a mixture of K Gaussians; MI by Monte Carlo with a standard error.

p(x, y) = sum_j w_j N((x, y); m_j, C_j); the marginals are the mixtures of the
marginal components, so log p(x, y), log p(x), log p(y) are log-sum-exps of Gaussian
log densities and I = E[log p(x, y) - log p(x) - log p(y)] is estimated on a fresh
sample of ``mc_samples`` points (more when needed for ``mi_stderr`` <= 0.01 nats),
drawn from a seed fixed at construction: deterministic, computed once, lazily.

High dims: a core of at most 4 + 4 coordinates carries the mixture; the remaining
coordinates are independent N(0, 1) noise (MI unchanged), permuted in.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from metagen.families.common import MAX_PAIR_MI, mvn_logpdf, random_invertible, rho_from_mi, split_mi
from metagen.families.gaussian import canonical_factor
from metagen.sampler import IndependentBlocks, NoiseSampler, Sampler, as_2d

__all__ = ["GaussianMixture", "build_mixture", "mixture_capacity", "CORE_MAX"]

CORE_MAX = 4                  # largest core dims per side
TARGET_STDERR = 0.01          # nats


class GaussianMixture:
    """Mixture of K joint Gaussians in dim_x + dim_y dims; MI by Monte Carlo (lazy, cached)."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covs: np.ndarray, dim_x: int, mc_seed: int,
                 mc_samples: int = 20_000, max_mc_samples: int = 200_000):
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)   # (K,)
        self.means = np.asarray(means, dtype=np.float64)                          # (K, d)
        self.covs = np.asarray(covs, dtype=np.float64)                            # (K, d, d)
        self.dim_x = int(dim_x)
        self.dim_y = self.means.shape[1] - self.dim_x
        self.chols = np.linalg.cholesky(self.covs)
        self.mc_seed = int(mc_seed)
        self.mc_samples = int(mc_samples)
        self.max_mc_samples = int(max_mc_samples)
        self._mi: tuple[float, float] | None = None

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim_x), (n, dim_y) float64."""
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        g = rng.standard_normal((n, self.means.shape[1]))
        z = np.einsum("nij,nj->ni", self.chols[comp], g) + self.means[comp]
        return z[:, :self.dim_x], z[:, self.dim_x:]

    def _mix_logpdf(self, a: np.ndarray, sl: slice) -> np.ndarray:
        logs = np.stack([np.log(w) + mvn_logpdf(a, m[sl], c[sl, sl])
                         for w, m, c in zip(self.weights, self.means, self.covs)])
        return logsumexp(logs, axis=0)

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._mix_logpdf(np.concatenate([as_2d(x), as_2d(y)], axis=1), slice(None))

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        return self._mix_logpdf(as_2d(x), slice(0, self.dim_x))

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        return self._mix_logpdf(as_2d(y), slice(self.dim_x, None))

    def _estimate(self) -> tuple[float, float]:
        rng = np.random.default_rng(self.mc_seed)
        vals: list[np.ndarray] = []
        n = self.mc_samples
        while True:
            x, y = self.sample(n, rng)
            vals.append(self.log_density(x, y) - self.log_density_x(x) - self.log_density_y(y))
            v = np.concatenate(vals)
            se = float(np.std(v) / math.sqrt(len(v)))
            if se <= TARGET_STDERR or len(v) >= self.max_mc_samples:
                return float(np.mean(v)), se
            want = int((np.std(v) / TARGET_STDERR) ** 2 * 1.1) - len(v)
            n = int(min(max(want, 1000), self.max_mc_samples - len(v)))

    def mutual_information(self) -> float:
        """Monte Carlo estimate of I(X; Y) in nats (computed once)."""
        if self._mi is None:
            self._mi = self._estimate()
        return self._mi[0]

    @property
    def mi_stderr(self) -> float:
        """Standard error of the Monte Carlo MI (nats)."""
        if self._mi is None:
            self._mi = self._estimate()
        return self._mi[1]


def mixture_capacity(dim_x: int, dim_y: int) -> float:
    """Rough largest MI (nats) the builder aims at."""
    return MAX_PAIR_MI * min(dim_x, dim_y, CORE_MAX)


def build_mixture(dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> Sampler:
    """K in {2, 3, 4} Gaussian components in a core of min(d, 4) coordinates per side;
    each component has its own canonical correlations (a random share of the target)
    and random linear maps; means spread with a random scale. The MI is not exactly the
    target: it is whatever the Monte Carlo estimate says."""
    cx, cy = min(dim_x, CORE_MAX), min(dim_y, CORE_MAX)
    d = cx + cy
    k = min(cx, cy)
    target = max(0.0, min(float(target), mixture_capacity(dim_x, dim_y)))
    ncomp = int(rng.integers(2, 5))
    spread = rng.uniform(0.5, 3.0)
    means = rng.normal(0.0, spread, (ncomp, d))
    covs = np.empty((ncomp, d, d))
    for j in range(ncomp):
        shares = split_mi(target * rng.uniform(0.5, 1.0), k, rng, uneven=True)
        rho = rho_from_mi(shares) * rng.choice([-1.0, 1.0], size=k)
        f = canonical_factor(rho, cx, cy, random_invertible(cx, rng, 4.0), random_invertible(cy, rng, 4.0))
        covs[j] = f @ f.T + 1e-9 * np.eye(d)
    weights = rng.dirichlet(np.full(ncomp, 2.0))
    core = GaussianMixture(weights, means, covs, cx, mc_seed=int(rng.integers(0, 2**63 - 1)))
    if cx == dim_x and cy == dim_y:
        return core
    return IndependentBlocks([core, NoiseSampler(dim_x - cx, dim_y - cy)], rng)
