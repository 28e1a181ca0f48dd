"""Percentile-bootstrap intervals around a point estimator.

Rows are resampled with replacement `n_boot` times (default 50, seeded); the quantiles
of the replicate estimates are the interval.

Resampling with replacement duplicates rows, and a nearest-neighbour estimator such as
KSG reads duplicates as near-perfect dependence, so its replicates are biased upward.
With `recentre=True` (default) the replicate distribution is shifted so its median is the
point estimate on the original sample: the interval keeps the bootstrap's spread but is
centred where the estimator is. Quantiles are clipped at 0 (MI >= 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .interface import Estimator, as_pair, check_levels


def bootstrap_replicates(
    estimate: Callable[[np.ndarray, np.ndarray], float],
    x: np.ndarray,
    y: np.ndarray,
    n_boot: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """Estimates (n_boot,) in nats on `n_boot` row resamples (with replacement) of x (n, dx), y (n, dy)."""
    x, y = as_pair(x, y)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    out = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        out[b] = estimate(x[idx], y[idx])
    return out


@dataclass
class BootstrapEstimator:
    """Interval estimator: a point estimator plus percentile-bootstrap quantiles (nats)."""

    base: Estimator
    n_boot: int = 50
    seed: int = 0
    recentre: bool = True
    name: str = ""
    has_interval: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.base.name}_boot"

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        """The base estimator's point estimate on the original sample (nats)."""
        return float(self.base.estimate(x, y))

    def estimate_quantiles(self, x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        """(Q,) non-decreasing, non-negative bootstrap quantiles in nats at `levels`."""
        lv = check_levels(levels)
        reps = bootstrap_replicates(self.base.estimate, x, y, self.n_boot, self.seed)
        q = np.quantile(reps, lv)
        if self.recentre:
            q = q + (self.estimate(x, y) - np.median(reps))
        return np.maximum.accumulate(np.maximum(q, 0.0))
