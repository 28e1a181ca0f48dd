"""Preprocessing shared by training and inference: sample sets -> padded `Batch`.

For every set (x (n, dx), y (n, dy)) this module computes, in numpy/torch without
gradients:

- the per-coordinate copula transform (average ranks -> normal scores), or plain
  standardisation when ``config.input_transform == "standardize"`` (ablation);
- the canonical row subsample seen by the cell layers (at most ``config.cell_rows``
  rows; see `canonical_subset` for why it keeps row-permutation invariance exact);
- per-row KSG-style kNN statistics (max-norm, k = ``config.knn_k``) against a
  reference subset of at most ``config.knn_rows`` rows;
- per-column dependence features (how strongly each coordinate depends on the other
  block, linearly and through its magnitude; `column_statistics`), when
  ``config.use_col_stats``;
- swap-symmetric set statistics for the head (Gaussian-copula MI from the canonical
  correlations, top canonical pairs, mean KSG estimate, log n, dimension features;
  with ``config.use_nonlinear_stats`` also statistics of nonlinear dependence,
  `nonlinear_statistics`; with ``config.use_raw_stats`` the Gaussian MI of the raw values'
  canonical correlations, `raw_statistics`).

Layout of a padded batch: columns ``[0, DX)`` hold x (``dx_i`` valid), columns
``[DX, DX + DY)`` hold y (``dy_i`` valid), where DX, DY are the batch maxima. The
network never sees which block is "x": it only sees whether two columns are in the
same block (`Batch.is_y` is used for same-vs-other comparisons and symmetric pools),
so swapping x and y gives the same output. MI is in nats throughout.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
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

COL_FEATURES = 8
"""Per-column dependence features (see `column_statistics`)."""

SHAPE_FEATURES = 10
"""Marginal-shape statistics a "stats+shape" refiner reads (see `marginal_shape_statistics`)."""

NONLINEAR_FEATURES = 12
"""Set statistics of nonlinear dependence appended to the set statistics when
``config.use_nonlinear_stats`` (see `nonlinear_statistics`)."""

NONLINEAR_ROWS = 512
"""Rows (at most) that `nonlinear_statistics` reads: a subset, so their cost does not grow with n."""

NONLINEAR_KNN_ROWS = 256
"""Rows (at most, among those NONLINEAR_ROWS) of the KSG statistics inside `nonlinear_statistics`."""

RAW_CLIP = 8.0
"""`robust_standardize` clips robustly scaled raw values to [-RAW_CLIP, RAW_CLIP]."""

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
    cols: torch.Tensor  # (B, D, COL_FEATURES) per-column dependence features (zeros if disabled or padded)
    stats: torch.Tensor  # (B, S) swap-symmetric set statistics for the head
    n: torch.Tensor  # (B,) int64 rows per set
    dx: torch.Tensor  # (B,) int64
    dy: torch.Tensor  # (B,) int64
    shape: torch.Tensor  # (B, SHAPE_FEATURES) marginal-shape statistics for a "stats+shape" refiner (zeros otherwise)

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


def stats_layout(config: "ModelConfig") -> list[tuple[str, int]]:
    """The blocks of the set-statistics vector for `config`, in order: (name, length).

    "base" (`set_statistics`), then "nonlinear" (`nonlinear_statistics`) and "raw"
    (`raw_statistics`) when their switches are on.
    """
    layout = [("base", 1 + config.cca_top + 2 + 5)]
    if config.use_nonlinear_stats:
        layout.append(("nonlinear", NONLINEAR_FEATURES))
    if config.use_raw_stats:
        layout.append(("raw", 1 + config.cca_top))
    return layout


def stats_dim(config: "ModelConfig") -> int:
    """Length S of the set-statistics vector for `config`."""
    return sum(size for _, size in stats_layout(config))


def ksg_stats_slice(config: "ModelConfig") -> slice:
    """Where the two KSG statistics sit in the set-statistics vector (see `set_statistics`)."""
    return slice(1 + config.cca_top, 3 + config.cca_top)


@functools.lru_cache(maxsize=16)
def _score_table(n: int) -> np.ndarray:
    """ndtri(r / (n + 1)) for the ranks r = 1..n (read-only; the same values as computing it per cell)."""
    t = ndtri(np.arange(1, n + 1, dtype=np.float64) / (n + 1))
    t.setflags(write=False)
    return t


def _normal_scores_t(at: np.ndarray) -> np.ndarray:
    """`normal_scores` on the transposed layout: at (d, n) float64 -> (d, n) scores.

    A column without ties has a unique sorting permutation (any sort algorithm finds it),
    and its scores are a permutation of the fixed table ndtri((1..n) / (n + 1)); columns
    with ties get scipy's average ranks, exactly as before.
    """
    d, n = at.shape
    z = np.empty((d, n))
    if n == 0 or d == 0:
        return z
    order = np.argsort(at, axis=1)
    cols = np.arange(d)[:, None]
    srt = at[cols, order]
    tied = np.any(srt[:, 1:] == srt[:, :-1], axis=1)
    z[cols, order] = _score_table(n)
    if tied.any():
        z[tied] = ndtri(rankdata(at[tied], axis=1) / (n + 1))
        z[srt[:, 0] == srt[:, -1]] = 0.0  # constant columns (finite input: ptp == 0)
    return z


def normal_scores(a: np.ndarray) -> np.ndarray:
    """Copula transform: (n, d) -> (n, d) normal scores Phi^-1(rank / (n + 1)).

    Ranks are per column, ties get their average rank; constant columns -> zeros.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.shape[0] == 0:
        return np.zeros_like(a)
    if not np.isfinite(a).all():  # rare: keep the general (ptp-based) handling of inf/nan
        return _normal_scores_general(a)
    return np.ascontiguousarray(_normal_scores_t(np.ascontiguousarray(a.T)).T)


