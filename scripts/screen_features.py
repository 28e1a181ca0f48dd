"""Screen candidate set statistics for the network before paying for a training run.

    python scripts/screen_features.py --checkpoint data/default.safetensors \
        --fit $S/val-id --fit $S/val-bench-id --fit $S/calib \
        --score $S/val-ood --score $S/val-bench-ood --work /tmp/screen

A trained network already reads what its inputs show; a new statistic is worth a training
run only if it tells something the network's answer does not. This script measures that
cheaply: a small corrector (an MLP, L1 loss on MI in nats, an ensemble of seeds) learns to
move the network's uncalibrated median (in log1p space) from the network's own quantiles and
the set statistics it already has ("base"), and the same corrector learns it again with a
candidate group of statistics added. Fitted on the in-distribution `--fit` stores only,
it is scored by 5-fold cross-validation there and on the `--score` stores (held-out
family x transform pairs). The gap between "base" and "base + candidate" is what the
candidate adds beyond the network's answer; "base" itself shows how much a refit of the
median alone moves the error (not a property of the candidate).

Candidate groups (all swap-symmetric and invariant to row order; the local ones only up to
LOCAL_QUERIES rows, beyond which their query rows are a fixed-seed random subset):
- ``multik``: KSG (max-norm) on the copula scores at k = 1, 2, 4, 8, 16, 32 against at most
  1,024 reference rows: how the estimate changes with the scale of the neighbourhoods
  (strong dependence concentrates the joint near a thinner set, which small k sees first);
- ``raw``: the Gaussian MI of the canonical correlations of the standardized raw values
  (not ranks: ranks cap the readable correlation near 1 - O(1/n^2)) and KSG (k = 3) on
  them; ``raw_gc`` and ``raw_ksg`` are its two parts alone;
- ``kcca``: kernel canonical correlations of the copula scores (`kernel_cca_statistics`):
  bent, non-monotone dependence;
- ``lgmi_cop`` / ``lgmi_raw``: local Gaussian MI of neighbourhoods in the joint space, on the
  copula scores or the robustly scaled raw values (`local_gaussian_statistics`);
- ``lres_cop`` / ``lres_raw``: MI read from local linear fits of one block on the other
  (`local_residual_statistics`): smooth strong dependence through bends.
  The local groups take blocks wider than LOCAL_TOP to their first canonical variates.
- ``radial``: the dependence between the blocks' radii |x| and |y| (`radial_statistics`: Gaussian MI of
  their normal scores and KSG on them, for the robustly scaled raw values and for the copula scores;
  ``radial_raw`` / ``radial_cop`` the halves): what a spiral (a rotation by an angle that grows with the
  radius) leaves of heavy tails' shared scale (session 31).

``--set base+multik+raw`` (repeat) names the feature sets to compare. Network outputs and statistics are cached under ``--work`` per store. Prints one table of
MAE (nats) per feature set and store, and writes them as JSON with ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infer  # noqa: E402
from eval.metrics import mi_bin  # noqa: E402
from metagen.store import open_store  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.preprocess import (_gaussian_pair_mis, canonical_correlations, canonical_subset,  # noqa: E402
                              canonical_variates, knn_statistics, normal_scores, robust_standardize,
                              standardize)
from model.quantiles import interpolate_quantiles  # noqa: E402
from scripts.calibration_study import raw_grid  # noqa: E402

MULTI_K = (1, 2, 4, 8, 16, 32)
REF_ROWS = 1024
BASE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)
KCCA_LANDMARKS = 24
LOCAL_TOP = 4
LOCAL_QUERIES = 128
LOCAL_RIDGE = 1e-6
# candidate groups: name -> (cached array, its columns)
GROUPS = {"multik": ("multik", slice(None)), "raw": ("raw", slice(None)),
          "raw_gc": ("raw", slice(0, 1)), "raw_ksg": ("raw", slice(1, 2)), "kcca": ("kcca", slice(None)),
          "lgmi_cop": ("lgmi_cop", slice(None)), "lgmi_raw": ("lgmi_raw", slice(None)),
          "lres_cop": ("lres_cop", slice(None)), "lres_raw": ("lres_raw", slice(None)),
          "radial": ("radial", slice(None)), "radial_raw": ("radial", slice(0, 2)), "radial_cop": ("radial", slice(2, 4))}
DEFAULT_SETS = ("base", "base+multik", "base+raw", "base+multik+raw")


def _reference_rows(n: int) -> np.ndarray:
    """The KSG reference rows of an n-row set: all of them up to REF_ROWS, else a fixed-seed sorted subset."""
    return np.arange(n) if n <= REF_ROWS else np.sort(np.random.default_rng(0).choice(n, REF_ROWS, replace=False))


def set_features(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Base and candidate statistics of one set x (n, dx), y (n, dy): {group: (F,)}; MIs in nats."""
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    zx, zy = normal_scores(x), normal_scores(y)
    z = np.concatenate([zx, zy], axis=1)
    ref = _reference_rows(n)
    gc = float(_gaussian_pair_mis(canonical_correlations(zx, zy)).sum())
    ldx, ldy = np.log(dx), np.log(dy)
    base = [np.log(n), ldx + ldy, abs(ldx - ldy), np.log(n / (dx + dy)), np.log1p(gc),
            knn_statistics(z, dx, ref, 3, quantize=True)[1]]
    multik = [knn_statistics(z, dx, ref, k, quantize=True)[1] for k in MULTI_K]
    sx, sy = standardize(x), standardize(y)
    raw_gc = float(_gaussian_pair_mis(canonical_correlations(sx, sy)).sum())
    raw_ksg = knn_statistics(np.concatenate([sx, sy], axis=1), dx, ref, 3)[1]
    return {"base": np.array(base), "multik": np.array(multik), "raw": np.array([np.log1p(raw_gc), raw_ksg])}


