"""The estimator interface shared by the baselines, the model adapter and the harness.

Every estimator is an object with

    name: str                      short identifier used in reports ("ksg", "gaussian", ...)
    has_interval: bool             False for point estimators
    estimate(x, y) -> float        MI point estimate in nats (bmi-style)
    estimate_quantiles(x, y, levels) -> np.ndarray   (Q,) MI quantiles in nats

A point estimator returns its point estimate at every level; the harness reads
`has_interval` and does not score intervals for it. Every estimator is
deterministic given its constructor seed and the data.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Estimator(Protocol):
    """What the harness needs from an MI estimator (MI in nats)."""

    name: str
    has_interval: bool

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float: ...

    def estimate_quantiles(self, x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray: ...


def as_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a sample pair and return float64 arrays x (n, dx), y (n, dy).

    A 1-D array is one column. Raises ValueError on mismatched n, wrong ndim,
    non-numeric dtype or non-finite values.
    """
    arrays = []
    for label, a in (("x", x), ("y", y)):
        a = np.asarray(a)
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{label} must be numeric, got dtype {a.dtype}")
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(f"{label} must have shape (n,) or (n, d), got {a.shape}")
        a = a.astype(np.float64, copy=False)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{label} contains NaN or inf")
        arrays.append(a)
    x2, y2 = arrays
    if x2.shape[0] != y2.shape[0]:
        raise ValueError(f"x and y must have the same number of rows, got {x2.shape[0]} and {y2.shape[0]}")
    return x2, y2


def check_levels(levels: Sequence[float]) -> np.ndarray:
    """Return levels as a float64 (Q,) array; raise ValueError unless all lie in (0, 1)."""
    lv = np.asarray(levels, dtype=np.float64).reshape(-1)
    if lv.size == 0 or np.any(~(lv > 0)) or np.any(~(lv < 1)):
        raise ValueError(f"quantile levels must lie in (0, 1), got {lv.tolist()}")
    return lv


def point_quantiles(value: float, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of a point estimator: the point estimate at every level, shape (Q,)."""
    lv = check_levels(levels)
    return np.full(lv.shape, float(value))


def standardise(a: np.ndarray) -> np.ndarray:
    """Centre each column and scale it to unit standard deviation; constant columns become 0."""
    a = a - a.mean(axis=0, keepdims=True)
    sd = a.std(axis=0, keepdims=True)
    return np.divide(a, sd, out=np.zeros_like(a), where=sd > 0)
