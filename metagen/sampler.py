"""The sampler interface (bmi-style) and the two ways samplers compose.

A sampler is a joint distribution of (X, Y) with known mutual information:

    sample(n, rng) -> (x, y)    float64 arrays (n, dim_x), (n, dim_y)
    mutual_information()        MI in nats (exact, or a Monte Carlo estimate)
    mi_stderr                   standard error of that MI (0.0 when exact)

Families with a tractable density also offer ``log_density(x, y)``,
``log_density_x(x)`` and ``log_density_y(y)``, each returning (n,) natural logs;
the tests use them for an independent Monte Carlo check of the MI.

Every random choice comes from an explicit ``np.random.Generator``; nothing here
touches global random state.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Sampler", "Map", "TransformedSampler", "IndependentBlocks", "IndependentPair", "NoiseSampler",
           "as_2d"]


@runtime_checkable
class Sampler(Protocol):
    """A joint distribution of (X, Y) with known MI (nats)."""

    dim_x: int
    dim_y: int
    mi_stderr: float

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw n i.i.d. pairs: float64 arrays (n, dim_x), (n, dim_y)."""
        ...

    def mutual_information(self) -> float:
        """I(X; Y) in nats."""
        ...


class Map(Protocol):
    """A fixed injective map of (n, d) arrays to (n, d_out) arrays, d_out >= d."""

    dim_in: int
    dim_out: int

    def forward(self, x: np.ndarray) -> np.ndarray:
        ...


def as_2d(a: np.ndarray) -> np.ndarray:
    """A 1-D array becomes one column; 2-D arrays pass through."""
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


class TransformedSampler:
    """(f(X), g(Y)) for a base sampler of (X, Y) and fixed injective maps f, g.

    Why the MI is unchanged: for measurable injective maps with measurable inverses on
    their images (every invertible map and every embedding in ``metagen.transforms``),
    X and f(X) generate the same sigma-algebra, so I(f(X); g(Y)) = I(X; Y) (data
    processing inequality applied in both directions: f^{-1}(f(X)) = X). The maps
    are drawn once when the task is built and do not depend on the sample.
    ``None`` means the identity on that side.
    """

    def __init__(self, base: Sampler, x_map: Map | None = None, y_map: Map | None = None):
        self.base = base
        self.x_map = x_map
        self.y_map = y_map
        if x_map is not None and x_map.dim_in != base.dim_x:
            raise ValueError(f"x_map expects dim {x_map.dim_in}, base has dim_x {base.dim_x}")
        if y_map is not None and y_map.dim_in != base.dim_y:
            raise ValueError(f"y_map expects dim {y_map.dim_in}, base has dim_y {base.dim_y}")
        self.dim_x = x_map.dim_out if x_map is not None else base.dim_x
        self.dim_y = y_map.dim_out if y_map is not None else base.dim_y

    @property
    def mi_stderr(self) -> float:
        return self.base.mi_stderr

    def mutual_information(self) -> float:
        """MI of the base sampler (nats): injective maps leave it unchanged."""
        return self.base.mutual_information()

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Base sample pushed through the maps: (n, dim_x), (n, dim_y) float64."""
        x, y = self.base.sample(n, rng)
        if self.x_map is not None:
            x = self.x_map.forward(x)
        if self.y_map is not None:
            y = self.y_map.forward(y)
        return x, y


class IndependentBlocks:
    """Independent (X_b, Y_b) blocks; X = concat of the X_b, Y likewise, coordinates permuted.

    MI adds over independent blocks: with the pairs (X_b, Y_b) mutually independent,
    p(x, y) = prod_b p(x_b, y_b) and p(x) = prod_b p(x_b), so
    I(X; Y) = sum_b I(X_b; Y_b). A fixed coordinate permutation is a bijection, so it
    changes nothing. Blocks may have dim_x = 0 or dim_y = 0 (pure noise on one side).
    Standard errors of Monte Carlo block MIs add in quadrature.
    """

    def __init__(self, blocks: Sequence[Sampler], rng: np.random.Generator | None = None):
        if not blocks:
            raise ValueError("IndependentBlocks needs at least one block")
        self.blocks = list(blocks)
        self.dim_x = sum(b.dim_x for b in self.blocks)
        self.dim_y = sum(b.dim_y for b in self.blocks)
        if rng is None:
            self.perm_x = np.arange(self.dim_x)
            self.perm_y = np.arange(self.dim_y)
        else:
            self.perm_x = rng.permutation(self.dim_x)
            self.perm_y = rng.permutation(self.dim_y)
        self._inv_x = np.argsort(self.perm_x)
        self._inv_y = np.argsort(self.perm_y)

    @property
    def mi_stderr(self) -> float:
        return float(np.sqrt(sum(b.mi_stderr ** 2 for b in self.blocks)))

    def mutual_information(self) -> float:
        """Sum of the blocks' MI (nats)."""
        return float(sum(b.mutual_information() for b in self.blocks))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Blocks sampled in order from ``rng``, concatenated and permuted: (n, dim_x), (n, dim_y)."""
        xs, ys = [], []
        for b in self.blocks:
            x, y = b.sample(n, rng)
            xs.append(x)
            ys.append(y)
        x = np.concatenate(xs, axis=1)[:, self.perm_x]
        y = np.concatenate(ys, axis=1)[:, self.perm_y]
        return x, y

    def _split(self, a: np.ndarray, inv: np.ndarray, attr: str) -> list[np.ndarray]:
        a = as_2d(a)[:, inv]
        out, start = [], 0
        for b in self.blocks:
            d = getattr(b, attr)
            out.append(a[:, start:start + d])
            start += d
        return out

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """log p(x, y), (n,): sum of the blocks' joint log densities."""
        xs, ys = self._split(x, self._inv_x, "dim_x"), self._split(y, self._inv_y, "dim_y")
        total = 0.0
        for b, xb, yb in zip(self.blocks, xs, ys):
            if b.dim_x and b.dim_y:
                total = total + b.log_density(xb, yb)
            else:
                total = total + (b.log_density_x(xb) if b.dim_x else 0.0) + (b.log_density_y(yb) if b.dim_y else 0.0)
        return total

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        """log p(x), (n,)."""
        xs = self._split(x, self._inv_x, "dim_x")
        return sum(b.log_density_x(xb) for b, xb in zip(self.blocks, xs) if b.dim_x)

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        """log p(y), (n,)."""
        ys = self._split(y, self._inv_y, "dim_y")
        return sum(b.log_density_y(yb) for b, yb in zip(self.blocks, ys) if b.dim_y)


