"""Optimised preprocessing and forward pass == the straightforward reference implementation.

The reference functions below are verbatim copies of model/preprocess.py, model/blocks.py
and model/network.py as they were before the speed work (renamed ref_*; the forward
reference reuses the model's own nn.Linear / nn.LayerNorm parameters). A checkpoint was
trained with that code, so the optimised code must reproduce its outputs (prepare_batch
fields and MIEstimator.forward) to within 1e-5 on every input: several shapes, n above
knn_rows and cell_rows, ties, constant columns, padding, both input transforms.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import digamma, ndtri
from scipy.stats import rankdata

from model.network import MIEstimator, ModelConfig
from model.preprocess import (
    COL_FEATURES,
    KNN_FEATURES,
    R_MAX,
    SHAPE_FEATURES,
    SUBSET_SEED,
    Batch,
    canonical_correlations,
    canonical_subset,
    knn_statistics,
    normal_scores,
    prepare_batch,
    stats_dim,
)

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- reference preprocessing (verbatim)

def ref_normal_scores(a: np.ndarray) -> np.ndarray:
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



def ref_standardize(a: np.ndarray) -> np.ndarray:
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



def ref_orthonormal_basis(a: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis (n, r) of the column space of a centred (n, d) float64 matrix."""
    if a.numel() == 0:
        return a.new_zeros((a.shape[0], 0))
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    if s.numel() == 0 or s[0] <= 0:
        return a.new_zeros((a.shape[0], 0))
    return u[:, s > s[0] * rtol]



