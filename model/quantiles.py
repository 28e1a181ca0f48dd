"""The quantile target, loss, interpolation and split-conformal calibration.

The network predicts quantiles of t = log1p(MI in nats) on a fixed grid of levels
(quantiles are equivariant under the monotone map t <-> MI, so converting back with
`from_target` gives quantiles of the MI in nats). Other levels are interpolated
linearly in Phi^-1(level). Calibration: per-level additive offsets in t-space fitted
on held-out sets (split-conformal per level), stored in the checkpoint; optionally one
row of offsets per range of n (Mondrian conformal: each range fitted on its own sets),
since how far the network's quantiles miss depends on n.

`interpolate_quantiles` and `apply_calibration` accept numpy arrays (returned as
numpy) or torch tensors (returned as tensors of the same dtype/device).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtri
from torch import Tensor

CENTRAL = (0.1, 0.9)  # levels strictly inside: central (fit_calibration's central_robust)
UPPER_TAIL_FROM = 0.9  # levels from here up: the upper tail (fit_calibration_by_n's upper_tail)


def to_target(mi_nats: Tensor) -> Tensor:
    """MI in nats (any shape, >= 0; negative values clipped to 0) -> t = log1p(MI)."""
    return torch.log1p(mi_nats.clamp_min(0.0))


def from_target(t: Tensor) -> Tensor:
    """t = log1p(MI) -> MI in nats = expm1(t), clipped >= 0."""
    return torch.expm1(t).clamp_min(0.0)


def pinball_loss(pred: Tensor, target_t: Tensor, levels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Pinball (quantile) loss averaged over the grid and the batch.

    pred (B, Q) predicted quantiles, target_t (B,) true t, levels (Q,) in (0, 1).
    loss = mean_{b,q} max(tau_q * (t_b - pred_bq), (tau_q - 1) * (t_b - pred_bq)); with `weight` (B,),
    the sets' grid means are averaged with those weights instead.
    """
    levels = levels.to(dtype=pred.dtype, device=pred.device)
    diff = target_t.to(pred.dtype)[:, None] - pred
    loss = torch.maximum(levels * diff, (levels - 1.0) * diff)
    if weight is None:
        return loss.mean()
    weight = weight.to(loss.dtype)
    return (loss.mean(-1) * weight).sum() / weight.sum()


def _to_numpy(a) -> tuple[np.ndarray, Tensor | None]:
    if isinstance(a, Tensor):
        return a.detach().cpu().double().numpy(), a
    return np.asarray(a, dtype=np.float64), None


def _back(a: np.ndarray, like: Tensor | None):
    return a if like is None else torch.as_tensor(a, dtype=like.dtype, device=like.device)


def interpolate_quantiles(grid_levels, grid_values, levels):
    """Quantiles at arbitrary `levels` from a grid: (..., Q) values -> (..., L).

    grid_levels (Q,) strictly increasing in (0, 1); grid_values (..., Q) (made
    non-decreasing by a running max first); levels (L,) anywhere in (0, 1). Linear in
    u = Phi^-1(level) between grid points, extrapolated from the end segments outside
    the grid, clipped >= 0. Exact at grid levels; non-decreasing in the level.
    """
    gl, _ = _to_numpy(grid_levels)
    gv, like = _to_numpy(grid_values)
    lv, _ = _to_numpy(levels)
    lv = np.atleast_1d(lv)
    if gl.ndim != 1 or gl.size < 2 or np.any(np.diff(gl) <= 0) or gl[0] <= 0 or gl[-1] >= 1:
        raise ValueError("grid_levels must be >= 2 strictly increasing values in (0, 1)")
    if gv.shape[-1] != gl.size:
        raise ValueError(f"grid_values last axis {gv.shape[-1]} != number of grid levels {gl.size}")
    if np.any(lv <= 0) or np.any(lv >= 1):
        raise ValueError("levels must lie strictly inside (0, 1)")
    gv = np.maximum.accumulate(gv, axis=-1)
    ug, u = ndtri(gl), ndtri(lv)
    k = np.clip(np.searchsorted(ug, u, side="right") - 1, 0, gl.size - 2)
    w = (u - ug[k]) / (ug[k + 1] - ug[k])
    lo, hi = gv[..., k], gv[..., k + 1]
    out = lo + w * (hi - lo)
    return _back(np.maximum(out, 0.0), like)


def _as_groupings(groups) -> list[np.ndarray]:
    """`fit_calibration`'s groups (one label array, or a list of them) as a list of arrays."""
    return [np.asarray(g) for g in groups] if isinstance(groups, (list, tuple)) else [np.asarray(groups)]