def kernel_cca_statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kernel canonical correlations of one set x (n, dx), y (n, dy), (2,) in log1p nats.

    Each block's copula scores become Gaussian-kernel features exp(-|z_i - l_j|^2 / h) against
    KCCA_LANDMARKS landmark rows l_j (a `canonical_subset`, so the same rows whatever the row
    order, the coordinate order or an x/y swap; h the block's median squared distance to them);
    returns log1p of the Gaussian MI of the features' canonical correlations, summed and of
    the top pair. Bent, non-monotone relations (spirals, Swiss rolls) that linear correlations
    miss correlate in these features; with few rows per feature they are biased upward (the
    corrector also has log n).
    """
    zx, zy = normal_scores(x), normal_scores(y)
    land = canonical_subset(np.concatenate([zx, zy], axis=1), zx.shape[1], KCCA_LANDMARKS)

    def features(z: np.ndarray) -> np.ndarray:
        d2 = ((z[:, None, :] - z[land][None]) ** 2).sum(axis=-1)  # (n, m)
        h = np.median(d2[d2 > 0]) if (d2 > 0).any() else 1.0
        return np.exp(-d2 / h)

    pair = _gaussian_pair_mis(canonical_correlations(features(zx), features(zy)))
    return np.log1p(np.array([pair.sum(), pair.max(initial=0.0)]))


def _neighbours(u: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (q, k + 1) of each query row of u (n, D) and its k nearest rows (Euclidean), in no order."""
    d2 = ((u[queries][:, None, :] - u[None]) ** 2).sum(-1)  # (q, n)
    return np.argpartition(d2, k, axis=1)[:, : k + 1]


def _local_gaussian_mis(u: np.ndarray, dx: int, k: int, queries: np.ndarray) -> np.ndarray:
    """Local Gaussian MI (nats) at each query row of u (n, D): 1/2 (log det C_xx + log det C_yy - log det C)
    of the covariance C of the row and its k nearest rows (Euclidean); (len(queries),)."""
    pts = u[_neighbours(u, queries, k)]  # (q, k + 1, D)
    pts = pts - pts.mean(axis=1, keepdims=True)
    c = np.einsum("qki,qkj->qij", pts, pts) / k + LOCAL_RIDGE * np.eye(u.shape[1])
    ld = lambda a: np.linalg.slogdet(a)[1]  # noqa: E731
    return 0.5 * (ld(c[:, :dx, :dx]) + ld(c[:, dx:, dx:]) - ld(c))


def _local_blocks(zx: np.ndarray, zy: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """The joint columns u (n, D) of the local statistics, its x width, and their query rows: blocks
    wider than LOCAL_TOP replaced by their first canonical variates, each column scaled to unit variance,
    at most LOCAL_QUERIES query rows (a fixed-seed random subset when n is larger)."""
    if zx.shape[1] > LOCAL_TOP or zy.shape[1] > LOCAL_TOP:
        px, py = canonical_variates(zx, zy, LOCAL_TOP)
        zx = px if zx.shape[1] > LOCAL_TOP else zx
        zy = py if zy.shape[1] > LOCAL_TOP else zy
    u = np.concatenate([zx, zy], axis=1)
    u = (u - u.mean(0)) / (u.std(0) + 1e-12)
    return u, zx.shape[1], np.random.default_rng(0).permutation(u.shape[0])[:LOCAL_QUERIES]


def local_gaussian_statistics(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
    """Local Gaussian MI of blocks zx (n, dx), zy (n, dy) (already scaled), (4,) in log1p nats.

    Blocks wider than LOCAL_TOP are replaced by their first canonical variates (at most LOCAL_TOP);
    the joint columns are scaled to unit variance. Local covariances of each of at most
    LOCAL_QUERIES rows with its k nearest rows (D the joint width, k below n), of max(local MI, 0):
    [log1p(mean), log1p(median)] at k = D + 2, log1p(median) at k = 2D + 4 and at k = 4D + 8. Queries
    are a random subset when n > LOCAL_QUERIES (not row-order invariant then). A neighbourhood's
    covariance reads the dependence at its own scale: about log(neighbourhood extent / noise) for
    a smooth near-deterministic relation, so it grows as the noise shrinks but stays far below the
    MI (a screen found it weak: `local_residual_statistics` is the better reading).
    """
    n = zx.shape[0]
    u, dx, q = _local_blocks(zx, zy)
    dim = u.shape[1]
    small = np.maximum(_local_gaussian_mis(u, dx, min(dim + 2, n - 1), q), 0.0)
    out = [np.log1p(small.mean()), np.log1p(np.median(small))]
    for k in (2 * dim + 4, 4 * dim + 8):
        out.append(np.log1p(np.median(np.maximum(_local_gaussian_mis(u, dx, min(k, n - 1), q), 0.0))))
    return np.array(out)


def _local_residual_mis(a: np.ndarray, b: np.ndarray, k: int, queries: np.ndarray) -> np.ndarray:
    """MI (nats) of b (n, db) given a (n, da) read from local linear fits, at each query row: 1/2 (log det of
    b's covariance - log det of the residual covariance of b regressed on a among the row's k nearest
    rows in a); (len(queries),)."""
    eye_a, eye_b = LOCAL_RIDGE * np.eye(a.shape[1]), LOCAL_RIDGE * np.eye(b.shape[1])
    nb = _neighbours(a, queries, k)
    pa, pb = a[nb], b[nb]  # (q, k + 1, da), (q, k + 1, db)
    pa, pb = pa - pa.mean(axis=1, keepdims=True), pb - pb.mean(axis=1, keepdims=True)
    coef = np.linalg.solve(np.einsum("qki,qkj->qij", pa, pa) + eye_a, np.einsum("qki,qkj->qij", pa, pb))
    res = pb - pa @ coef
    dof = max(k - a.shape[1], 1)
    local = np.linalg.slogdet(np.einsum("qki,qkj->qij", res, res) / dof + eye_b)[1]
    whole = np.linalg.slogdet(np.atleast_2d(np.cov(b.T)) + eye_b)[1]
    return 0.5 * (whole - local)


def local_residual_statistics(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
    """MI read from local linear fits in both directions, blocks zx (n, dx), zy (n, dy), (4,) in log1p nats.

    Blocks reduced and scaled as in `local_gaussian_statistics`; each of at most LOCAL_QUERIES
    rows (a random subset when n is larger: not row-order invariant then) and its k nearest rows
    in one block fit the other block linearly; 1/2 log of the block's whole covariance over the
    fits' residual covariance (log det), median over the queries, clipped at 0. A smooth relation
    y = f(x) + noise reads as log(spread of f / noise), beyond KSG's log n ceiling and visible
    through bends that the global correlations miss; only the direction in which the relation
    is a function sees it, so: [log1p(max), log1p(min)] of the two directions at
    k = 2 max(dx, dy) + 4 and at k = 4 max(dx, dy) + 8 (k below n).
    """
    n = zx.shape[0]
    u, dx, q = _local_blocks(zx, zy)
    a, b = u[:, :dx], u[:, dx:]
    wide = max(a.shape[1], b.shape[1])
    out = []
    for k in (2 * wide + 4, 4 * wide + 8):
        k = min(k, n - 1)
        both = [max(float(np.median(_local_residual_mis(p, r, k, q))), 0.0) for p, r in ((a, b), (b, a))]
        out += [np.log1p(max(both)), np.log1p(min(both))]
    return np.array(out)


def _robust_blocks(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (n, dx) and y (n, dy) robustly standardized (clipped at RAW_CLIP), as the model's raw statistics."""
    z = robust_standardize(np.concatenate([x, y], axis=1))
    return z[:, : x.shape[1]], z[:, x.shape[1]:]


def lres_copula(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`local_residual_statistics` of the copula scores."""
    return local_residual_statistics(normal_scores(x), normal_scores(y))


def lres_raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`local_residual_statistics` of the robustly standardized raw values (clipped at RAW_CLIP)."""
    return local_residual_statistics(*_robust_blocks(x, y))


def lgmi_copula(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`local_gaussian_statistics` of the copula scores."""
    return local_gaussian_statistics(normal_scores(x), normal_scores(y))


def lgmi_raw(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`local_gaussian_statistics` of the robustly standardized raw values (clipped at RAW_CLIP)."""
    return local_gaussian_statistics(*_robust_blocks(x, y))


def _radius_pair_mis(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Two MIs (nats) between 1-D samples a, b (n,): the Gaussian MI of their normal scores' correlation
    (as log1p) and KSG (k = 3, max-norm) on those scores against at most REF_ROWS reference rows."""
    z = normal_scores(np.stack([a, b], axis=1))
    n = len(a)
    ref = _reference_rows(n)
    r = float(np.clip(np.corrcoef(z[:, 0], z[:, 1])[0, 1], -0.999999, 0.999999)) if n > 2 else 0.0
    return [np.log1p(-0.5 * np.log1p(-r * r)), knn_statistics(z, 1, ref, 3)[1]]


def radial_statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dependence between the blocks' radii, (4,): `_radius_pair_mis` of (|x|, |y|) on the raw values centred on
    each column's median and scaled by its median absolute deviation (not clipped), then on the copula scores.

    Why: a spiral rotates a standardized block by an angle that grows with its radius, which keeps the
    radius; heavy-tailed families share a scale variable, so their radii carry much of the MI. What the
    rotation scrambles for the coordinates survives in |x| and |y|.
    """
    def radius(a: np.ndarray) -> np.ndarray:
        med = np.median(a, axis=0)
        mad = np.median(np.abs(a - med), axis=0)
        return np.linalg.norm((a - med) / np.where(mad > 0, mad, 1.0), axis=1)

    zx, zy = normal_scores(x), normal_scores(y)
    return np.array(_radius_pair_mis(radius(x), radius(y)) + _radius_pair_mis(np.linalg.norm(zx, axis=1), np.linalg.norm(zy, axis=1)))


EXTRA = {"kcca": kernel_cca_statistics, "lgmi_cop": lgmi_copula, "lgmi_raw": lgmi_raw, "lres_cop": lres_copula,
         "lres_raw": lres_raw, "radial": radial_statistics}
"""Candidate groups computed (and cached) on their own, only when a feature set names them."""


def _store_sets(store_path: str, limits: dict):
    """Each set (x, y) of a store as the network sees it (`infer`'s subsampling rule), in store order."""
    store = open_store(store_path)
    for i in range(len(store)):
        x, y = store.get(i)
        if i % 200 == 0:
            print(f"  {Path(store_path).name}: {i}/{len(store)}", flush=True)
        yield infer._check_range(x.astype(np.float64), y.astype(np.float64), limits, "ignore", "auto")


def _extra_table(name: str, store_path: str, limits: dict, work: Path) -> np.ndarray:
    """EXTRA[name] of every set of a store (N, F), cached under `work`."""
    cache = work / f"features-{name}-{Path(store_path).name}.npy"
    if cache.is_file():
        return np.load(cache)
    out = np.stack([EXTRA[name](x, y) for x, y in _store_sets(store_path, limits)])
    np.save(cache, out)
    return out


def store_table(checkpoint: Path, store_path: str, work: Path, extras: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """Per set of a store: the network's raw quantiles at BASE_LEVELS (N, 5) in log1p nats, truth t (N,),
    and each feature group (N, F) (of EXTRA only those in `extras`); cached under `work`."""
    cache = work / f"features-{Path(store_path).name}.npz"
    model, meta = load_checkpoint(checkpoint)
    pred = raw_grid(checkpoint, store_path, work)
    levels = np.asarray(model.config.quantile_levels, dtype=np.float64)
    quant = interpolate_quantiles(levels, pred["grid"], np.asarray(BASE_LEVELS))
    if cache.is_file():
        feats = dict(np.load(cache))
    else:
        rows: dict[str, list] = {}
        for x, y in _store_sets(store_path, dict(meta["limits"])):
            for k, v in set_features(x, y).items():
                rows.setdefault(k, []).append(v)
        feats = {k: np.stack(v) for k, v in rows.items()}
        np.savez(cache, **feats)
    for name in sorted(extras):
        feats[name] = _extra_table(name, store_path, dict(meta["limits"]), work)
    return {"quant": quant, "t": pred["t"], **feats}


def _inputs(table: dict[str, np.ndarray], groups: list[str]) -> np.ndarray:
    return np.concatenate([table["quant"], table["base"]] + [table[GROUPS[g][0]][:, GROUPS[g][1]] for g in groups],
                          axis=1)


def _feature_set(text: str) -> list[str]:
    groups = text.split("+")
    if groups[0] != "base" or any(g not in GROUPS for g in groups[1:]):
        raise argparse.ArgumentTypeError(f"{text!r}: base, then +group with groups from {sorted(GROUPS)}")
    return groups[1:]


def fit_corrector(f: np.ndarray, med: np.ndarray, t: np.ndarray, seeds: int = 5, steps: int = 1500,
                  loss: str = "nats") -> list:
    """An ensemble of MLPs (F -> 1) moving the median `med` (N,) in log1p space so that expm1 of it has the
    least absolute error against expm1(t) (N,) (loss "nats"), or so that it has the least absolute error
    against t itself (loss "log1p": the network's own median pinball loss); features f (N, F) standardized
    inside."""
    if loss not in ("nats", "log1p"):
        raise ValueError(f"loss must be 'nats' or 'log1p', got {loss!r}")
    mean, std = f.mean(0), f.std(0) + 1e-8
    x = torch.tensor((f - mean) / std, dtype=torch.float32)
    m0 = torch.tensor(med, dtype=torch.float32)
    target = torch.tensor(np.expm1(t) if loss == "nats" else t, dtype=torch.float32)
    scale = torch.expm1 if loss == "nats" else (lambda v: v)
    nets = []
    for s in range(seeds):
        torch.manual_seed(s)
        net = torch.nn.Sequential(torch.nn.Linear(f.shape[1], 64), torch.nn.GELU(), torch.nn.Linear(64, 64),
                                  torch.nn.GELU(), torch.nn.Linear(64, 1))
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
        for _ in range(steps):
            shift = 3 * torch.tanh(net(x)[:, 0] / 3)
            err = (scale(m0 + shift) - target).abs().mean()
            opt.zero_grad()
            err.backward()
            opt.step()
        nets.append(net)
    return [mean, std, nets]


def corrected_errors(model: list, f: np.ndarray, med: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Absolute errors (N,) in nats of the corrected medians."""
    mean, std, nets = model
    x = torch.tensor((f - mean) / std, dtype=torch.float32)
    with torch.no_grad():
        shift = np.mean([(3 * torch.tanh(n(x)[:, 0] / 3)).numpy() for n in nets], axis=0)
    return np.abs(np.expm1(med + shift) - np.expm1(t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--fit", action="append", required=True, help="in-distribution store to fit on (repeat)")
    p.add_argument("--score", action="append", required=True, help="store to score on (repeat)")
    p.add_argument("--work", required=True, help="cache folder")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--set", action="append", type=_feature_set, dest="sets",
                   help=f"feature set, e.g. base+raw (repeat; default: {', '.join(DEFAULT_SETS)})")
    p.add_argument("--loss", choices=("nats", "log1p"), default="nats",
                   help="the corrector's L1 loss: on MI in nats (the harness's MAE) or on log1p(MI) (the network's)")
    p.add_argument("--out", help="write the table as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = args.sets or [_feature_set(text) for text in DEFAULT_SETS]
    extras = {GROUPS[g][0] for groups in sets for g in groups} & set(EXTRA)
    fit = [store_table(Path(args.checkpoint), s, work, extras) for s in args.fit]
    fit = {k: np.concatenate([t[k] for t in fit]) for k in fit[0]}
    score = {Path(s).name: store_table(Path(args.checkpoint), s, work, extras) for s in args.score}
    mid = BASE_LEVELS.index(0.5)
    folds = np.random.default_rng(0).permutation(len(fit["t"])) % 5
    bins = np.array([mi_bin(float(v)) for v in np.expm1(fit["t"])])
    order = list(dict.fromkeys(bins[np.argsort(fit["t"], kind="stable")]))

    def per_bin(err: np.ndarray) -> dict[str, float]:
        return {b: float(err[bins == b].mean()) for b in order}

    net_err = np.abs(np.expm1(fit["quant"][:, mid]) - np.expm1(fit["t"]))
    results = {"network": {"fit-cv": float(net_err.mean())}}
    by_bin = {"network": per_bin(net_err)}
    for name, tab in score.items():
        results["network"][name] = float(np.mean(np.abs(np.expm1(tab["quant"][:, mid]) - np.expm1(tab["t"]))))
    for groups in sets:
        label = "+".join(["base"] + groups)
        f = _inputs(fit, groups)
        cv = np.zeros(len(f))
        for k in range(5):
            tr, te = folds != k, folds == k
            m = fit_corrector(f[tr], fit["quant"][tr, mid], fit["t"][tr], args.seeds, loss=args.loss)
            cv[te] = corrected_errors(m, f[te], fit["quant"][te, mid], fit["t"][te])
        row = {"fit-cv": float(cv.mean())}
        by_bin[label] = per_bin(cv)
        m = fit_corrector(f, fit["quant"][:, mid], fit["t"], args.seeds, loss=args.loss)
        for name, tab in score.items():
            row[name] = float(corrected_errors(m, _inputs(tab, groups), tab["quant"][:, mid], tab["t"]).mean())
        results[label] = row
        print(label, {k: round(v, 3) for k, v in row.items()}, flush=True)
    cols = ["fit-cv"] + list(score)
    print("\n| features | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for label, row in results.items():
        print(f"| {label} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    print("\nfit stores, cross-validated MAE per true-MI bin (sets: "
          + ", ".join(f"{b} {int((bins == b).sum())}" for b in order) + ")")
    print("| features | " + " | ".join(order) + " |\n|---|" + "---:|" * len(order))
    for label, row in by_bin.items():
        print(f"| {label} | " + " | ".join(f"{row[b]:.3f}" for b in order) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "mae": results, "fit_cv_by_mi_bin": by_bin}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