def _normal_scores_general(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    order = np.argsort(a, axis=0, kind="stable")
    ranks = np.empty_like(a)
    np.put_along_axis(ranks, order, np.arange(1, n + 1, dtype=np.float64)[:, None], axis=0)
    tied = np.any(np.diff(np.take_along_axis(a, order, axis=0), axis=0) == 0, axis=0)
    if tied.any():
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


def robust_standardize(a: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float64: each column minus its median, over 1.4826 times its median absolute
    deviation (the standard deviation where that is 0; constant columns -> zeros), clipped to
    [-RAW_CLIP, RAW_CLIP].

    For Gaussian columns this is standardization (the scale estimates the standard deviation) and
    the clip is never reached at practical n; a few extreme values (heavy tails, outliers) cannot
    dominate the correlations of the rest.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    centered = a - np.median(a, axis=0)
    scale = 1.4826 * np.median(np.abs(centered), axis=0)
    flat = scale <= 0
    scale[flat] = centered[:, flat].std(axis=0)
    ok = scale > 0
    out = np.zeros_like(centered)
    out[:, ok] = np.clip(centered[:, ok] / scale[ok], -RAW_CLIP, RAW_CLIP)
    return out


def _orthonormal_basis(a: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis (n, r) of the column space of a centred (n, d) float64 matrix."""
    if a.numel() == 0:
        return a.new_zeros((a.shape[0], 0))
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        return a.new_zeros((a.shape[0], 0))
    return u[:, s > s[0] * rtol]


GRAM_MAX_COND = 1e4
"""Largest eigenvalue ratio of a block's Gram matrix for the fast CCA path (errors ~1e-12)."""
GRAM_ZERO = 1e-13
"""Gram eigenvalues below this fraction of the largest are exact rank deficiency (duplicated or
constant columns, n <= d): dropped, as the SVD path drops singular values below 1e-10 of the largest."""


NUMPY_LINALG_MAX_DIM = 16
"""Blocks up to this many columns use numpy's eigh/svd on the small Gram blocks (no threading at
that size, ~10x less overhead than torch.linalg); larger ones torch (which follows set_num_threads)."""


def _gram_whitener(g: np.ndarray) -> np.ndarray | None:
    """W (d, r) with W^T G W = I on the well-determined eigen-directions of a Gram matrix G (d, d).

    None when the spectrum is ambiguous (an eigenvalue between GRAM_ZERO and 1 / GRAM_MAX_COND of
    the largest): then only the SVD of the data decides the rank and the precision reliably.
    """
    if g.shape[0] <= NUMPY_LINALG_MAX_DIM:
        lam, vec = np.linalg.eigh(g)
    else:
        lam_t, vec_t = torch.linalg.eigh(torch.from_numpy(g))
        lam, vec = lam_t.numpy(), vec_t.numpy()
    top = float(lam[-1]) if lam.size else 0.0
    if top <= 0.0:
        return np.zeros((g.shape[0], 0))
    keep = lam > top / GRAM_MAX_COND
    if np.any((lam > top * GRAM_ZERO) & ~keep):
        return None
    return vec[:, keep] / np.sqrt(lam[keep])


def canonical_correlations(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
    """Sample canonical correlations of zx (n, dx) and zy (n, dy).

    Returns (min(dx, dy),) values in [0, R_MAX], sorted descending: the singular values of
    Qx^T Qy with Qx, Qy orthonormal bases of the centred columns (rank-truncated, so constant
    or duplicated columns and n barely above dx + dy do not break it); missing pairs (rank
    deficiency) are 0. When n - 1 < dx + dy the subspaces must intersect and some values
    are (clipped) 1: the head also gets log(n / (dx + dy)) to learn how much to trust them.

    Fast path: one Gram matrix of the centred data, whitened per block by its eigenvectors
    (d x d work instead of two n x d SVDs); used when both blocks are well conditioned or
    exactly rank deficient (`_gram_whitener`), otherwise the SVD path. Both give the same
    values to ~1e-12 (tests/test_preprocess.py).

    The linear algebra runs in torch (float64), which follows torch.set_num_threads:
    numpy's multithreaded OpenBLAS stalls 30-70x on a busy 2-core machine.
    """
    zx = np.asarray(zx, dtype=np.float64)
    zy = np.asarray(zy, dtype=np.float64)
    if zx.ndim == 1:
        zx = zx[:, None]
    if zy.ndim == 1:
        zy = zy[:, None]
    dx = zx.shape[1]
    k = min(dx, zy.shape[1])
    z = torch.from_numpy(np.concatenate([zx, zy], axis=1))
    z = z - z.mean(dim=0)
    g = (z.T @ z).numpy()  # (dx + dy, dx + dy), in torch: the one product that grows with n
    out = _correlations_from_gram(g, dx)
    return out if out is not None else _canonical_correlations_svd(z[:, :dx], z[:, dx:], k)


def _correlations_from_gram(g: np.ndarray, dx: int) -> np.ndarray | None:
    """`canonical_correlations` (min(dx, dy),) from the Gram matrix g (D, D) of centred data whose
    first dx columns are x; None when a block is ambiguously conditioned (`_gram_whitener`): then
    only the SVD of the data decides."""
    k = min(dx, g.shape[0] - dx)
    wx, wy = _gram_whitener(g[:dx, :dx]), _gram_whitener(g[dx:, dx:])
    if wx is None or wy is None:
        return None
    out = np.zeros(k)
    if wx.shape[1] and wy.shape[1]:
        m = wx.T @ g[:dx, dx:] @ wy
        if max(m.shape) <= NUMPY_LINALG_MAX_DIM:
            s = np.linalg.svd(m, compute_uv=False)
        else:
            s = torch.linalg.svdvals(torch.from_numpy(np.ascontiguousarray(m))).numpy()
        out[: min(k, s.size)] = s[:k]
    return np.clip(out, 0.0, R_MAX)


def _canonical_correlations_svd(zx: torch.Tensor, zy: torch.Tensor, k: int) -> np.ndarray:
    """`canonical_correlations` from orthonormal bases (SVDs) of the centred blocks (n, dx), (n, dy)."""
    out = np.zeros(k)
    qx = _orthonormal_basis(zx)
    qy = _orthonormal_basis(zy)
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
    return _CanonicalOrder(z, dx).subset(size, seed)


@functools.lru_cache(maxsize=32)
def _fixed_positions(seed: int, n: int, size: int) -> np.ndarray:
    """Sorted fixed-seed positions (read-only): np.sort(default_rng(seed).choice(n, size, replace=False))."""
    pos = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    pos.setflags(write=False)
    return pos


class _CanonicalOrder:
    """The canonical row order of `canonical_subset`, computed once and shared by several subsets."""

    def __init__(self, z: np.ndarray, dx: int):
        self.z = z
        keys = np.stack(
            [z.sum(axis=1), (z * z).sum(axis=1), z[:, :dx].sum(axis=1) * z[:, dx:].sum(axis=1)], axis=1
        )
        keys = np.round(keys, 8)
        self.order = order = np.lexsort(keys.T[::-1])
        sorted_keys = keys[order]
        new_group = np.r_[True, np.any(sorted_keys[1:] != sorted_keys[:-1], axis=1)]
        self.gid = np.cumsum(new_group) - 1
        self.all_distinct = bool(new_group.all())
        self.total = None if self.all_distinct else np.bincount(self.gid)

    def subset(self, size: int, seed: int) -> np.ndarray:
        n = self.z.shape[0]
        if n <= size:
            return np.arange(n)
        pos = _fixed_positions(seed, n, size)
        if self.all_distinct:  # every tie group is a single row: nothing is partly selected
            return self.order[pos]
        gid, total, order, z = self.gid, self.total, self.order, self.z
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


_BLOCK = 1 << 19
"""Elements of one kNN work buffer (2 MiB of float32): queries are processed in chunks of
_BLOCK // m rows (twice that on the int16 path), and column groups of the max-norm in (g, chunk, m)
blocks of at most this size. Since session 32's lanes made the selection a fixed number of small
operations per chunk, fewer and larger chunks win: 2 MiB instead of 1 MiB made whole calls 4-9%
faster at n >= 1,000 in session 33's interleaved timings, the same at n = 400 (README, log)."""

_DIFF_BLOCKS = 1
"""The max-norm's (g, chunk, m) difference block may span this many work buffers."""

_SELECT_BLOCK = 256
"""The k-th smallest distance per query is selected (numpy's partition) within blocks of this
many reference rows, then among the blocks' k smallest, once a row holds more than
2 * _SELECT_BLOCK: numpy's partition of the same number of values took several times longer in
rows of 1,024 than in rows of 256 or 512, for int16 and for the float32 bits as int32 alike
(session 13; scripts/bench_knn.py times the whole kNN step). Exact either way. Used for k
above _LANE_MAX_K and rows too short for the lanes of _kth_smallest."""

_LANES = 64
"""_kth_smallest keeps the k smallest of each of this many column lanes per row (columns j,
j + _LANES, j + 2 _LANES, ... form lane j mod _LANES), updated one (rows, _LANES) block at a
time by elementwise min/max, then selects among the lanes' candidates."""

_LANE_MAX_K = 4
"""Largest k for which _kth_smallest uses the lanes (2 k - 1 elementwise ops per element)."""

_LANE_MIN_BLOCKS = 6
"""_kth_smallest uses the lanes on int16 rows of at least this many (rows, _LANES) blocks. In session
32's timings (one thread) they beat numpy's partition on int16 rows of 500 and more, lost to it on
rows of 256, and lost on the float32 path's int32 rows at every width tried (256 to 2,000); the
whole-call effect is measured by `scripts/bench_infer.py --baseline REV` (README, Performance)."""

QUANT_SCALE = 4096
"""knn_quantize: normal scores are rounded to multiples of 1 / QUANT_SCALE and stored as int16."""

_QUANT_MAX = 16383
"""Largest |rounded score| of the int16 path, so that differences of two fit in int16
(|z| < 4.0: every normal score of up to about 15,000 rows; larger |z| use float32)."""

_WORKSPACE = threading.local()


def _knn_workspace() -> tuple[torch.Tensor, np.ndarray]:
    """Per-thread reusable buffers: (4 + _DIFF_BLOCKS, _BLOCK) float32 and (2 * _BLOCK,) bool (about 11 MiB).

    The kNN step needs a few 2 MiB temporaries per call; fresh ones are new pages every
    time (the allocator hands big blocks back to the OS), and the page faults cost more
    than the arithmetic. Reusing one workspace per thread keeps them warm. The buffers
    are made outside inference mode, so a first call under ``torch.inference_mode()``
    (prediction) does not leave inference tensors that a later training step could not write.
    """
    ws = getattr(_WORKSPACE, "buffers", None)
    if ws is None:
        with torch.inference_mode(False):
            ws = (torch.empty((4 + _DIFF_BLOCKS, _BLOCK), dtype=torch.float32), np.empty(2 * _BLOCK, dtype=bool))
        _WORKSPACE.buffers = ws
    return ws


def _max_norm_t(at: torch.Tensor, bt: torch.Tensor, out: torch.Tensor, tmp: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
    """Max-norm distances into out (p, q) from transposed inputs at (d, p), bt (d, q), float32 or int16.

    |a - b| and max are exact in floating point, so the result does not depend on how it
    is computed (it equals torch.cdist(a, b, p=inf) bit for bit, which is several times
    slower on CPU). tmp (p, q) and diff (flat, >= p * q elements) are scratch buffers; columns
    are processed in groups whose (g, p, q) difference block fits in diff.
    """
    d, p = at.shape
    q = bt.shape[1]
    step = max(1, diff.numel() // max(1, p * q))
    if step == 1 or out.dtype == torch.int16:  # torch.amax is slow on int16: one column at a time
        torch.sub(at[0, :, None], bt[0], out=out).abs_()
        for j in range(1, d):
            torch.sub(at[j, :, None], bt[j], out=tmp).abs_()
            torch.maximum(out, tmp, out=out)
        return out
    for j in range(0, d, step):
        g = min(step, d - j)
        block = diff[: g * p * q].view(g, p, q)
        torch.sub(at[j : j + g, :, None], bt[j : j + g, None, :], out=block).abs_()
        if j == 0:
            torch.amax(block, dim=0, out=out)
        else:
            torch.amax(block, dim=0, out=tmp)
            torch.maximum(out, tmp, out=out)
    return out


def _count_rows(b: np.ndarray) -> np.ndarray:
    """Number of True per row of a C-contiguous bool (c, m) array (popcount of 8 bytes at a time)."""
    if b.shape[1] % 8 == 0 and hasattr(np, "bitwise_count"):
        return np.bitwise_count(b.view(np.uint64)).sum(axis=1)
    return np.count_nonzero(b, axis=1)


def _kth_smallest(a: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest (1-based) of each row of a C-contiguous integer array a (c, m); may reorder a in place. (c,)

    For int16 rows of at least _LANE_MIN_BLOCKS * _LANES values and k <= _LANE_MAX_K, each
    row's columns are dealt into _LANES lanes, and an insertion network of elementwise min/max
    keeps every lane's k smallest (ties kept, as a multiset); the k smallest of a row are among
    its lanes' k smallest, so one partition of those k * _LANES candidates (plus the columns
    left over) gives the exact answer. Otherwise rows wider than 2 * _SELECT_BLOCK are
    partitioned in blocks first: the k smallest of a row are among its blocks' k smallest and
    the columns left over, so the result is exact.
    """
    c, m = a.shape
    w = _LANES
    nb = m // w
    if a.dtype == np.int16 and k <= _LANE_MAX_K and nb >= max(k, _LANE_MIN_BLOCKS):
        at = torch.from_numpy(a)
        blocks = at[:, : nb * w].view(c, nb, w)  # (c, nb, w): block j holds columns j w .. j w + w - 1
        # s[i] (c, w): the i-th smallest so far of each lane, s[0] <= s[1] <= ...; the first k
        # blocks fill them, so no placeholder value survives
        s = [blocks[:, 0].clone()] + [torch.full((c, w), torch.iinfo(at.dtype).max, dtype=at.dtype) for _ in range(k - 1)]
        tmp = torch.empty((c, w), dtype=at.dtype)
        for j in range(1, nb):
            v = blocks[:, j]
            for i in range(k - 1, 0, -1):  # insert v: s[i] <- min(s[i], max(s[i - 1], v)), old s[i - 1]
                torch.maximum(s[i - 1], v, out=tmp)
                torch.minimum(s[i], tmp, out=s[i])
            torch.minimum(s[0], v, out=s[0])
        a = np.concatenate([t.numpy() for t in s] + [a[:, nb * w :]], axis=1)  # (c, k w + m mod w)
        m = a.shape[1]
    b = _SELECT_BLOCK
    if m <= 2 * b or k > b:
        a.partition(k - 1, axis=1)
        return a[:, k - 1].copy()
    nb = m // b
    blocks = a[:, : nb * b].reshape(c, nb, b)  # a view (rows are contiguous)
    blocks.partition(k - 1, axis=2)
    cand = np.concatenate([blocks[:, :, :k].reshape(c, nb * k), a[:, nb * b :]], axis=1)  # (c, nb k + m mod b)
    cand.partition(k - 1, axis=1)
    return cand[:, k - 1].copy()


def quantized_scores(z: np.ndarray) -> np.ndarray | None:
    """z (n, D) rounded to multiples of 1 / QUANT_SCALE, as int16 (n, D); None if some |z| is too large for int16."""
    q = np.rint(np.asarray(z, dtype=np.float64) * QUANT_SCALE)
    if q.size and np.abs(q).max() > _QUANT_MAX:
        return None
    return q.astype(np.int16)


def knn_statistics(z: np.ndarray, dx: int, ref: np.ndarray, k: int, quantize: bool = False) -> tuple[np.ndarray, float]:
    """Per-row KSG (algorithm 1) statistics with max-norm distances on z (n, D).

    Every row is a query against the reference rows `ref` (itself excluded). With
    N = number of other reference rows + 1, eps_i = distance to the k-th neighbour in
    the joint space, nx_i / ny_i = number of reference rows strictly closer than eps_i
    in the x / y space, u_i = psi(N) - psi(nx_i + 1), v_i = psi(N) - psi(ny_i + 1):

        ksg_i = psi(k) + psi(N) - psi(nx_i + 1) - psi(ny_i + 1)   (mean = KSG MI, nats)

    Returns (features (n, 4) = [ksg_i, (u+v)/4, |u-v|/4, log(eps_i)/4], mean ksg_i).
    All features are symmetric under an x/y swap.

    Distances are float32 max-norms (exact, so eps and the counts do not depend on how
    they are computed); a query's own reference entry is set to +inf. With quantize=True
    (``ModelConfig.knn_quantize``) they are max-norms of the scores rounded to multiples of
    1 / QUANT_SCALE (`quantized_scores`), in int16, exact on those: about twice as fast, and
    a neighbour at almost exactly eps may count differently (KSG moves by about 1e-3 nats).
    Scores too large for int16 (|z| >= 4, e.g. the "standardize" input) fall back to float32.
    """
    n = z.shape[0]
    ref = np.asarray(ref, dtype=np.int64)
    m = ref.size
    k_eff = max(1, min(k, m - 1))
    q = quantized_scores(z) if quantize else None
    if q is not None:
        zt = torch.from_numpy(np.ascontiguousarray(q.T))  # (D, n) int16
        far = float(torch.iinfo(torch.int16).max)
    else:
        zt = torch.from_numpy(np.ascontiguousarray(np.asarray(z).T, dtype=np.float32))  # (D, n)
        far = float("inf")
    rt = zt[:, torch.from_numpy(ref)]  # (D, m)
    ref_pos = np.full(n, -1, dtype=np.int64)
    ref_pos[ref] = np.arange(m)
    eps = np.empty(n, dtype=np.float32)
    nx = np.empty(n, dtype=np.int64)
    ny = np.empty(n, dtype=np.int64)
    if m > _BLOCK:  # more reference rows than one buffer holds (not reached with sane configs)
        bufs, less_buf = torch.empty((4 + _DIFF_BLOCKS, m)), np.empty(2 * m, dtype=bool)
        chunk = 1
    else:
        bufs, less_buf = _knn_workspace()
        chunk = _BLOCK // m
    if q is not None:  # the same memory as (rows, 2 * columns) int16: twice the queries per chunk
        bufs = bufs.view(torch.int16)
        chunk = bufs.shape[1] // m
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        c = stop - start
        dxm, dym, joint, tmp = (bufs[i, : c * m].view(c, m) for i in range(4))
        diff = bufs[4:].view(-1)
        _max_norm_t(zt[:dx, start:stop], rt[:dx], dxm, tmp, diff)
        _max_norm_t(zt[dx:, start:stop], rt[dx:], dym, tmp, diff)
        qi = np.flatnonzero(ref_pos[start:stop] >= 0)
        if qi.size:  # a query never counts itself
            flat = torch.from_numpy(qi * m + ref_pos[start + qi])
            dxm.view(-1).index_fill_(0, flat, far)
            dym.view(-1).index_fill_(0, flat, far)
        torch.maximum(dxm, dym, out=joint)
        jn = joint.numpy()
        if q is not None:
            e = _kth_smallest(jn, k_eff)
            eps[start:stop] = e.astype(np.float32) / QUANT_SCALE
        else:
            # k-th neighbour distance; distances are >= 0 (or +inf), whose float32 bit patterns
            # order like int32, and integer selection is faster
            e = _kth_smallest(jn.view(np.int32), k_eff).view(np.float32)
            eps[start:stop] = e
        less = less_buf[: c * m].reshape(c, m)
        nx[start:stop] = _count_rows(np.less(dxm.numpy(), e[:, None], out=less))
        ny[start:stop] = _count_rows(np.less(dym.numpy(), e[:, None], out=less))
    self_hit = ref_pos >= 0
    feats = np.empty((n, KNN_FEATURES))
    psi_n = digamma(m - self_hit + 1.0)
    u = psi_n - digamma(nx + 1.0)
    v = psi_n - digamma(ny + 1.0)
    feats[:, 0] = digamma(k_eff) + u + v - psi_n
    feats[:, 1] = (u + v) / 4
    feats[:, 2] = np.abs(u - v) / 4
    feats[:, 3] = np.log(np.maximum(eps, 1e-6)) / 4
    return feats, float(feats[:, 0].mean())


def _standardized_columns(a: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n, d) columns scaled to mean 0 and unit norm (constant columns -> zeros), float64."""
    a = a - a.mean(dim=0)
    norm = a.norm(dim=0)
    return torch.where(norm > 1e-12, a / norm.clamp_min(1e-12), torch.zeros_like(a))


def column_statistics(z: np.ndarray, dx: int) -> np.ndarray:
    """Per-column dependence features (D, COL_FEATURES) of copula scores z (n, D) (x block first).

    For column j of one block against the columns k of the other block, with r_jk the
    correlation of the scores, s_jk that of the squared scores (dependence of spread:
    spirals, heavy tails, scale mixtures) and a_jk the larger of |corr(|z_j|, z_k)| and
    |corr(z_j, |z_k|)| (U-shaped dependence):

        [max_k |r_jk|, rms_k r_jk, max_k |s_jk|, rms_k s_jk, max_k a_jk,
         max |correlation with the other columns of its own block| (0 if none),
         sqrt(n) max_k |r_jk| / 8, sqrt(n) max_k |s_jk| / 8]

    (the last two are z-scores: about 1/8 under independence, whatever n). The features
    of a column do not depend on the order of rows or of the other columns, and the x
    and y blocks are treated alike, so an x/y swap only swaps the blocks' rows.
    Products in torch float64 (which follows torch.set_num_threads, like
    `canonical_correlations`); only the blocks that are used, each once: ~1.5 D^2 n multiply-adds
    for dx = dy.
    """
    z = np.asarray(z, dtype=np.float64)
    n, d = z.shape
    out = np.zeros((d, COL_FEATURES))
    if d < 2 or not 0 < dx < d or n < 3:
        return out
    zt = torch.from_numpy(z)
    u = _standardized_columns(zt)
    sq = _standardized_columns(zt * zt)
    ab = _standardized_columns(zt.abs())
    ux, uy = u[:, :dx], u[:, dx:]
    rxy = (ux.T @ uy).abs().numpy()  # (dx, dy) |correlations| across the blocks
    s = (sq[:, :dx].T @ sq[:, dx:]).abs().numpy()  # (dx, dy)
    a = np.maximum((ab[:, :dx].T @ uy).abs().numpy(), (ux.T @ ab[:, dx:]).abs().numpy())  # (dx, dy)
    for rows, block, cross, ss, aa in ((slice(0, dx), ux, rxy, s, a), (slice(dx, d), uy, rxy.T, s.T, a.T)):
        out[rows, 0] = cross.max(axis=1)
        out[rows, 1] = np.sqrt((cross * cross).mean(axis=1))
        out[rows, 2] = ss.max(axis=1)
        out[rows, 3] = np.sqrt((ss * ss).mean(axis=1))
        out[rows, 4] = aa.max(axis=1)
        own = (block.T @ block).abs().numpy()  # (d_block, d_block) within the block
        np.fill_diagonal(own, 0.0)
        out[rows, 5] = own.max(axis=1)
    out[:, 6] = np.sqrt(n) * out[:, 0] / 8
    out[:, 7] = np.sqrt(n) * out[:, 2] / 8
    return out


def _strata(key: np.ndarray, strata: int) -> np.ndarray:
    """Stratum (0 .. strata - 1) of every row by the rank of `key` (n,), rounded to 1e-8.

    Rows whose rounded keys tie share the stratum of the first of them, so the strata are
    the same sets of rows whatever the row order (exact permutation invariance)."""
    key = np.round(key, 8)
    first = np.searchsorted(np.sort(key), key, side="left")  # rank of each row's tie group
    return first * strata // key.size


def _gaussian_pair_mis(r: np.ndarray) -> np.ndarray:
    """Gaussian MI -1/2 log(1 - r_k^2) (nats) of each canonical correlation r_k, clipped to [0, R_MAX]."""
    return -0.5 * np.log1p(-np.clip(r, 0.0, R_MAX) ** 2)


def _pair_mis(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
    """`_gaussian_pair_mis` of the canonical correlations of zx (n, dx) and zy (n, dy)."""
    return _gaussian_pair_mis(canonical_correlations(zx, zy))


def _batched_eigh(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (b, d), ascending, and eigenvectors (b, d, d) of symmetric matrices a (b, d, d)."""
    if a.shape[-1] <= NUMPY_LINALG_MAX_DIM:
        return np.linalg.eigh(a)
    lam, vec = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(a)))
    return lam.numpy(), vec.numpy()


def _batched_svdvals(a: np.ndarray) -> np.ndarray:
    """Singular values (b, min(m, k)), descending, of matrices a (b, m, k)."""
    if max(a.shape[1:]) <= NUMPY_LINALG_MAX_DIM:
        return np.linalg.svd(a, compute_uv=False)
    return torch.linalg.svdvals(torch.from_numpy(np.ascontiguousarray(a))).numpy()


def grouped_canonical_correlations(
    z: np.ndarray, dx: int, group: np.ndarray, groups: int, min_rows: int = 3
) -> list[np.ndarray | None]:
    """`canonical_correlations` of z[:, :dx] and z[:, dx:] (z: (n, D)) within each group of rows.

    `group` (n,) holds each row's group in 0 .. groups - 1. Returns one entry per group, in
    group order: its correlations (min(dx, D - dx),), or None when it has fewer than
    `min_rows` rows. The
    same values as calling `canonical_correlations` per group (to ~1e-12), but the Gram
    matrices, whiteners and SVDs of the well-conditioned full-rank groups are computed as one
    batch (one call at n = 1000 with 8 groups costs about a quarter of the loop); the other
    groups go through `canonical_correlations` itself.
    """
    z = np.asarray(z, dtype=np.float64)
    d = z.shape[1]
    dy = d - dx
    counts = np.bincount(group, minlength=groups)
    kept = np.flatnonzero(counts >= min_rows)
    result: list[np.ndarray | None] = [None] * groups
    if kept.size == 0:
        return result
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    width = int(counts[kept].max())
    # rows of each kept group, centred, zero-padded to a common length: (groups', width, D)
    slot = np.full(groups, -1)
    slot[kept] = np.arange(kept.size)
    sorted_group = group[order]
    take = slot[sorted_group] >= 0
    onehot = np.zeros((z.shape[0], groups))
    onehot[np.arange(z.shape[0]), group] = 1.0
    means = (onehot.T @ z) / np.maximum(counts, 1)[:, None]  # (groups, D)
    padded = np.zeros((kept.size, width, d))
    within = np.arange(z.shape[0]) - starts[sorted_group]  # position of each sorted row in its group
    padded[slot[sorted_group[take]], within[take]] = z[order[take]] - means[sorted_group[take]]
    pt = torch.from_numpy(padded)
    gram = torch.bmm(pt.transpose(1, 2), pt).numpy()  # (groups', D, D)
    lx, vx = _batched_eigh(gram[:, :dx, :dx])
    ly, vy = _batched_eigh(gram[:, dx:, dx:])
    # full rank and well conditioned (`_gram_whitener` keeps every direction): batch these
    batched = (lx[:, 0] > lx[:, -1] / GRAM_MAX_COND) & (ly[:, 0] > ly[:, -1] / GRAM_MAX_COND) & (lx[:, -1] > 0) & (ly[:, -1] > 0)
    if batched.any():
        wx = vx[batched] / np.sqrt(lx[batched])[:, None, :]  # (b, dx, dx): W^T G W = I
        wy = vy[batched] / np.sqrt(ly[batched])[:, None, :]
        m = wx.transpose(0, 2, 1) @ gram[batched][:, :dx, dx:] @ wy  # (b, dx, dy), whitened cross block
        sv = np.clip(_batched_svdvals(m), 0.0, R_MAX)  # (b, min(dx, dy)), descending
        for i, r in zip(np.flatnonzero(batched), sv):
            result[kept[i]] = r
    for i in np.flatnonzero(~batched):
        rows = z[order[starts[kept[i]]:starts[kept[i] + 1]]]
        result[kept[i]] = canonical_correlations(rows[:, :dx], rows[:, dx:])
    return result


def stratified_statistics(z: np.ndarray, dx: int, strata: int) -> np.ndarray:
    """Radius-stratified Gaussian-copula MI (5,) of copula scores z (n, D) (x block first).

    Rows are split into S = min(`strata`, n // (2 D)) strata by the norm |z_x| of their
    x part, and separately by |z_y|; within each stratum the canonical correlations r_k
    give the Gaussian MI sum_k -1/2 log(1 - r_k^2) (nats) and its largest pair term,
    averaged over the strata. Why: a rotation whose angle depends on the radius (the
    spiral), or a scale shared by all coordinates (Student-t and other elliptical laws),
    hides a linear dependence from the global canonical correlations; within a thin
    shell of the radius it is nearly linear again. Returns, symmetric in x and y,

        [log1p(max(G_x, G_y)), log1p(min(G_x, G_y)), log1p(max(T_x, T_y)),
         log(n / (S D)) / 5, 1]

    (G: the stratified MI, T: its top pair term, by x-norm and y-norm strata), or zeros
    when S < 2 (too few rows per stratum for canonical correlations). The strata use tie-aware
    ranks (`_strata`), so the features do not depend on the order of rows or of the
    coordinates within a block.
    """
    z = np.asarray(z, dtype=np.float64)
    n, d = z.shape
    s = min(int(strata), n // (2 * d)) if 0 < dx < d else 0
    out = np.zeros(5)
    if s < 2:
        return out
    # strata by the x norm are groups 0 .. s - 1, by the y norm s .. 2 s - 1 (rows appear in both)
    which = [_strata(np.sqrt((b * b).sum(axis=1)), s) for b in (z[:, :dx], z[:, dx:])]
    r = grouped_canonical_correlations(np.concatenate([z, z]), dx, np.concatenate([which[0], which[1] + s]), 2 * s)
    g, t = [], []
    for half in (r[:s], r[s:]):
        pairs = [_gaussian_pair_mis(c) for c in half if c is not None]
        g.append(float(np.mean([p.sum() for p in pairs])) if pairs else 0.0)
        t.append(float(np.mean([p.max() if p.size else 0.0 for p in pairs])) if pairs else 0.0)
    out[:] = [np.log1p(max(g)), np.log1p(min(g)), np.log1p(max(t)), np.log(n / (s * d)) / 5, 1.0]
    return out


def hermite_statistics(z: np.ndarray, dx: int) -> np.ndarray:
    """Canonical correlations of second-order Hermite features (3,) of copula scores z (n, D).

    Each block is expanded to [z, z^2 - 1] (its coordinates and their squares, the first two
    Hermite polynomials), so the canonical correlations also see dependence of magnitude and
    U-shaped relations that no linear combination shows. Returns
    [log1p(sum_k I_k), log1p(max_k I_k), log1p(sum_k I'_k)] with I_k = -1/2 log(1 - r_k^2)
    of the expanded blocks and I'_k of the squares alone (nats), or zeros when n < 4 D + 4.
    """
    z = np.asarray(z, dtype=np.float64)
    n, d = z.shape
    out = np.zeros(3)
    if n < 4 * d + 4 or not 0 < dx < d:
        return out
    dy = d - dx
    h = np.concatenate([z[:, :dx], z * z - 1.0, z[:, dx:]], axis=1)  # (n, 2 D): [x, x^2 - 1, y^2 - 1, y]
    ht = torch.from_numpy(h - h.mean(axis=0))
    g = (ht.T @ ht).numpy()  # one Gram matrix for both problems
    sq = np.arange(dx, dx + d)  # [x^2 - 1, y^2 - 1]
    r_both, r_sq = _correlations_from_gram(g, 2 * dx), _correlations_from_gram(g[np.ix_(sq, sq)], dx)
    if r_both is None or r_sq is None:  # ambiguous conditioning: the data's SVD decides
        r_both = canonical_correlations(h[:, : 2 * dx], h[:, 2 * dx:])
        r_sq = canonical_correlations(h[:, dx: 2 * dx], h[:, 2 * dx: 2 * dx + dy])
    both, squares = _gaussian_pair_mis(r_both), _gaussian_pair_mis(r_sq)
    out[:] = [np.log1p(both.sum()), np.log1p(both.max()), np.log1p(squares.sum())]
    return out


def _ksg_among(u: np.ndarray, dx: int, ref: np.ndarray, k: int) -> float:
    """KSG MI (nats) of u[ref] (x block: its first dx columns) with only those rows as queries and
    references: a (|ref|, |ref|) search (at most NONLINEAR_KNN_ROWS squared), on the int16 path
    (`knn_statistics` with quantize=True; copula scores of a few hundred rows stay below its limit)."""
    sub = np.ascontiguousarray(u[np.asarray(ref)])
    return knn_statistics(sub, dx, np.arange(sub.shape[0]), k, quantize=True)[1]


def ksg_among(u: np.ndarray, problems: Sequence[tuple[Sequence[int], Sequence[int]]], ref: np.ndarray, k: int) -> np.ndarray:
    """KSG MI (P,) in nats of P problems on the rows `ref` of u (n, C), each (x columns, y columns) of u.

    For each problem the same value as `_ksg_among` on its columns (rows of u[ref] as queries
    and references, each query excluding itself, k neighbours, max-norm distances of the scores
    rounded to 1 / QUANT_SCALE), but the per-column distances of the (m, m) search are computed
    once and the P searches share one selection and one count: one pass instead of P, which is
    what keeps the small searches of `nonlinear_statistics` from being dominated by per-call
    overhead. Falls back to `_ksg_among` per problem when the scores are too large for int16.
    """
    ref = np.asarray(ref, dtype=np.int64)
    sub = np.ascontiguousarray(u[ref])  # (m, C)
    q = quantized_scores(sub)
    m = ref.size
    if q is None or m < 2 or not problems:
        return np.array([_ksg_among(u[:, list(xs) + list(ys)], len(xs), ref, k) for xs, ys in problems])
    k_eff = max(1, min(k, m - 1))
    qt = torch.from_numpy(np.ascontiguousarray(q.T))  # (C, m) int16
    diff = torch.sub(qt[:, :, None], qt[:, None, :]).abs_()  # (C, m, m) per-column distances, exact in int16
    far = torch.iinfo(torch.int16).max
    marg = torch.empty((2 * len(problems), m, m), dtype=torch.int16)  # (2 P, m, m): x then y distance per problem
    for i, cols in enumerate(c for xs_ys in problems for c in xs_ys):
        marg[i].copy_(diff[cols[0]])
        for c in cols[1:]:
            torch.maximum(marg[i], diff[c], out=marg[i])
    marg.diagonal(dim1=1, dim2=2).fill_(far)  # a query never counts itself
    joint = torch.maximum(marg[0::2], marg[1::2]).numpy().reshape(-1, m)  # (P m, m)
    eps = _kth_smallest(joint, k_eff).reshape(len(problems), 1, m, 1)  # (P, 1, m, 1)
    less = marg.numpy().reshape(len(problems), 2, m, m) < eps  # (P, 2, m, m)
    counts = _count_rows(less.reshape(-1, m)).reshape(len(problems), 2, m)  # (P, 2, m): nx, ny
    psi_n = digamma(float(m))  # N = the m - 1 other reference rows + 1, as in knn_statistics
    term_x = psi_n - digamma(counts[:, 0] + 1.0)  # (P, m)
    term_y = psi_n - digamma(counts[:, 1] + 1.0)
    return (digamma(k_eff) + term_x + term_y - psi_n).mean(axis=1)


def _norm_scores(z: np.ndarray, dx: int) -> tuple[np.ndarray, float]:
    """The two blocks' row norms of z (n, D), copula-transformed (n, 2), and the Gaussian MI (nats) of their ranks."""
    norms = np.stack([np.sqrt((z[:, :dx] ** 2).sum(axis=1)), np.sqrt((z[:, dx:] ** 2).sum(axis=1))])
    u = normal_scores(norms.T)  # (n, 2)
    uc = u - u.mean(axis=0)
    den = np.sqrt((uc * uc).sum(axis=0).prod())
    rho = float((uc[:, 0] * uc[:, 1]).sum() / den) if den > 0 else 0.0
    return u, float(-0.5 * np.log1p(-min(rho * rho, R_MAX)))


def norm_statistics(z: np.ndarray, dx: int, ref: np.ndarray, k: int) -> np.ndarray:
    """Dependence of the two blocks' row norms (2,): [KSG MI of (|z_x|, |z_y|), Gaussian MI of their ranks].

    The norms are copula-transformed over all n rows (normal scores, ties averaged); the KSG
    estimate (k neighbours) is taken among the reference rows `ref` alone (`ksg_among`), the
    Gaussian MI -1/2 log(1 - rho^2) from the correlation rho of all rows. Nats. A radius shared
    by x and y (elliptical laws, heavy tails) shows here.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.shape[0] < 4:
        return np.zeros(2)
    u, gauss = _norm_scores(z, dx)
    return np.array([ksg_among(u, [([0], [1])], ref, k)[0], gauss])


def _projected_scores(z: np.ndarray, dx: int, top: int) -> np.ndarray | None:
    """Copula scores (n, 2 m) of the first m = min(top, ranks) canonical variates [x_1..x_m, y_1..y_m]
    of z (n, D), or None when n < D + 4 or a block has rank 0 (`projected_ksg_statistics`)."""
    n, d = z.shape
    if n < d + 4 or not 0 < dx < d:
        return None
    px, py = canonical_variates(z[:, :dx], z[:, dx:], top)
    if px.shape[1] == 0:
        return None
    p = np.concatenate([px, py], axis=1)
    # unit-variance projections rounded to 1e-8: tied rows (discrete data) stay tied whatever
    # the floating-point path of the SVD (row or coordinate order), so their ranks do too
    p = np.round(p / np.maximum(p.std(axis=0), 1e-300), 8)
    return normal_scores(p)


def _projected_problems(m: int, offset: int = 0) -> list[tuple[list[int], list[int]]]:
    """The two KSG problems of `projected_ksg_statistics` on scores [x_1..x_m, y_1..y_m] starting at column `offset`."""
    return [(list(range(offset, offset + m)), list(range(offset + m, offset + 2 * m))), ([offset], [offset + m])]


def projected_ksg_statistics(z: np.ndarray, dx: int, ref: np.ndarray, k: int, top: int = 4) -> np.ndarray:
    """KSG MI (2,) on the top canonical variates of copula scores z (n, D), nats.

    x and y are projected on their first m = min(`top`, dx, dy) canonical directions
    (`canonical_variates`, from all n rows), each projection is copula-transformed, and KSG
    (k neighbours, among the reference rows `ref` alone: `ksg_among`) is computed on the 2m
    projected columns and on the first pair alone. Low-dimensional, so KSG saturates far less than on all D columns, and nonlinear
    (bent) dependence along the canonical directions still counts. Zeros when n < D + 4.
    """
    u = _projected_scores(np.asarray(z, dtype=np.float64), dx, top)
    if u is None:
        return np.zeros(2)
    return ksg_among(u, _projected_problems(u.shape[1] // 2), ref, k)


def canonical_variates(zx: np.ndarray, zy: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The first m = min(top, ranks) canonical variate pairs (n, m), (n, m) of zx (n, dx) and zy (n, dy).

    Orthonormal bases of the centred blocks (rank-truncated SVD) and the SVD of their cross
    product; each pair's common sign is fixed so that the x variate's largest-|value| row is positive
    (a sign flip of a pair would not change the KSG statistics anyway: max-norm distances).
    Fast path as in `canonical_correlations`: the blocks' Gram matrices whitened by their
    eigenvectors stand in for the SVD bases when both are well conditioned (`_gram_whitener`)."""
    xc, yc = zx - zx.mean(axis=0), zy - zy.mean(axis=0)
    dx = xc.shape[1]
    zt = torch.from_numpy(np.concatenate([xc, yc], axis=1))
    g = (zt.T @ zt).numpy()
    wx, wy = _gram_whitener(g[:dx, :dx]), _gram_whitener(g[dx:, dx:])
    if wx is not None and wy is not None:  # x basis: xc @ wx (orthonormal columns), y likewise
        m = min(top, wx.shape[1], wy.shape[1])
        if m == 0:
            return np.zeros((zx.shape[0], 0)), np.zeros((zx.shape[0], 0))
        u, _, vh = np.linalg.svd(wx.T @ g[:dx, dx:] @ wy)
        px, py = xc @ (wx @ u[:, :m]), yc @ (wy @ vh[:m].T)
    else:
        qx, qy = _orthonormal_basis(torch.from_numpy(xc)), _orthonormal_basis(torch.from_numpy(yc))
        m = min(top, qx.shape[1], qy.shape[1])
        if m == 0:
            return np.zeros((zx.shape[0], 0)), np.zeros((zx.shape[0], 0))
        u, _, vh = torch.linalg.svd(qx.T @ qy, full_matrices=False)
        px, py = (qx @ u[:, :m]).numpy(), (qy @ vh[:m].T).numpy()
    sign = np.sign(px[np.abs(px).argmax(axis=0), np.arange(m)])
    sign[sign == 0] = 1.0
    return px * sign, py * sign


def nonlinear_statistics(z: np.ndarray, dx: int, ref: np.ndarray, config: "ModelConfig") -> np.ndarray:
    """Set statistics of nonlinear dependence (NONLINEAR_FEATURES,) of copula scores z (n, D).

    [`stratified_statistics` (5), `hermite_statistics` (3), `norm_statistics` (2),
    `projected_ksg_statistics` (2)]: each reads a kind of dependence that the global canonical
    correlations miss (radius-dependent rotations, dependence of magnitude, shared radii, bent
    relations along the canonical directions). All are symmetric in x and y and do not depend on
    the order of rows or of the coordinates within a block. `ref`: the rows of z that the KSG
    statistics use. `prepare_batch` passes at most NONLINEAR_ROWS rows of a set as z (a
    `canonical_subset`, random in training) and at most NONLINEAR_KNN_ROWS of those as `ref`,
    so the cost (2-4 ms on one core, by machine; `scripts/bench_model.py --set use_nonlinear_stats=true`
    against the same command without it) does not grow with n. The three KSG problems of
    `norm_statistics` and `projected_ksg_statistics` share one `ksg_among` pass (same values as
    calling those functions).
    """
    z = np.asarray(z, dtype=np.float64)
    out = np.concatenate([stratified_statistics(z, dx, config.strata), hermite_statistics(z, dx), np.zeros(4)])
    # the three KSG problems of norm_statistics and projected_ksg_statistics in one `ksg_among` pass
    scores, problems, slots = [], [], []
    if z.shape[0] >= 4:
        u, out[9] = _norm_scores(z, dx)
        scores.append(u)
        problems.append(([0], [1]))
        slots.append(8)
    proj = _projected_scores(z, dx, 4)
    if proj is not None:
        offset = 2 * len(scores)
        scores.append(proj)
        problems += _projected_problems(proj.shape[1] // 2, offset)
        slots += [10, 11]
    if problems:
        out[slots] = ksg_among(np.concatenate(scores, axis=1), problems, ref, config.knn_k)
    return out


def set_statistics(r: np.ndarray | None, ksg_mean: float | None, n: int, dx: int, dy: int, cca_top: int) -> np.ndarray:
    """Swap-symmetric statistics (S,) of one set for the head.

    [log1p(gaussian-copula MI), log1p(top-`cca_top` pair MIs -1/2 log(1 - r_k^2), 0-padded),
     mean KSG, log1p(max(KSG, 0)), log n / 5, (log dx + log dy) / 3, |log dx - log dy| / 3,
     log(n / (dx + dy)) / 5, log min(dx, dy) / 3]. Disabled statistics (r or ksg_mean None) are 0.
    """
    top = np.zeros(cca_top)
    gc = 0.0
    if r is not None and r.size:
        pair = _gaussian_pair_mis(r)
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


def raw_statistics(x: np.ndarray, y: np.ndarray, cca_top: int) -> np.ndarray:
    """Gaussian MI of the canonical correlations of the raw values, (1 + cca_top,) in log1p nats.

    [log1p(-1/2 sum log(1 - r_k^2)), log1p of the top-`cca_top` pair terms (0-padded)], with r_k
    the canonical correlations of `robust_standardize`d x (n, dx) and y (n, dy), each clipped to
    R_MAX as in `set_statistics`. Ranks (the copula scores) cannot show a correlation closer to 1
    than about 1 - 1/n^2 allows, so near-deterministic linear relations read as a few nats there;
    on the raw values they read as what they are (DESIGN.md: a learned estimator can exceed
    log n where the sample shows the structure). Not invariant to monotone maps of the
    coordinates, unlike every other input: the head also has the copula statistics and learns
    when the two disagree. Symmetric in x and y and invariant to the order of rows and of the
    coordinates within a block.
    """
    x, y = _as_2d(x), _as_2d(y)
    dx = x.shape[1]
    z = robust_standardize(np.concatenate([x, y], axis=1))  # per column: both blocks in one pass
    pair = _gaussian_pair_mis(canonical_correlations(z[:, :dx], z[:, dx:]))  # descending, as the correlations
    top = np.zeros(cca_top)
    m = min(cca_top, pair.size)
    top[:m] = pair[:m]
    return np.log1p(np.concatenate([[pair.sum()], top]))


@functools.lru_cache(maxsize=64)
def _normal_quantiles(n: int) -> np.ndarray:
    """Standardized normal quantiles at (i - 3/8) / (n + 1/4), i = 1..n (Blom's plotting positions), (n,)."""
    q = ndtri((np.arange(1, n + 1) - 0.375) / (n + 0.25))
    q = (q - q.mean()) / q.std()
    q.flags.writeable = False
    return q


def marginal_shape_statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How Gaussian the raw columns look, per block, (SHAPE_FEATURES,) = (10,), dimensionless.

    Per column j of x (n, dx) and y (n, dy): w_j = -log(1 - r_j), r_j the correlation of the
    sorted standardized values with the normal quantiles at (i - 3/8) / (n + 1/4) (the
    Shapiro-Francia statistic: large for Gaussian-looking columns), log of the kurtosis and
    |skewness|. Per block: [min w, mean w, max log-kurtosis, mean log-kurtosis, mean |skewness|].
    Returns the elementwise minimum of the two blocks' five values, then their maximum, so the
    vector is symmetric in x and y; invariant to the order of rows, of the coordinates within
    a block and to an affine map of each coordinate (not to other monotone maps,
    by design). Why: a refiner fitted on plain sets (identity and linear transforms) reads their
    raw values' Gaussian MI better, and these tell such sets from bent ones whose linear
    statistics look alike (design log, session 36). Constant columns give w = 0.
    """
    x, y = _as_2d(x), _as_2d(y)
    zt = np.concatenate([x.T, y.T], axis=0)  # (D, n): each column contiguous
    d, n = zt.shape
    dx = x.shape[1]
    zt -= zt.mean(axis=1, keepdims=True)
    sq = zt * zt
    zt /= np.maximum(np.sqrt(sq.mean(axis=1, keepdims=True)), 1e-12)
    sq = zt * zt  # squared standardized values
    r = np.clip(np.sort(zt, axis=1) @ _normal_quantiles(n) / n, -1.0, 1.0)  # (D,)
    w = -np.log(np.maximum(1.0 - r, 1e-9))
    kurt = np.log(np.maximum((sq * sq).mean(axis=1), 1e-9))
    skew = np.abs((sq * zt).mean(axis=1))
    per_block = [np.array([w[b].min(), w[b].mean(), kurt[b].max(), kurt[b].mean(), skew[b].mean()])
                 for b in (slice(0, dx), slice(dx, d))]
    return np.concatenate([np.minimum(*per_block), np.maximum(*per_block)])


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
    if config.input_transform not in ("copula", "standardize"):
        raise ValueError(f"unknown input_transform {config.input_transform!r}")
    copula = config.input_transform == "copula"
    per_set = []
    for i, (x, y) in enumerate(sets):
        x, y = _as_2d(x), _as_2d(y)
        if x.shape[0] != y.shape[0] or x.shape[0] < 2 or x.shape[1] < 1 or y.shape[1] < 1:
            raise ValueError(f"set {i}: need x (n, dx), y (n, dy) with n >= 2, got {x.shape} and {y.shape}")
        n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
        if copula and np.isfinite(x).all() and np.isfinite(y).all():
            # per-column transform: both blocks in one pass on the transposed layout
            zt = _normal_scores_t(np.concatenate([x.T, y.T], axis=0))
            z = np.ascontiguousarray(zt.T)  # (n, D), C order as the subset keys expect
            zx, zy = z[:, :dx], z[:, dx:]
        else:
            transform = normal_scores if copula else standardize
            zx, zy = transform(x), transform(y)
            z = np.concatenate([zx, zy], axis=1)
        canon = None
        sizes = [config.cell_rows] + [config.knn_rows] * config.use_knn
        sizes += [NONLINEAR_ROWS] * config.use_nonlinear_stats
        if rng is None and n > min(sizes):
            canon = _CanonicalOrder(z, dx)  # shared by the cell subset and the reference rows

        def subset(size: int, seed: int) -> np.ndarray:
            if n <= size:
                return np.arange(n)
            if rng is not None:
                return np.sort(rng.choice(n, size, replace=False))
            return canon.subset(size, seed)

        cell_idx = subset(config.cell_rows, SUBSET_SEED)
        r = canonical_correlations(zx, zy) if config.use_cca else None
        knn, ksg = None, None
        if config.use_knn:
            ref = subset(config.knn_rows, SUBSET_SEED + 1)
            knn, ksg = knn_statistics(z, dx, ref, config.knn_k, quantize=config.knn_quantize)
        stats = set_statistics(r, ksg, n, dx, dy, config.cca_top)
        if config.use_nonlinear_stats:
            zs = z[subset(NONLINEAR_ROWS, SUBSET_SEED + 2)]  # (n', D), n' <= NONLINEAR_ROWS
            if canon is not None and canon.all_distinct and n > NONLINEAR_ROWS:
                # zs holds distinct rows in ascending key order, so its own canonical order is the
                # identity and `canonical_subset(zs, ...)` reduces to the fixed positions
                ref = _fixed_positions(SUBSET_SEED + 3, NONLINEAR_ROWS, NONLINEAR_KNN_ROWS)
            else:
                ref = canonical_subset(zs, dx, NONLINEAR_KNN_ROWS, rng=rng, seed=SUBSET_SEED + 3)
            stats = np.concatenate([stats, nonlinear_statistics(zs, dx, ref, config)])
        if config.use_raw_stats:
            stats = np.concatenate([stats, raw_statistics(x, y, config.cca_top)])
        cols = column_statistics(z, dx) if config.use_col_stats else None
        shape = marginal_shape_statistics(x, y) if config.refine_inputs == "stats+shape" else None
        per_set.append((z, dx, dy, cell_idx, knn, stats, cols, shape))

    b = len(per_set)
    big_n = max(p[0].shape[0] for p in per_set)
    big_r = max(p[3].size for p in per_set)
    big_dx = max(p[1] for p in per_set)
    big_dy = max(p[2] for p in per_set)
    d = big_dx + big_dy
    rows = np.zeros((b, big_n, d), dtype=np.float32)
    cells = np.zeros((b, big_r, d), dtype=np.float32)
    row_mask = np.zeros((b, big_n), dtype=bool)
    cell_mask = np.zeros((b, big_r), dtype=bool)
    col_mask = np.zeros((b, d), dtype=bool)
    knn_t = np.zeros((b, big_n, KNN_FEATURES), dtype=np.float32)
    cols_t = np.zeros((b, d, COL_FEATURES), dtype=np.float32)
    stats_t = np.zeros((b, stats_dim(config)), dtype=np.float32)
    shape_t = np.zeros((b, SHAPE_FEATURES), dtype=np.float32)
    ns, dxs, dys = (np.zeros(b, dtype=np.int64) for _ in range(3))
    for i, (z, dx, dy, cell_idx, knn, stats, cols, shape) in enumerate(per_set):
        n = z.shape[0]
        if dx == big_dx:  # x and y blocks are adjacent: one copy
            rows[i, :n, : dx + dy] = z
        else:
            rows[i, :n, :dx] = z[:, :dx]
            rows[i, :n, big_dx : big_dx + dy] = z[:, dx:]
        cells[i, : cell_idx.size] = rows[i, cell_idx]
        row_mask[i, :n] = True
        cell_mask[i, : cell_idx.size] = True
        col_mask[i, :dx] = True
        col_mask[i, big_dx : big_dx + dy] = True
        if knn is not None:
            knn_t[i, :n] = knn
        if cols is not None:
            cols_t[i, :dx] = cols[:dx]
            cols_t[i, big_dx : big_dx + dy] = cols[dx:]
        stats_t[i] = stats
        if shape is not None:
            shape_t[i] = shape
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
        cols=torch.from_numpy(cols_t),
        stats=torch.from_numpy(stats_t),
        n=torch.from_numpy(ns),
        dx=torch.from_numpy(dxs),
        dy=torch.from_numpy(dys),
        shape=torch.from_numpy(shape_t),
    )
