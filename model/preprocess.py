"""Preprocessing shared by training and inference: sample sets -> padded `Batch`.

For every set (x (n, dx), y (n, dy)) this module computes, in numpy/torch without
gradients:

- the per-coordinate copula transform (average ranks -> normal scores), or plain
  standardisation when ``config.input_transform == "standardize"`` (ablation);
- the canonical row subsample seen by the cell layers (at most ``config.cell_rows``
  rows; see `canonical_subset` for why it keeps row-permutation invariance exact);
- per-row KSG-style kNN statistics (max-norm, k = ``config.knn_k``) against a
  reference subset of at most ``config.knn_rows`` rows;
- swap-symmetric set statistics for the head (Gaussian-copula MI from the canonical
  correlations, top canonical pairs, mean KSG estimate, log n, dimension features).

Layout of a padded batch: columns ``[0, DX)`` hold x (``dx_i`` valid), columns
``[DX, DX + DY)`` hold y (``dy_i`` valid), where DX, DY are the batch maxima. The
network never sees which block is "x": it only sees whether two columns are in the
same block (`Batch.is_y` is used for same-vs-other comparisons and symmetric pools),
so swapping x and y gives the same output. MI is in nats throughout.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from scipy.special import digamma, ndtri
from scipy.stats import rankdata

if TYPE_CHECKING:  # the config lives in network.py, which imports this module
    from model.network import ModelConfig

R_MAX = 1.0 - 1e-8
"""Canonical correlations are clipped to [0, R_MAX]: at most ~8.9 nats per pair."""

KNN_FEATURES = 4
"""Per-row kNN features: KSG term, u + v, |u - v|, log eps (see `knn_statistics`)."""

SUBSET_SEED = 20240917
"""Fixed seed of the deterministic (inference) row subsets."""


@dataclass
class Batch:
    """A padded batch of B sample sets (float tensors float32 unless moved with a dtype).

    Shapes: N = max n_i, R = max cell rows, D = DX + DY (max dx_i + max dy_i),
    S = `stats_dim(config)`.
    """

    rows: torch.Tensor  # (B, N, D) transformed values of all rows (zeros where padded)
    row_mask: torch.Tensor  # (B, N) bool, True for real rows
    cells: torch.Tensor  # (B, R, D) transformed values of the cell-layer row subsample
    cell_mask: torch.Tensor  # (B, R) bool, True for real subsample rows
    col_mask: torch.Tensor  # (B, D) bool, True for real columns
    is_y: torch.Tensor  # (D,) bool, True for the y block [DX, D)
    knn: torch.Tensor  # (B, N, KNN_FEATURES) per-row kNN features (zeros if disabled)
    stats: torch.Tensor  # (B, S) swap-symmetric set statistics for the head
    n: torch.Tensor  # (B,) int64 rows per set
    dx: torch.Tensor  # (B,) int64
    dy: torch.Tensor  # (B,) int64

    @property
    def size(self) -> int:
        """Number of sets B."""
        return int(self.rows.shape[0])

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Batch":
        """A copy on `device`; floating tensors are also cast to `dtype` when given."""
        moved = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if dtype is not None and t.is_floating_point():
                t = t.to(device=device, dtype=dtype)
            else:
                t = t.to(device=device)
            moved[f.name] = t
        return Batch(**moved)


def stats_dim(config: "ModelConfig") -> int:
    """Length S of the set-statistics vector for `config`."""
    return 1 + config.cca_top + 2 + 5


def normal_scores(a: np.ndarray) -> np.ndarray:
    """Copula transform: (n, d) -> (n, d) normal scores Phi^-1(rank / (n + 1)).

    Ranks are per column, ties get their average rank; constant columns -> zeros.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    n = a.shape[0]
    if n == 0:
        return np.zeros_like(a)
    order = np.argsort(a, axis=0, kind="stable")
    ranks = np.empty_like(a)
    np.put_along_axis(ranks, order, np.arange(1, n + 1, dtype=np.float64)[:, None], axis=0)
    tied = np.any(np.diff(np.take_along_axis(a, order, axis=0), axis=0) == 0, axis=0)
    if tied.any():  # average ranks for tied values (scipy is slower; only where needed)
        ranks[:, tied] = rankdata(a[:, tied], axis=0)
    z = ndtri(ranks / (n + 1))
    z[:, np.ptp(a, axis=0) == 0] = 0.0
    return z


