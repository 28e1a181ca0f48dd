"""How far a sample set lies from the training distribution, for a calibration that knows it.

The network's out-of-distribution misses come from a bias that more rows do not remove
(README log, sessions 13-14): an in-distribution calibration cannot see it, so the shipped
offsets used to widen the upper tails of every set above 300 rows. A set's *novelty*
tells which sets those are: the mean Euclidean distance from its set statistics
(``Batch.stats``, (S,): copula and raw canonical correlations, KSG, log n, dimensions;
standardized by the training sets' mean and spread) to its `k` nearest neighbours among
`M` reference sets drawn from a training-distribution store. On the out-of-distribution
validation stores the uncalibrated 90% intervals of sets above 300 rows missed 10% of the
time below the training sets' 75th percentile of novelty and 31-34% above it (in
distribution the typical sets include the independent ones, whose true MI of 0 every raw
interval above 0 misses; `scripts/calibration_study.py --novelty-store`, session 27).
A Mondrian split-conformal calibration per
novelty bin (`fit_calibration_by_novelty`; inference picks the offsets by the set's bin,
`apply_calibration_by_novelty`) then widens the novel sets and leaves the typical ones
sharp.

Everything here is numpy on small arrays: scoring one set costs an (M, S) distance pass
(M = 5,000, S = 25: well under a millisecond).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from model.quantiles import _as_groupings, apply_calibration, fit_calibration_by_n

_SCORE_CHUNK = 256
"""Sets scored per distance block (a (chunk, M) float64 matrix)."""


@dataclass(frozen=True)
class NoveltyReference:
    """Reference sets and bin edges of the novelty score.

    mean, scale (S,): standardization of the set statistics (training sets' mean and standard deviation);
    points (M, S) float32: standardized statistics of the reference sets; k: neighbours averaged;
    edges: increasing novelty scores that split sets into len(edges) + 1 bins (bin 0: most typical);
    train_scores: the held-out training sets' novelty at the percentiles 0, 1, ..., 100 (101 values,
    non-decreasing), for `novelty_percentiles`; empty when unknown (checkpoints of session 27's first ship).
    """

    mean: np.ndarray
    scale: np.ndarray
    points: np.ndarray
    k: int
    edges: tuple[float, ...]
    train_scores: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        mean, scale, points = (np.asarray(a) for a in (self.mean, self.scale, self.points))
        if mean.ndim != 1 or scale.shape != mean.shape or points.ndim != 2 or points.shape[1] != mean.size:
            raise ValueError(f"need mean (S,), scale (S,), points (M, S); got {mean.shape}, {scale.shape}, {points.shape}")
        if not np.all(scale > 0) or not np.all(np.isfinite(points)):
            raise ValueError("scale must be positive and points finite")
        if not 1 <= int(self.k) <= points.shape[0]:
            raise ValueError(f"k must lie in [1, {points.shape[0]}] (the reference sets), got {self.k}")
        e = np.asarray(self.edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 1 or np.any(np.diff(e) <= 0) or not np.all(np.isfinite(e)):
            raise ValueError(f"edges must be one or more increasing finite scores, got {self.edges!r}")
        ts = np.asarray(self.train_scores, dtype=np.float64)
        if ts.size and (ts.shape != (101,) or np.any(np.diff(ts) < 0) or not np.all(np.isfinite(ts))):
            raise ValueError("train_scores must be 101 non-decreasing finite scores (percentiles 0..100) or empty")

    @functools.cached_property
    def _points_and_norms(self) -> tuple[np.ndarray, np.ndarray]:
        """The points as float64 (M, S) and their squared norms (M,), computed once."""
        pts = np.ascontiguousarray(self.points, dtype=np.float64)
        return pts, (pts * pts).sum(axis=1)

    @property
    def bins(self) -> int:
        """Number of novelty bins, len(edges) + 1."""
        return len(self.edges) + 1

    def bin_of(self, scores: np.ndarray) -> np.ndarray:
        """Bin of each novelty score (B,) int: the number of edges it exceeds."""
        return np.searchsorted(np.asarray(self.edges), np.asarray(scores), side="left")

    def percentile_of(self, scores: np.ndarray) -> np.ndarray:
        """Where each novelty score (B,) falls among the held-out training sets', in percent: 50 is a
        typical training set, 99 rarer than all but 1%, 100 beyond every one; NaN without train_scores."""
        scores = np.asarray(scores, dtype=np.float64)
        if not self.train_scores:
            return np.full(scores.shape, np.nan)
        table = np.asarray(self.train_scores)
        # the table is the inverse CDF; ties (flat stretches) take their highest percentile
        _, last = np.unique(table[::-1], return_index=True)
        keep = np.sort(table.size - 1 - last)
        return np.interp(scores, table[keep], np.arange(101.0)[keep], left=0.0, right=100.0)

    def to_json(self) -> dict:
        """Everything but the points, for a checkpoint's metadata."""
        return {"k": int(self.k), "edges": [float(e) for e in self.edges],
                "mean": np.asarray(self.mean, dtype=np.float64).tolist(),
                "scale": np.asarray(self.scale, dtype=np.float64).tolist(),
                "train_scores": [float(v) for v in self.train_scores]}

    @classmethod
    def from_json(cls, d: dict, points: np.ndarray) -> "NoveltyReference":
        """Inverse of `to_json` with the points stored apart; ValueError if inconsistent."""
        try:
            return cls(mean=np.asarray(d["mean"], dtype=np.float64), scale=np.asarray(d["scale"], dtype=np.float64),
                       points=np.asarray(points, dtype=np.float32), k=int(d["k"]),
                       edges=tuple(float(e) for e in d["edges"]),
                       train_scores=tuple(float(v) for v in d.get("train_scores", ())))
        except (KeyError, TypeError) as e:
            raise ValueError(f"novelty reference needs k, edges, mean, scale: {e}") from None


def novelty_scores(ref: NoveltyReference, stats: np.ndarray) -> np.ndarray:
    """Mean Euclidean distance (standardized units) from each set's statistics (B, S) to its
    `ref.k` nearest reference sets; (B,) float64."""
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[1] != ref.mean.size:
        raise ValueError(f"stats must be (B, {ref.mean.size}), got {stats.shape}")
    z = (stats - ref.mean) / ref.scale
    pts, sq_pts = ref._points_and_norms
    out = np.empty(z.shape[0])
    for s in range(0, z.shape[0], _SCORE_CHUNK):
        zc = z[s:s + _SCORE_CHUNK]
        d2 = (zc * zc).sum(axis=1)[:, None] + sq_pts[None, :] - 2.0 * zc @ pts.T  # (chunk, M)
        near = np.partition(d2, ref.k - 1, axis=1)[:, : ref.k]
        out[s:s + _SCORE_CHUNK] = np.sqrt(np.maximum(near, 0.0)).mean(axis=1)
    return out


def novelty_percentiles(ref: NoveltyReference, stats: np.ndarray) -> np.ndarray:
    """Each set's novelty as a percentile of the held-out training sets' (B,) (`NoveltyReference.percentile_of`)."""
    return ref.percentile_of(novelty_scores(ref, stats))


def novelty_bins(ref: NoveltyReference, stats: np.ndarray) -> np.ndarray:
    """Bin of each set (B,) int: the number of edges its novelty score exceeds."""
    return ref.bin_of(novelty_scores(ref, stats))


def fit_novelty_reference(stats: np.ndarray, quantiles, size: int = 5000, k: int = 10,
                          seed: int = 0) -> NoveltyReference:
    """A reference from statistics (N, S) of training-distribution sets.

    `size` of them (at random) become the reference points; the bin edges are the novelty
    scores' `quantiles` (increasing, in (0, 1)) on the other sets, so a training-distribution
    set falls above the first edge with probability 1 - quantiles[0]. Needs N > size.
    """
    stats = np.asarray(stats, dtype=np.float64)
    qs = np.asarray(quantiles, dtype=np.float64)
    if qs.ndim != 1 or qs.size < 1 or np.any(np.diff(qs) <= 0) or qs[0] <= 0 or qs[-1] >= 1:
        raise ValueError(f"quantiles must be increasing values in (0, 1), got {quantiles!r}")
    if stats.ndim != 2 or stats.shape[0] <= size or size < k:
        raise ValueError(f"need stats (N, S) with N > size = {size} >= k = {k}; got {stats.shape}")
    mean = stats.mean(axis=0)
    scale = stats.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)  # constant statistics (e.g. switched off) do not count
    order = np.random.default_rng(seed).permutation(stats.shape[0])
    points = ((stats[order[:size]] - mean) / scale).astype(np.float32)
    probe = NoveltyReference(mean=mean, scale=scale, points=points, k=k, edges=(0.0,))
    held = novelty_scores(probe, stats[order[size:]])
    edges = np.quantile(held, qs)
    if np.any(np.diff(edges) <= 0):
        raise ValueError(f"novelty quantiles {quantiles!r} give tied edges {edges.tolist()}")
    train_scores = tuple(float(v) for v in np.quantile(held, np.arange(101) / 100))
    return NoveltyReference(mean=mean, scale=scale, points=points, k=k, edges=tuple(float(e) for e in edges),
                            train_scores=train_scores)


