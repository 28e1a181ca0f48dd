"""Scores of MI estimates against known truth (all MI in nats), and the report's groupings.

Point errors (MAE, RMSE, bias = mean(estimate - truth)), coverage and mean width of
central quantile intervals, and the bucket labels the harness groups sets by.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Central intervals scored in the report, and the finer grid used for calibration curves.
CENTRAL_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9)
CALIBRATION_LEVELS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
# Quantile levels every estimator is asked for: 0.05, 0.10, ..., 0.95 (contains the
# bounds of every central interval above, and the median).
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))

N_BUCKETS: tuple[tuple[str, float], ...] = (("<=50", 50), ("51-200", 200), ("201-700", 700), ("701-2000", 2000), (">2000", math.inf))
DIMS_BUCKETS: tuple[tuple[str, float], ...] = (("<=5", 5), ("6-25", 25), (">25", math.inf))
# n / (dx + dy): "<=3" holds the near-minimum sets of the test configs (n barely above dx + dy)
ROWS_PER_DIM_BUCKETS: tuple[tuple[str, float], ...] = (("<=3", 3.0), ("3-10", 10.0), (">10", math.inf))
MI_BINS: tuple[tuple[str, float], ...] = (("0", 0.0), ("(0,1]", 1.0), ("(1,3]", 3.0), ("(3,8]", 8.0), ("(8,35]", 35.0), (">35", math.inf))
FAMILY_GROUPS: tuple[str, ...] = ("embeddings", "spirals", "flows", "heavy_tails", "dims>25")


def _bucket(value: float, table: Sequence[tuple[str, float]]) -> str:
    for label, upper in table:
        if value <= upper:
            return label
    return table[-1][0]


def n_bucket(n: int, fixed_values: Sequence[int] | None = None) -> str:
    """Label of sample size n: the exact value when the store uses a few fixed n, else a range."""
    if fixed_values is not None:
        return str(int(n))
    return _bucket(n, N_BUCKETS)


def dims_bucket(dx: int, dy: int) -> str:
    """Label of max(dx, dy): '<=5', '6-25' or '>25'."""
    return _bucket(max(dx, dy), DIMS_BUCKETS)


def rows_per_dim_bucket(n: int, dx: int, dy: int) -> str:
    """Label of n / (dx + dy), samples per dimension: '<=3', '3-10' or '>10'."""
    return _bucket(n / (dx + dy), ROWS_PER_DIM_BUCKETS)


def mi_bin(mi: float) -> str:
    """Label of the true MI in nats: '0' (independent), '(0,1]', '(1,3]', '(3,8]', '(8,35]', '>35'."""
    return _bucket(mi, MI_BINS)


def family_groups(family: str, transform: str, dx: int, dy: int) -> list[str]:
    """The cross-cutting groups a set belongs to (names matched by substring, case-insensitive).

    embeddings: transform mentions swiss_roll, helix or embed; spirals: transform mentions
    spiral; flows: transform mentions flow; heavy_tails: family mentions student;
    dims>25: max(dx, dy) > 25.
    """
    f, t = family.lower(), transform.lower()
    out = []
    if any(s in t for s in ("swiss", "helix", "embed")):
        out.append("embeddings")
    if "spiral" in t:
        out.append("spirals")
    if "flow" in t:
        out.append("flows")
    if "student" in f:
        out.append("heavy_tails")
    if max(dx, dy) > 25:
        out.append("dims>25")
    return out


GEOMETRIC_GROUPS = ("embeddings", "spirals", "flows")
"""The family groups whose transform bends space (not coordinate-wise, not linear)."""


def is_geometric(transform: str) -> bool:
    """True when the transform (or a component of a composition) is a spiral, flow or embedding."""
    return any(g in GEOMETRIC_GROUPS for g in family_groups("", transform, 1, 1))


def quantile_at(levels: Sequence[float], quantiles: np.ndarray, level: float) -> np.ndarray:
    """Quantile at `level` from quantiles (S, Q) given at sorted `levels` (Q,): linear interpolation. (S,)"""
    lv = np.asarray(levels, dtype=np.float64)
    q = np.atleast_2d(np.asarray(quantiles, dtype=np.float64))
    hit = np.flatnonzero(np.isclose(lv, level, atol=1e-9))
    if hit.size:
        return q[:, hit[0]]
    if not lv[0] <= level <= lv[-1]:
        raise ValueError(f"level {level} outside the predicted levels [{lv[0]}, {lv[-1]}]")
    return np.array([np.interp(level, lv, row) for row in q])


def central_interval(levels: Sequence[float], quantiles: np.ndarray, coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds (lo, hi), each (S,), of the central `coverage` interval [(1-c)/2, (1+c)/2]."""
    lo = quantile_at(levels, quantiles, (1.0 - coverage) / 2.0)
    hi = quantile_at(levels, quantiles, (1.0 + coverage) / 2.0)
    return lo, hi


def point_errors(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """count, MAE, RMSE and bias (mean of estimate - truth) in nats over finite estimates."""
    est = np.asarray(estimate, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(est)
    err = est[ok] - tru[ok]
    if err.size == 0:
        return {"count": 0, "mae": math.nan, "rmse": math.nan, "bias": math.nan}
    return {
        "count": int(err.size),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(np.mean(err)),
    }


def interval_scores(levels: Sequence[float], quantiles: np.ndarray, truth: np.ndarray, coverage: float) -> tuple[float, float]:
    """(empirical coverage, mean width in nats) of the central `coverage` interval over finite rows.

    A set is covered when lo <= truth <= hi (closed interval).
    """
    q = np.atleast_2d(np.asarray(quantiles, dtype=np.float64))
    tru = np.asarray(truth, dtype=np.float64)
    ok = np.all(np.isfinite(q), axis=1)
    if not ok.any():
        return math.nan, math.nan
    lo, hi = central_interval(levels, q[ok], coverage)
    covered = (lo <= tru[ok]) & (tru[ok] <= hi)
    return float(np.mean(covered)), float(np.mean(hi - lo))


def summarise(
    levels: Sequence[float],
    quantiles: np.ndarray,
    truth: np.ndarray,
    times: np.ndarray,
    has_interval: bool,
) -> dict:
    """All scores of one estimator on S sets.

    quantiles (S, Q) at `levels` (rows of NaN mark failed estimates), truth (S,), times (S,)
    seconds. The point estimate is the median (level 0.5). Returns count, failures, mae,
    rmse, bias, median_time_s and, when has_interval, coverage / width of the central
    50/80/90% intervals and the calibration curve (nominal vs empirical central coverage).
    """
    q = np.atleast_2d(np.asarray(quantiles, dtype=np.float64))
    tru = np.asarray(truth, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    point = quantile_at(levels, q, 0.5) if q.size else np.zeros(0)
    out: dict = point_errors(point, tru)
    out["failures"] = int(np.sum(~np.isfinite(point)))
    ok_t = np.isfinite(t) & np.isfinite(point)
    out["median_time_s"] = float(np.median(t[ok_t])) if ok_t.any() else math.nan
    if has_interval:
        out["coverage"], out["width"] = {}, {}
        for c in CENTRAL_LEVELS:
            cov, width = interval_scores(levels, q, tru, c)
            out["coverage"][f"{round(c * 100)}"] = cov
            out["width"][f"{round(c * 100)}"] = width
        out["calibration"] = [[c, interval_scores(levels, q, tru, c)[0]] for c in CALIBRATION_LEVELS]
    return out