def fit_calibration(pred_grid: np.ndarray, target_t: np.ndarray, levels, groups=None,
                    min_group: int = 50, central_robust: float = 1.0, tail_robust: float = 1.0) -> np.ndarray:
    """Per-level additive offsets c (Q,) in t-space, split-conformal per level.

    pred_grid (N, Q) predicted grid quantiles on held-out sets, target_t (N,) true t.
    c_q is the ceil(tau_q * N)-th smallest residual t - pred_q, so that on these data
    mean(t <= pred_q + c_q) = ceil(tau_q * N) / N, i.e. within 1/N of tau_q (above).

    groups (N,) labels, optional: group-robust offsets. The pooled fit and one fit per
    group with at least `min_group` sets; levels above 0.5 take the largest of these
    offsets, levels below 0.5 the smallest, the median the pooled one. Then in every
    such group, and in the whole set, mean(t <= pred_q + c_q) >= tau_q above the median
    and <= tau_q + 1/N_g below it, so every central interval covers at least its nominal
    share of each group: coverage that holds across, e.g., dimension ranges, not just
    on average over the mix. groups may also be a list of such label arrays (several
    groupings, e.g. dimension ranges and transform kinds): then every group of every
    grouping is covered.

    central_robust in [0, 1]: how much of that group-robustness the central levels
    (0.1 < tau < 0.9, the ends of intervals up to 80%) take: their offsets are
    pooled + central_robust * (group-robust - pooled). Robust ends of a 50% interval
    over-cover the mix (every group at least 50% means the mix well above it); 0.5 goes
    half-way. tail_robust in [0, 1]: the same for the other levels (tau <= 0.1 and tau >= 0.9,
    the ends of the 80% and wider intervals; 1, the default, keeps them fully robust).
    """
    for name, value in (("central_robust", central_robust), ("tail_robust", tail_robust)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    if groups is not None:
        groupings = _as_groupings(groups)
        for g in groupings:
            if g.shape != (np.shape(target_t)[0],):
                raise ValueError(f"groups must have shape ({np.shape(target_t)[0]},), got {g.shape}")
        levels = np.asarray(levels, dtype=np.float64)
        pooled = fit_calibration(pred_grid, target_t, levels)
        pred_grid, target_t = np.asarray(pred_grid), np.asarray(target_t)
        per = np.array([pooled] + [fit_calibration(pred_grid[g == lab], target_t[g == lab], levels)
                                   for g in groupings for lab in np.unique(g)
                                   if np.sum(g == lab) >= min_group])  # (1 + groups, Q)
        robust = np.where(levels > 0.5, per.max(axis=0), np.where(levels < 0.5, per.min(axis=0), pooled))
        central = (levels > CENTRAL[0]) & (levels < CENTRAL[1])
        w = np.where(central, central_robust, tail_robust)
        return np.where(w == 1.0, robust, pooled + w * (robust - pooled))
    pred_grid = np.asarray(pred_grid, dtype=np.float64)
    target_t = np.asarray(target_t, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if pred_grid.ndim != 2 or pred_grid.shape[0] != target_t.shape[0] or pred_grid.shape[1] != levels.size:
        raise ValueError(
            f"need pred_grid (N, Q), target_t (N,), levels (Q,); got {pred_grid.shape}, {target_t.shape}, {levels.shape}"
        )
    n = target_t.size
    if n == 0:
        raise ValueError("fit_calibration needs at least one held-out set")
    resid = np.sort(target_t[:, None] - pred_grid, axis=0)  # (N, Q)
    rank = np.clip(np.ceil(levels * n - 1e-9).astype(int), 1, n)  # 1-based order statistic
    return resid[rank - 1, np.arange(levels.size)]


def n_range_index(n, n_edges) -> np.ndarray:
    """Which n range each set falls in: r = number of edges below n, so range r is
    (n_edges[r-1], n_edges[r]] (range 0: n <= n_edges[0]; the last: n > n_edges[-1]).

    n: int or (B,) sample sizes; n_edges: strictly increasing ints (may be empty: one range).
    """
    return np.searchsorted(np.asarray(n_edges, dtype=np.int64), np.asarray(n), side="left")


def n_range_labels(n_edges) -> list[str]:
    """Readable bounds of each n range, in `n_range_index` order: ["n <= 300", "300 < n <= 1000", "n > 1000"]."""
    edges = list(n_edges)
    if not edges:
        return ["all n"]
    middle = [f"{a} < n <= {b}" for a, b in zip(edges, edges[1:])]
    return [f"n <= {edges[0]}", *middle, f"n > {edges[-1]}"]


def check_n_edges(n_edges) -> tuple[int, ...]:
    """n_edges as a tuple of strictly increasing positive ints; ValueError otherwise."""
    try:
        edges = tuple(int(e) for e in n_edges)
    except (TypeError, ValueError):
        raise ValueError(f"n_edges must be a sequence of ints, got {n_edges!r}") from None
    if any(e < 1 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"n_edges must be strictly increasing positive ints, got {list(edges)}")
    return edges


def fit_calibration_by_n(pred_grid: np.ndarray, target_t: np.ndarray, levels, n, n_edges, groups=None,
                         min_group: int = 50, min_range: int = 100, central_robust: float = 1.0,
                         upper_tail: float = 1.0, tail_robust: float = 1.0) -> np.ndarray:
    """Offsets (R, Q), R = len(n_edges) + 1: `fit_calibration` on the sets of each n range alone.

    Mondrian split-conformal: range r's row is fitted only on the held-out sets whose n
    falls in it (`n_range_index`), so every range, not only the mix, gets its nominal
    coverage, e.g. when the network is sharper than it should be at large n. pred_grid
    (N, Q), target_t (N,), n (N,) the sample sizes the network saw; groups as in
    `fit_calibration` (group-robust within each range), central_robust and tail_robust too. ValueError
    when a range holds fewer than `min_range` sets (its tail offsets would be noise).

    upper_tail in (0, 1]: in every range but the first (n above n_edges[0]), the levels
    tau >= 0.9 are fitted at 1 - upper_tail * (1 - tau), so the upper ends of the 80%
    and wider intervals leave less mass above them than nominal (0.7: the 95% quantile
    fitted at 96.5%). Why: off the training distribution the network's misses at large n
    are mostly underestimates from a bias that does not shrink with n (README log,
    sessions 13-14), which an in-distribution calibration cannot see; below the first
    edge the intervals are wide enough already.
    """
    if not 0.0 < upper_tail <= 1.0:
        raise ValueError(f"upper_tail must lie in (0, 1], got {upper_tail!r}")
    edges = check_n_edges(n_edges)
    pred_grid, target_t = np.asarray(pred_grid), np.asarray(target_t)
    n = np.asarray(n)
    if n.shape != target_t.shape:
        raise ValueError(f"n must have shape {target_t.shape}, got {n.shape}")
    r = n_range_index(n, edges)
    groupings = None if groups is None else _as_groupings(groups)
    rows = []
    for k, label in enumerate(n_range_labels(edges)):
        sel = r == k
        if sel.sum() < min_range:
            raise ValueError(
                f"n range {label}: {int(sel.sum())} calibration sets, need at least {min_range} "
                "(add sets with such n, or use fewer n_edges)"
            )
        g = None if groupings is None else [labels[sel] for labels in groupings]
        lv = np.asarray(levels, dtype=np.float64)
        if k > 0:
            lv = np.where(lv >= UPPER_TAIL_FROM, 1.0 - upper_tail * (1.0 - lv), lv)
        rows.append(fit_calibration(pred_grid[sel], target_t[sel], lv, groups=g, min_group=min_group,
                                    central_robust=central_robust, tail_robust=tail_robust))
    return np.stack(rows)


def monotone_from_middle(q: np.ndarray) -> np.ndarray:
    """Quantile grids (..., Q) made non-decreasing outward from the middle level (index (Q - 1) // 2, the
    median of the default, symmetric grid): below it each value is capped by the ones above it (a running
    min toward the low end), above it each is raised to the ones below it (a running max toward the high end).

    Grids that are already non-decreasing come back unchanged. Where per-level offsets cross (a low level's
    offset above a higher level's, e.g. a 1% level fitted on a few sets), a running max over the whole grid
    would drag the middle and lower quantiles of a narrow set up to the crossing value; this repair only
    moves the crossing values themselves, and only outward, so no central interval gets narrower than the
    levels that bound it.
    """
    q = np.asarray(q, dtype=np.float64)
    mid = (q.shape[-1] - 1) // 2
    lo = np.minimum.accumulate(q[..., : mid + 1][..., ::-1], axis=-1)[..., ::-1]
    hi = np.maximum.accumulate(q[..., mid:], axis=-1)
    return np.concatenate([lo, hi[..., 1:]], axis=-1)


def apply_calibration(pred_grid, offsets, n=None, n_edges=()):
    """Add per-level offsets to pred_grid (..., Q), restore monotonicity (`monotone_from_middle`), clip >= 0.

    offsets (Q,): the same for every set. offsets (R, Q) with R = len(n_edges) + 1
    (`fit_calibration_by_n`): pred_grid must be (B, Q) and n (B,) the sets' sample sizes;
    each set takes the row of its n range.
    """
    pg, like = _to_numpy(pred_grid)
    off = np.asarray(offsets, dtype=np.float64)
    q = pg.shape[-1]
    if off.ndim == 2 and off.shape[0] == 1:
        off = off[0]
    if off.ndim == 2:
        edges = check_n_edges(n_edges)
        if off.shape != (len(edges) + 1, q):
            raise ValueError(f"offsets must have shape ({len(edges) + 1}, {q}) for n_edges {list(edges)}, got {off.shape}")
        if n is None or pg.ndim != 2 or np.shape(n) != (pg.shape[0],):
            raise ValueError("offsets per n range need pred_grid (B, Q) and n (B,)")
        off = off[n_range_index(n, edges)]  # (B, Q)
    elif off.shape != (q,):
        raise ValueError(f"offsets must have shape ({q},), got {off.shape}")
    out = np.maximum(monotone_from_middle(pg + off), 0.0)
    return _back(out, like)
