"""Invertible linear mixing x -> x A^T with a random well-conditioned A (MI unchanged)."""
from __future__ import annotations

import numpy as np

from metagen.families.common import random_invertible
from metagen.transforms.base import Transform

__all__ = ["LinearMix", "make_linear"]


class LinearMix(Transform):
    """y = x A^T, A (d, d) invertible."""

    name = "linear"

    def __init__(self, a: np.ndarray):
        self.a = np.asarray(a, dtype=np.float64)
        self.dim_in = self.dim_out = self.a.shape[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._check(x, self.dim_in) @ self.a.T

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.linalg.solve(self.a, self._check(y, self.dim_out).T).T


def make_linear(dim: int, rng: np.random.Generator, pilot: np.ndarray | None = None) -> LinearMix:
    """A random A with condition number <= 10 (``pilot`` unused)."""
    return LinearMix(random_invertible(dim, rng, cond=10.0))