def standardize(a: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) columns with mean 0 and std 1; constant columns -> zeros (ablation input)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    centered = a - a.mean(axis=0)
    std = centered.std(axis=0)
    ok = std > 0
    out = np.zeros_like(centered)
    out[:, ok] = centered[:, ok] / std[ok]
    return out


def _orthonormal_basis(a: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis (n, r) of the column space of a centred (n, d) float64 matrix."""
    if a.numel() == 0:
        return a.new_zeros((a.shape[0], 0))
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        return a.new_zeros((a.shape[0], 0))
    return u[:, s > s[0] * rtol]


def canonical_correlations(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
    """Sample canonical correlations of zx (n, dx) and zy (n, dy).

    Returns (min(dx, dy),) values in [0, R_MAX], sorted descending. Computed as the
    singular values of Qx^T Qy with Qx, Qy orthonormal bases of the centred columns
    (rank-truncated, so constant or duplicated columns and n barely above dx + dy do
    not break it); missing pairs (rank deficiency) are 0. When n - 1 < dx + dy the
    subspaces must intersect and some values are (clipped) 1: the head also gets
    log(n / (dx + dy)) to learn how much to trust them.

    The linear algebra runs in torch (float64), which follows torch.set_num_threads:
    numpy's multithreaded OpenBLAS stalls 30-70x on a busy 2-core machine.
    """
    zx = np.asarray(zx, dtype=np.float64)
    zy = np.asarray(zy, dtype=np.float64)
    if zx.ndim == 1:
        zx = zx[:, None]
    if zy.ndim == 1:
        zy = zy[:, None]
    k = min(zx.shape[1], zy.shape[1])
    out = np.zeros(k)
    qx = _orthonormal_basis(torch.from_numpy(zx - zx.mean(axis=0)))
    qy = _orthonormal_basis(torch.from_numpy(zy - zy.mean(axis=0)))
    if qx.shape[1] and qy.shape[1]:
        s = torch.linalg.svdvals(qx.T @ qy).numpy()
        out[: min(k, s.size)] = s[:k]
    return np.clip(out, 0.0, R_MAX)


def canonical_subset(
    z: np.ndarray, dx: int, size: int, rng: np.random.Generator | None = None, seed: int = SUBSET_SEED
) -> np.ndarray:
    """Indices of at most `size` rows of z (n, D) (x block first, dx columns).

    With rng: a uniformly random subset (training). With rng=None: rows are put in a
    canonical order by permutation- and swap-invariant keys (sum of the row, sum of
    squares, (sum of x part) * (sum of y part), rounded to 1e-8) and a fixed-seed
    random set of positions in that order is taken. The result is then the same set
    of rows whatever the row order, the coordinate order within x and y, or an x/y
    swap. Rows whose keys tie but whose values differ (e.g. (a, b) and (b, a)) cannot
    be ordered invariantly; a tie group that is only partly selected is therefore
    dropped unless its rows are identical, so exactness survives ties.
    """
    n = z.shape[0]
    if n <= size:
        return np.arange(n)
    if rng is not None:
        return np.sort(rng.choice(n, size, replace=False))
    keys = np.stack(
        [z.sum(axis=1), (z * z).sum(axis=1), z[:, :dx].sum(axis=1) * z[:, dx:].sum(axis=1)], axis=1
    )
    keys = np.round(keys, 8)
    order = np.lexsort(keys.T[::-1])
    pos = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    sorted_keys = keys[order]
    new_group = np.r_[True, np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)]
    gid = np.cumsum(new_group) - 1
    total = np.bincount(gid)
    chosen = np.bincount(gid[pos], minlength=total.size)
    partial = np.flatnonzero((chosen > 0) & (chosen < total))
    keep = np.ones(pos.size, dtype=bool)
    for g in partial:
        members = z[order[gid == g]]
        if not np.all(members == members[0]):
            keep &= gid[pos] != g
    if keep.sum() < 2:  # degenerate data (almost all rows tie): give up exactness
        keep[:] = True
    return order[pos[keep]]


def _max_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Max-norm distances (p, q) between rows of a (p, d) and b (q, d); exact, order-independent."""
    if a.shape[1] == 1:
        return (a - b.T).abs_()
    return torch.cdist(a, b, p=float("inf"))  # fused kernel, ~2x faster than a column loop


def knn_statistics(z: np.ndarray, dx: int, ref: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Per-row KSG (algorithm 1) statistics with max-norm distances on z (n, D).

    Every row is a query against the reference rows `ref` (itself excluded). With
    N = number of other reference rows + 1, eps_i = distance to the k-th neighbour in
    the joint space, nx_i / ny_i = number of reference rows strictly closer than eps_i
    in the x / y space, u_i = psi(N) - psi(nx_i + 1), v_i = psi(N) - psi(ny_i + 1):

        ksg_i = psi(k) + psi(N) - psi(nx_i + 1) - psi(ny_i + 1)   (mean = KSG MI, nats)

    Returns (features (n, 4) = [ksg_i, (u+v)/4, |u-v|/4, log(eps_i)/4], mean ksg_i).
    All features are symmetric under an x/y swap.
    """
    n = z.shape[0]
    ref = np.asarray(ref, dtype=np.int64)
    m = ref.size
    k_eff = max(1, min(k, m - 1))
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    zx, zy = zt[:, :dx].contiguous(), zt[:, dx:].contiguous()
    rx, ry = zx[ref], zy[ref]
    ref_pos = np.full(n, -1, dtype=np.int64)
    ref_pos[ref] = np.arange(m)
    feats = np.empty((n, KNN_FEATURES))
    chunk = max(1, (1 << 20) // max(m, 1))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dxm = _max_norm(zx[start:stop], rx).numpy()  # (c, m) float32
        dym = _max_norm(zy[start:stop], ry).numpy()
        qi = np.flatnonzero(ref_pos[start:stop] >= 0)
        self_hit = np.zeros(stop - start, dtype=bool)
        self_hit[qi] = True
        dxm[qi, ref_pos[start + qi]] = np.inf  # a query never counts itself
        dym[qi, ref_pos[start + qi]] = np.inf
        joint = np.maximum(dxm, dym)
        eps = np.partition(joint, k_eff - 1, axis=1)[:, k_eff - 1]  # k-th neighbour distance
        nx = np.count_nonzero(dxm < eps[:, None], axis=1)
        ny = np.count_nonzero(dym < eps[:, None], axis=1)
        psi_n = digamma(m - self_hit + 1.0)
        u = psi_n - digamma(nx + 1.0)
        v = psi_n - digamma(ny + 1.0)
        feats[start:stop, 0] = digamma(k_eff) + u + v - psi_n
        feats[start:stop, 1] = (u + v) / 4
        feats[start:stop, 2] = np.abs(u - v) / 4
        feats[start:stop, 3] = np.log(np.maximum(eps, 1e-6)) / 4
    return feats, float(feats[:, 0].mean())


def set_statistics(r: np.ndarray | None, ksg_mean: float | None, n: int, dx: int, dy: int, cca_top: int) -> np.ndarray:
    """Swap-symmetric statistics (S,) of one set for the head.

    [log1p(gaussian-copula MI), log1p(top-`cca_top` pair MIs -1/2 log(1 - r_k^2), 0-padded),
     mean KSG, log1p(max(KSG, 0)), log n / 5, (log dx + log dy) / 3, |log dx - log dy| / 3,
     log(n / (dx + dy)) / 5, log min(dx, dy) / 3]. Disabled statistics (r or ksg_mean None) are 0.
    """
    top = np.zeros(cca_top)
    gc = 0.0
    if r is not None and r.size:
        pair = -0.5 * np.log1p(-np.clip(r, 0.0, R_MAX) ** 2)
        gc = float(pair.sum())
        m = min(cca_top, pair.size)
        top[:m] = np.sort(pair)[::-1][:m]
    ksg = 0.0 if ksg_mean is None else float(ksg_mean)
    ldx, ldy = np.log(dx), np.log(dy)
    return np.concatenate(
        [
            [np.log1p(gc)],
            np.log1p(top),
            [ksg, np.log1p(max(ksg, 0.0))],
            [np.log(n) / 5, (ldx + ldy) / 3, abs(ldx - ldy) / 3, np.log(n / (dx + dy)) / 5, min(ldx, ldy) / 3],
        ]
    )


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def prepare_batch(
    sets: Sequence[tuple[np.ndarray, np.ndarray]],
    config: "ModelConfig",
    rng: np.random.Generator | None = None,
) -> Batch:
    """Turn B sample sets into a padded `Batch`.

    sets: (x (n_i, dx_i), y (n_i, dy_i)) float arrays, already validated (finite,
    n_i >= 2, same n within a pair; 1-D arrays are one column). rng: training-time
    randomness only (random cell-row subsample and kNN reference rows); None gives a
    deterministic, exactly permutation-invariant batch.
    """
    if len(sets) == 0:
        raise ValueError("prepare_batch needs at least one (x, y) set")
    if config.input_transform == "copula":
        transform = normal_scores
    elif config.input_transform == "standardize":
        transform = standardize
    else:
        raise ValueError(f"unknown input_transform {config.input_transform!r}")
    per_set = []
    for i, (x, y) in enumerate(sets):
        x, y = _as_2d(x), _as_2d(y)
        if x.shape[0] != y.shape[0] or x.shape[0] < 2 or x.shape[1] < 1 or y.shape[1] < 1:
            raise ValueError(f"set {i}: need x (n, dx), y (n, dy) with n >= 2, got {x.shape} and {y.shape}")
        zx, zy = transform(x), transform(y)
        z = np.concatenate([zx, zy], axis=1)
        n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
        cell_idx = canonical_subset(z, dx, config.cell_rows, rng)
        r = canonical_correlations(zx, zy) if config.use_cca else None
        knn, ksg = None, None
        if config.use_knn:
            ref = canonical_subset(z, dx, config.knn_rows, rng, seed=SUBSET_SEED + 1)
            knn, ksg = knn_statistics(z, dx, ref, config.knn_k)
        stats = set_statistics(r, ksg, n, dx, dy, config.cca_top)
        per_set.append((zx, zy, cell_idx, knn, stats))

    b = len(per_set)
    big_n = max(p[0].shape[0] for p in per_set)
    big_r = max(p[2].size for p in per_set)
    big_dx = max(p[0].shape[1] for p in per_set)
    big_dy = max(p[1].shape[1] for p in per_set)
    d = big_dx + big_dy
    rows = np.zeros((b, big_n, d), dtype=np.float32)
    cells = np.zeros((b, big_r, d), dtype=np.float32)
    row_mask = np.zeros((b, big_n), dtype=bool)
    cell_mask = np.zeros((b, big_r), dtype=bool)
    col_mask = np.zeros((b, d), dtype=bool)
    knn_t = np.zeros((b, big_n, KNN_FEATURES), dtype=np.float32)
    stats_t = np.zeros((b, stats_dim(config)), dtype=np.float32)
    ns, dxs, dys = (np.zeros(b, dtype=np.int64) for _ in range(3))
    for i, (zx, zy, cell_idx, knn, stats) in enumerate(per_set):
        n, dx, dy = zx.shape[0], zx.shape[1], zy.shape[1]
        rows[i, :n, :dx] = zx
        rows[i, :n, big_dx : big_dx + dy] = zy
        cells[i, : cell_idx.size] = rows[i, cell_idx]
        row_mask[i, :n] = True
        cell_mask[i, : cell_idx.size] = True
        col_mask[i, :dx] = True
        col_mask[i, big_dx : big_dx + dy] = True
        if knn is not None:
            knn_t[i, :n] = knn
        stats_t[i] = stats
        ns[i], dxs[i], dys[i] = n, dx, dy
    is_y = np.zeros(d, dtype=bool)
    is_y[big_dx:] = True
    return Batch(
        rows=torch.from_numpy(rows),
        row_mask=torch.from_numpy(row_mask),
        cells=torch.from_numpy(cells),
        cell_mask=torch.from_numpy(cell_mask),
        col_mask=torch.from_numpy(col_mask),
        is_y=torch.from_numpy(is_y),
        knn=torch.from_numpy(knn_t),
        stats=torch.from_numpy(stats_t),
        n=torch.from_numpy(ns),
        dx=torch.from_numpy(dxs),
        dy=torch.from_numpy(dys),
    )