class IndependentPair:
    """X and Y independent, each with the marginal of a base sampler: MI = 0 exactly.

    x comes from one draw of the base and y from a second, independent draw, so the
    marginals are the base family's (heavy tails, bimodality, ...) while
    p(x, y) = p(x) p(y).
    """

    mi_stderr = 0.0

    def __init__(self, base: Sampler):
        self.base = base
        self.dim_x = base.dim_x
        self.dim_y = base.dim_y

    def mutual_information(self) -> float:
        return 0.0

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim_x), (n, dim_y) float64 from two independent base draws."""
        x, _ = self.base.sample(n, rng)
        _, y = self.base.sample(n, rng)
        return x, y

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        return self.base.log_density_x(x)

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        return self.base.log_density_y(y)

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.base.log_density_x(x) + self.base.log_density_y(y)


class NoiseSampler:
    """Independent standard normal coordinates on both sides (MI = 0); used as padding."""

    mi_stderr = 0.0

    def __init__(self, dim_x: int, dim_y: int):
        self.dim_x = int(dim_x)
        self.dim_y = int(dim_y)

    def mutual_information(self) -> float:
        return 0.0

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim_x), (n, dim_y) i.i.d. N(0, 1)."""
        return rng.standard_normal((n, self.dim_x)), rng.standard_normal((n, self.dim_y))

    @staticmethod
    def _logp(a: np.ndarray) -> np.ndarray:
        a = as_2d(a)
        return -0.5 * np.sum(a * a, axis=1) - 0.5 * a.shape[1] * np.log(2 * np.pi)

    def log_density_x(self, x: np.ndarray) -> np.ndarray:
        return self._logp(x)

    def log_density_y(self, y: np.ndarray) -> np.ndarray:
        return self._logp(y)

    def log_density(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self._logp(x) + self._logp(y)
