"""One-dimensional (X, Y) pairs with closed-form MI, and their replication to any dims.

additive_uniform   X ~ U(0, 1), Y = X + a U, U ~ U(0, 1). h(Y|X) = log a and Y has a
                   trapezoid density: h(Y) = a/2 (a <= 1) or log a + 1/(2a) (a > 1), so
                   I = a/2 - log a (a <= 1), 1/(2a) (a > 1).
bimodal            (T, S) bivariate normal with correlation rho; X = g(T), Y = g'(S) with
                   g(t) = t + c tanh(k t) (strictly increasing, g' >= 1), which carves a
                   low-density valley at 0 and gives bimodal marginals. Injective maps
                   keep the MI: I = -1/2 log(1 - rho^2).
staircase          a bin J ~ p over {0, ..., k-1}; X = J + U1, Y = J + U2 with U1, U2 ~
                   U(0, 1) independent. X and Y are independent given J and J is a function
                   of either, so I(X; Y) = H(J) = -sum p_j log p_j.

``build_pairs`` puts m such pairs (enough for the target) into dims (dx, dy), pads
with independent normal coordinates and permutes: MI adds over the pairs.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import log_ndtr

from metagen.families.common import MAX_PAIR_MI, split_mi
from metagen.sampler import IndependentBlocks, NoiseSampler, Sampler, as_2d

__all__ = ["AdditiveUniform", "Bimodal", "Staircase", "additive_uniform_mi", "build_additive_uniform",
           "build_bimodal", "build_staircase", "build_pairs", "ONE_D_BUILDERS"]


def additive_uniform_mi(a: float) -> float:
    """I(X; X + a U) for X, U ~ U(0, 1), nats."""
    return a / 2 - math.log(a) if a <= 1 else 1 / (2 * a)


class AdditiveUniform:
    """X ~ U(0, 1), Y = X + a U: exact MI ``additive_uniform_mi(a)``."""

    dim_x = dim_y = 1
    mi_stderr = 0.0

    def __init__(self, a: float):
        self.a = float(a)

    def mutual_information(self) -> float:
        return additive_uniform_mi(self.a)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(0.0, 1.0, (n, 1))
        return x, x + self.a * rng.uniform(0.0, 1.0, (n, 1))

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = as_2d(x)[:, 0], as_2d(y)[:, 0]
        inside = (x >= 0) & (x <= 1) & (y >= x) & (y <= x + self.a)
        return np.where(inside, -math.log(self.a), -np.inf)

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        x = as_2d(x)[:, 0]
        return np.where((x >= 0) & (x <= 1), 0.0, -np.inf)

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        y = as_2d(y)[:, 0]
        overlap = np.clip(np.minimum(y, 1.0) - np.maximum(y - self.a, 0.0), 0.0, None)   # |[0,1] n [y-a, y]|
        with np.errstate(divide="ignore"):
            return np.log(overlap / self.a)


def build_additive_uniform(target: float, rng: np.random.Generator) -> AdditiveUniform:
    """Solve a for the target MI (clipped to [1e-6, MAX_PAIR_MI])."""
    target = min(max(float(target), 1e-6), MAX_PAIR_MI)
    if target < 0.5:
        return AdditiveUniform(1.0 / (2.0 * target))
    lo, hi = math.log(1e-8), 0.0                 # a/2 - log a decreases on (0, 1]
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if additive_uniform_mi(math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return AdditiveUniform(math.exp(0.5 * (lo + hi)))


class Bimodal:
    """(g1(T), g2(S)) with (T, S) standard bivariate normal (correlation rho) and
    g_i(t) = t + c_i tanh(k_i t); exact MI -1/2 log(1 - rho^2)."""

    dim_x = dim_y = 1
    mi_stderr = 0.0

    def __init__(self, rho: float, c: tuple[float, float], k: tuple[float, float]):
        self.rho = float(rho)
        self.c = tuple(float(v) for v in c)
        self.k = tuple(float(v) for v in k)

    def mutual_information(self) -> float:
        return float(-0.5 * math.log1p(-self.rho ** 2))

    def _g(self, t: np.ndarray, i: int) -> np.ndarray:
        return t + self.c[i] * np.tanh(self.k[i] * t)

    def _log_dg(self, t: np.ndarray, i: int) -> np.ndarray:
        return np.log1p(self.c[i] * self.k[i] / np.cosh(self.k[i] * t) ** 2)

    def _g_inv(self, z: np.ndarray, i: int) -> np.ndarray:
        lo, hi = z - self.c[i], z + self.c[i]    # g(t) - t in (-c, c)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            up = self._g(mid, i) < z
            lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
        return 0.5 * (lo + hi)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        t = rng.standard_normal((n, 1))
        s = self.rho * t + math.sqrt(1 - self.rho ** 2) * rng.standard_normal((n, 1))
        return self._g(t, 0), self._g(s, 1)

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t, s = self._g_inv(as_2d(x)[:, 0], 0), self._g_inv(as_2d(y)[:, 0], 1)
        r2 = 1 - self.rho ** 2
        q = (t * t - 2 * self.rho * t * s + s * s) / r2
        return -0.5 * q - math.log(2 * math.pi) - 0.5 * math.log(r2) - self._log_dg(t, 0) - self._log_dg(s, 1)

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        t = self._g_inv(as_2d(x)[:, 0], 0)
        return -0.5 * t * t - 0.5 * math.log(2 * math.pi) - self._log_dg(t, 0)

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        s = self._g_inv(as_2d(y)[:, 0], 1)
        return -0.5 * s * s - 0.5 * math.log(2 * math.pi) - self._log_dg(s, 1)


def build_bimodal(target: float, rng: np.random.Generator) -> Bimodal:
    """rho from the target (clipped to MAX_PAIR_MI); c in [1.5, 4], k in [2, 6] per side."""
    target = min(max(float(target), 0.0), MAX_PAIR_MI)
    rho = math.sqrt(-math.expm1(-2 * target)) * rng.choice([-1.0, 1.0])
    return Bimodal(rho, tuple(rng.uniform(1.5, 4.0, 2)), tuple(rng.uniform(2.0, 6.0, 2)))


class Staircase:
    """Bin J ~ p, X = J + U1, Y = J + U2: exact MI H(p) (nats)."""

    dim_x = dim_y = 1
    mi_stderr = 0.0

    def __init__(self, p: np.ndarray):
        p = np.asarray(p, dtype=np.float64)
        self.p = p / p.sum()
        self._logp = np.log(np.where(self.p > 0, self.p, 1.0))

    def mutual_information(self) -> float:
        nz = self.p > 0
        return float(-np.sum(self.p[nz] * np.log(self.p[nz])))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        j = rng.choice(len(self.p), size=(n, 1), p=self.p).astype(np.float64)
        return j + rng.uniform(0.0, 1.0, (n, 1)), j + rng.uniform(0.0, 1.0, (n, 1))

    def _bin_logp(self, a: np.ndarray) -> np.ndarray:
        a = as_2d(a)[:, 0]
        j = np.floor(a).astype(np.int64)
        ok = (j >= 0) & (j < len(self.p))
        out = np.full(a.shape, -np.inf)
        out[ok] = np.where(self.p[j[ok]] > 0, self._logp[j[ok]], -np.inf)
        return out, j

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        lx, jx = self._bin_logp(x)
        _, jy = self._bin_logp(y)
        return np.where(jx == jy, lx, -np.inf)

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        return self._bin_logp(x)[0]

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        return self._bin_logp(y)[0]


def _entropy(logits: np.ndarray) -> float:
    z = logits - logits.max()
    p = np.exp(z)
    p /= p.sum()
    nz = p > 0
    return float(-np.sum(p[nz] * np.log(p[nz])))


def build_staircase(target: float, rng: np.random.Generator) -> Staircase:
    """k bins (log k a bit above the target), p_j ∝ exp(-beta r_j) with a random profile r
    and beta solved so that H(p) = target (clipped to MAX_PAIR_MI)."""
    target = min(max(float(target), 0.0), MAX_PAIR_MI)
    k = int(min(2000, max(2, math.ceil(math.exp(target) * rng.uniform(1.2, 3.0)))))
    r = rng.uniform(0.0, 1.0, k)
    lo, hi = 0.0, 1e5                         # H decreases in beta
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _entropy(-mid * r) > target:
            lo = mid
        else:
            hi = mid
    z = -0.5 * (lo + hi) * r
    p = np.exp(z - z.max())
    return Staircase(p / p.sum())


ONE_D_BUILDERS: dict[str, Callable[[float, np.random.Generator], Sampler]] = {
    "additive_uniform": build_additive_uniform,
    "bimodal": build_bimodal,
    "staircase": build_staircase,
}


def build_pairs(name: str, dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> Sampler:
    """m independent 1-D pairs of family ``name`` carrying ``target`` nats (clipped to
    MAX_PAIR_MI * min(dx, dy)), padded with N(0, 1) noise coordinates, coordinates permuted."""
    k = min(dim_x, dim_y)
    target = max(0.0, min(float(target), MAX_PAIR_MI * k))
    need = max(1, math.ceil(target / MAX_PAIR_MI - 1e-9))
    m = int(rng.integers(need, min(k, need + 2) + 1))
    shares = split_mi(target, m, rng, uneven=True)
    build = ONE_D_BUILDERS[name]
    blocks: list[Sampler] = [build(s, rng) for s in shares]
    if dim_x > m or dim_y > m:
        blocks.append(NoiseSampler(dim_x - m, dim_y - m))
    if len(blocks) == 1:
        return blocks[0]
    return IndependentBlocks(blocks, rng)