def fit_calibration_by_novelty(pred_grid: np.ndarray, target_t: np.ndarray, levels, n, n_edges, bins: np.ndarray,
                               num_bins: int, upper_tails, **kwargs) -> np.ndarray:
    """Offsets (K, R, Q), or (K, Q) without n edges: `model.quantiles.fit_calibration_by_n` on the sets of
    each novelty bin alone.

    pred_grid (N, Q), target_t (N,), n (N,) as there; bins (N,) each set's novelty bin in
    [0, num_bins); upper_tails: one `upper_tail` per bin (or one for all). Other keyword
    arguments (groups as (N,) labels or a list of them, central_robust, min_range, ...) pass
    through, groups restricted to each bin's sets. ValueError when a bin's n range holds too
    few sets.
    """
    bins = np.asarray(bins)
    tails = np.broadcast_to(np.asarray(upper_tails, dtype=np.float64), (num_bins,))
    groups = kwargs.pop("groups", None)
    groupings = None if groups is None else _as_groupings(groups)
    rows = []
    for b in range(num_bins):
        sel = bins == b
        g = None if groupings is None else [labels[sel] for labels in groupings]
        try:
            row = fit_calibration_by_n(pred_grid[sel], target_t[sel], levels, np.asarray(n)[sel], n_edges,
                                       groups=g, upper_tail=float(tails[b]), **kwargs)
            rows.append(row if len(n_edges) else row[0])  # no n edges: (Q,) per bin
        except ValueError as e:
            raise ValueError(f"novelty bin {b}: {e}") from None
    return np.stack(rows)


def apply_calibration_by_novelty(pred_grid: np.ndarray, offsets: np.ndarray, bins: np.ndarray, n, n_edges) -> np.ndarray:
    """`model.quantiles.apply_calibration` with each set (B, Q) taking the offsets of its novelty bin
    (offsets (K, R, Q) or (K, Q); bins (B,), n (B,))."""
    pred_grid = np.asarray(pred_grid, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)
    bins, n = np.asarray(bins), np.asarray(n)
    if bins.shape != (pred_grid.shape[0],) or bins.min(initial=0) < 0 or bins.max(initial=0) >= offsets.shape[0]:
        raise ValueError(f"bins must be (B,) = ({pred_grid.shape[0]},) values in [0, {offsets.shape[0]})")
    out = np.empty_like(pred_grid)
    for b in np.unique(bins):
        sel = bins == b
        out[sel] = apply_calibration(pred_grid[sel], offsets[b], n=n[sel], n_edges=n_edges)
    return out


__all__ = ["NoveltyReference", "apply_calibration_by_novelty", "fit_calibration_by_novelty", "fit_novelty_reference",
           "novelty_bins", "novelty_percentiles", "novelty_scores"]