def ref_canonical_correlations(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
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
    qx = ref_orthonormal_basis(torch.from_numpy(zx - zx.mean(axis=0)))
    qy = ref_orthonormal_basis(torch.from_numpy(zy - zy.mean(axis=0)))
    if qx.shape[1] and qy.shape[1]:
        s = torch.linalg.svdvals(qx.T @ qy).numpy()
        out[: min(k, s.size)] = s[:k]
    return np.clip(out, 0.0, R_MAX)



def ref_canonical_subset(
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



def ref_max_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Max-norm distances (p, q) between rows of a (p, d) and b (q, d); exact, order-independent."""
    if a.shape[1] == 1:
        return (a - b.T).abs_()
    return torch.cdist(a, b, p=float("inf"))  # fused kernel, ~2x faster than a column loop



def ref_knn_statistics(z: np.ndarray, dx: int, ref: np.ndarray, k: int) -> tuple[np.ndarray, float]:
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
        dxm = ref_max_norm(zx[start:stop], rx).numpy()  # (c, m) float32
        dym = ref_max_norm(zy[start:stop], ry).numpy()
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



def ref_set_statistics(r: np.ndarray | None, ksg_mean: float | None, n: int, dx: int, dy: int, cca_top: int) -> np.ndarray:
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



def ref_as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a



def ref_prepare_batch(
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
        transform = ref_normal_scores
    elif config.input_transform == "standardize":
        transform = ref_standardize
    else:
        raise ValueError(f"unknown input_transform {config.input_transform!r}")
    per_set = []
    for i, (x, y) in enumerate(sets):
        x, y = ref_as_2d(x), ref_as_2d(y)
        if x.shape[0] != y.shape[0] or x.shape[0] < 2 or x.shape[1] < 1 or y.shape[1] < 1:
            raise ValueError(f"set {i}: need x (n, dx), y (n, dy) with n >= 2, got {x.shape} and {y.shape}")
        zx, zy = transform(x), transform(y)
        z = np.concatenate([zx, zy], axis=1)
        n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
        cell_idx = ref_canonical_subset(z, dx, config.cell_rows, rng)
        r = ref_canonical_correlations(zx, zy) if config.use_cca else None
        knn, ksg = None, None
        if config.use_knn:
            ref = ref_canonical_subset(z, dx, config.knn_rows, rng, seed=SUBSET_SEED + 1)
            knn, ksg = ref_knn_statistics(z, dx, ref, config.knn_k)
        stats = ref_set_statistics(r, ksg, n, dx, dy, config.cca_top)
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
        cols=torch.zeros((b, d, COL_FEATURES)),
        stats=torch.from_numpy(stats_t),
        n=torch.from_numpy(ns),
        dx=torch.from_numpy(dxs),
        dy=torch.from_numpy(dys),
        shape=torch.zeros((b, SHAPE_FEATURES)),
    )


# ----------------------------------------------------------------------------- reference forward (verbatim math)


def ref_attention_mask(key_valid):
    safe = key_valid | ~key_valid.any(dim=-1, keepdim=True)
    return safe[..., None, None, :]


def ref_mab(mab, q, k=None, attn_mask=None):
    heads = mab.heads

    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    lead = q.shape[:-2]
    qn = mab.ln_q(q)
    kn = qn if k is None else mab.ln_k(k)
    key, value = mab.to_kv(kn.flatten(0, -3)).chunk(2, dim=-1)
    query = mab.to_q(qn.flatten(0, -3))
    if attn_mask is not None:
        attn_mask = attn_mask.expand(*lead, *attn_mask.shape[-3:]).flatten(0, -4)
    att = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=attn_mask)
    h = q + mab.out(att.transpose(1, 2).flatten(-2).unflatten(0, lead))
    return h + mab.ffn(mab.ln_f(h))


def ref_isab(isab, x, key_valid=None):
    ind = isab.inducing.expand(*x.shape[:-2], *isab.inducing.shape)
    mask = None if key_valid is None else ref_attention_mask(key_valid)
    h = ref_mab(isab.mab_in, ind, x, mask)
    return ref_mab(isab.mab_out, x, h)


def ref_pma(pma, x, key_valid=None):
    seeds = pma.seeds.expand(*x.shape[:-2], *pma.seeds.shape)
    mask = None if key_valid is None else ref_attention_mask(key_valid)
    return ref_mab(pma.mab, seeds, x, mask)


def ref_masked_mean(x, valid, dim):
    w = valid.to(x.dtype)
    w = w / w.sum(dim=dim, keepdim=True).clamp_min(1.0)
    return (x * w.unsqueeze(-1)).sum(dim=dim)


def ref_cell_layer(layer, h, same, col_valid, row_valid):
    bias = torch.where(same, layer.group_bias[0][:, None, None], layer.group_bias[1][:, None, None])
    mask = bias.masked_fill(~col_valid[:, None, None, None, :], float("-inf"))
    h = ref_mab(layer.feature.mab, h, None, mask)
    ht = h.transpose(1, 2)
    ht = ref_isab(layer.sample, ht, row_valid[:, None, :].expand(-1, ht.shape[1], -1))
    return ht.transpose(1, 2)


def ref_forward(model, batch):
    col_valid, is_y = batch.col_mask, batch.is_y
    x_valid = col_valid & ~is_y
    y_valid = col_valid & is_y
    same = is_y[:, None] == is_y[None, :]
    h = model.value_embed(batch.cells.unsqueeze(-1))
    for layer in model.cell_layers:
        h = ref_cell_layer(layer, h, same, col_valid, batch.cell_mask)
    ctx = ref_masked_mean(h.transpose(1, 2), batch.cell_mask[:, None, :].expand(-1, h.shape[2], -1), dim=2)
    ctx = model.ctx_norm(ctx)
    b, d, k = ctx.shape[0], ctx.shape[1], model.config.basis
    weights = model.col_weights(ctx).unflatten(-1, (k, -1))
    wx = x_valid.to(ctx.dtype) / x_valid.sum(dim=1, keepdim=True).clamp_min(1)
    wy = y_valid.to(ctx.dtype) / y_valid.sum(dim=1, keepdim=True).clamp_min(1)
    w = torch.cat([weights * wx[:, :, None, None], weights * wy[:, :, None, None]], dim=-1)
    phi = F.gelu(model.basis(batch.rows.unsqueeze(-1)))
    pxy = torch.bmm(phi.flatten(2), w.reshape(b, d * k, -1))
    px, py = pxy.chunk(2, dim=-1)
    tok = model.row_embed(torch.cat([px + py, px * py, (px - py).abs(), batch.knn], dim=-1))
    for layer in model.row_layers:
        tok = ref_isab(layer, tok, batch.row_mask)
    pooled = model.pool_norm(ref_pma(model.pool, tok, batch.row_mask)[:, 0])
    cx = ref_masked_mean(ctx, x_valid, dim=1)
    cy = ref_masked_mean(ctx, y_valid, dim=1)
    head_in = torch.cat([pooled, cx + cy, cx * cy, batch.stats.to(pooled.dtype)], dim=-1)
    return torch.cumsum(F.softplus(model.head(head_in)), dim=-1)


# ----------------------------------------------------------------------------- inputs

TOL = dict(rtol=1e-5, atol=1e-5)


def _pair(n, dx, dy, seed, kind="normal"):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx))
    y = 0.6 * x[:, :1] + rng.normal(size=(n, dy))
    if kind == "ties":  # discrete columns (many ties) and some duplicated rows
        x[:, 0] = rng.integers(0, 5, size=n)
        y[:, -1] = np.round(y[:, -1], 1)
        x[: n // 4] = x[n // 4 : 2 * (n // 4)]
        y[: n // 4] = y[n // 4 : 2 * (n // 4)]
    elif kind == "constant":  # constant columns in x and y
        x[:, -1] = 2.5
        y[:, 0] = -1.0
    elif kind == "allconst":  # every value equal: all rows tie
        x[:] = 1.0
        y[:] = 1.0
    elif kind == "heavy":  # heavy tails and a monotone transform: ranks must not care
        x = np.sinh(3 * x)
        y = np.exp(y)
    return x, y


CASES = [
    (100, 5, 5, "normal"),
    (1000, 5, 5, "normal"),
    (1000, 5, 5, "ties"),
    (700, 3, 2, "constant"),
    (5000, 5, 5, "normal"),
    (1000, 25, 25, "normal"),
    (300, 1, 1, "heavy"),
    (40, 2, 7, "ties"),
    (30, 4, 1, "allconst"),
    (257, 1, 3, "normal"),  # just above knn_rows
    (33, 2, 2, "normal"),  # just above cell_rows
    (3, 1, 1, "normal"),
    (2, 2, 2, "normal"),
]


def _assert_batches_equal(b, r):
    for name in ("row_mask", "cell_mask", "col_mask", "is_y", "n", "dx", "dy"):
        assert torch.equal(getattr(b, name), getattr(r, name)), name
    for name in ("rows", "cells", "knn", "stats"):
        got, want = getattr(b, name), getattr(r, name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        np.testing.assert_allclose(got.numpy(), want.numpy(), err_msg=name, **TOL)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("n,dx,dy,kind", CASES)
def test_normal_scores_and_cca_equal_reference(n, dx, dy, kind):
    x, y = _pair(n, dx, dy, n + dx, kind)
    for a in (x, y, x[:, 0]):
        np.testing.assert_allclose(normal_scores(a), ref_normal_scores(a), rtol=0, atol=1e-12)
    zx, zy = ref_normal_scores(x), ref_normal_scores(y)
    np.testing.assert_allclose(canonical_correlations(zx, zy), ref_canonical_correlations(zx, zy), **TOL)


@pytest.mark.parametrize("n,dx,dy,kind", CASES)
def test_subsets_and_knn_equal_reference(n, dx, dy, kind):
    x, y = _pair(n, dx, dy, 7 * n + dy, kind)
    z = np.concatenate([ref_normal_scores(x), ref_normal_scores(y)], axis=1)
    for size, seed in ((32, SUBSET_SEED), (256, SUBSET_SEED + 1), (n - 1, 3)):
        if size >= 1:
            assert np.array_equal(canonical_subset(z, dx, size, seed=seed), ref_canonical_subset(z, dx, size, seed=seed))
        rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
        assert np.array_equal(canonical_subset(z, dx, max(size, 1), rng_a), ref_canonical_subset(z, dx, max(size, 1), rng_b))
    sizes = (256, 1024) if n > 1024 else (256,)  # 1,024 rows: selection in blocks (_SELECT_BLOCK)
    for ref in [ref_canonical_subset(z, dx, size, seed=SUBSET_SEED + 1) for size in sizes] + [np.arange(0, n, 3)]:
        for k in (1, 3, 5):
            feats, mean = knn_statistics(z, dx, ref, k)
            want, want_mean = ref_knn_statistics(z, dx, ref, k)
            np.testing.assert_allclose(feats, want, **TOL)
            assert mean == pytest.approx(want_mean, rel=1e-5, abs=1e-5)


CONFIGS = [
    ModelConfig(),
    ModelConfig(cell_rows=16, knn_rows=40, knn_k=4, cca_top=3),
    ModelConfig(input_transform="standardize", use_cca=False, use_knn=False, cell_rows=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "small", "ablation"])
def test_prepare_batch_equals_reference(config):
    sets = [_pair(n, dx, dy, i, kind) for i, (n, dx, dy, kind) in enumerate(CASES)]
    for i in range(len(sets)):  # one set at a time (no padding) ...
        _assert_batches_equal(prepare_batch([sets[i]], config), ref_prepare_batch([sets[i]], config))
    _assert_batches_equal(prepare_batch(sets, config), ref_prepare_batch(sets, config))  # ... and padded together
    _assert_batches_equal(prepare_batch(sets[:4], config), ref_prepare_batch(sets[:4], config))
    # training path: random subsets drawn from the same generator state
    got = prepare_batch(sets[:6], config, rng=np.random.default_rng(11))
    want = ref_prepare_batch(sets[:6], config, rng=np.random.default_rng(11))
    _assert_batches_equal(got, want)


def test_prepare_batch_accepts_float32_lists_and_1d():
    rng = np.random.default_rng(1)
    x = rng.normal(size=300).astype(np.float32)
    y = (x + rng.normal(size=300)).astype(np.float32)
    cfg = ModelConfig()
    _assert_batches_equal(prepare_batch([(x, y)], cfg), ref_prepare_batch([(x, y)], cfg))
    _assert_batches_equal(prepare_batch([(x.tolist(), y[:, None])], cfg), ref_prepare_batch([(x.tolist(), y[:, None])], cfg))


# ----------------------------------------------------------------------------- forward


def _model(config, seed=0):
    torch.manual_seed(seed)
    model = MIEstimator(config).eval()
    with torch.no_grad():  # non-trivial group biases (zero at init)
        for layer in model.cell_layers:
            layer.group_bias.normal_(0.0, 1.0)
    return model


FORWARD_CONFIGS = [
    ModelConfig(),
    ModelConfig(dim=16, heads=4, cell_layers=2, row_layers=2, inducing=4, ffn_mult=2, cell_rows=8, knn_rows=20),
    ModelConfig(cell_layers=0, row_layers=0, use_knn=False),
]


@pytest.mark.parametrize("config", FORWARD_CONFIGS, ids=["default", "deep", "shallow"])
@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_forward_equals_reference(config, mode):
    model = _model(config)
    sets = [_pair(n, dx, dy, i, kind) for i, (n, dx, dy, kind) in enumerate(CASES) if n * (dx + dy) <= 20000]
    batches = [prepare_batch([s], config) for s in sets]  # unpadded: the mask-free fast path
    batches.append(prepare_batch(sets, config))  # padded rows and columns
    batches.append(prepare_batch(sets[:3], config))
    for batch in batches:
        with torch.no_grad():
            want = ref_forward(model, batch)
        if mode == "inference":
            with torch.inference_mode():
                got = model(batch)
        elif mode == "no_grad":
            with torch.no_grad():
                got = model(batch)
        else:
            got = model(batch)
            got.sum().backward()  # the training path still differentiates
        np.testing.assert_allclose(got.detach().numpy(), want.numpy(), **TOL)
    if mode == "grad":
        assert all(p.grad is not None for p in model.parameters())


def test_forward_equals_reference_in_float64():
    config = FORWARD_CONFIGS[0]
    model = _model(config).double()
    sets = [_pair(300, 3, 2, 1), _pair(50, 1, 4, 2, "ties")]
    for batch in (prepare_batch(sets[:1], config), prepare_batch(sets, config)):
        batch = batch.to(dtype=torch.float64)
        with torch.inference_mode():
            np.testing.assert_allclose(model(batch).numpy(), ref_forward(model, batch).numpy(), rtol=1e-10, atol=1e-10)


def test_gradients_equal_reference():
    config = FORWARD_CONFIGS[1]
    model = _model(config)
    batch = prepare_batch([_pair(60, 2, 3, 0), _pair(25, 3, 1, 1)], config)
    model.zero_grad()
    model(batch).square().sum().backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    ref_forward(model, batch).square().sum().backward()
    for k, p in model.named_parameters():
        np.testing.assert_allclose(got[k].numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
