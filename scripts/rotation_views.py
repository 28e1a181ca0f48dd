"""Does averaging the model over rotated views of a set lower its error?

MI is unchanged by any invertible map of x and of y apart, so (x Qx, y Qy) with Haar-random
orthogonal Qx (dx, dx) and Qy (dy, dy) is the same problem seen in other coordinates. The
network reads coordinates (copula scores per column, kNN in the max-norm), so its answers on
the views differ; if their errors were independent, averaging K views would shrink the error
like an ensemble. For every set of each store this scores the shipped checkpoint (or
--checkpoint) on the set itself and K - 1 rotated views, and prints the MAE (nats) of the
median averaged over the first 1, 2, 4, ... views (mean of log1p(median), the scale the
network predicts in), its bias, and the correlation of the errors of view 0 and view 1.

    python scripts/rotation_views.py --store $S/val-bench-ood --store $S/val-bench-id --views 8 \
        --out results/selection/session28-rotation-views.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def score_store(path: str, views: int, checkpoint: str | None, seed: int, limit: int | None) -> dict:
    """Medians (sets, views) of the model on each set's views, and the per-K summary."""
    import infer
    from metagen.families.common import random_orthogonal
    from metagen.store import open_store

    store = open_store(path)
    count = len(store) if limit is None else min(limit, len(store))
    rng = np.random.default_rng(seed)
    med = np.empty((count, views))
    for i in range(count):
        x, y = (a.astype(np.float64) for a in store.get(i))
        pairs = [(x, y)] + [(x @ random_orthogonal(x.shape[1], rng), y @ random_orthogonal(y.shape[1], rng))
                            for _ in range(views - 1)]
        med[i] = infer.predict_mi_quantiles_batch(pairs, 0.5, checkpoint=checkpoint, on_out_of_range="ignore")[:, 0]
    mi = store.mi[:count].astype(np.float64)
    out = {"sets": count, "views": {}}
    k = 1
    while k <= views:
        est = np.expm1(np.log1p(med[:, :k]).mean(axis=1))
        out["views"][str(k)] = {"mae": float(np.abs(est - mi).mean()), "bias": float((est - mi).mean())}
        k *= 2
    if views > 1:
        out["error_correlation_view0_view1"] = float(np.corrcoef(med[:, 0] - mi, med[:, 1] - mi)[0, 1])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", action="append", required=True, help="metagen store (repeatable)")
    p.add_argument("--views", type=int, default=8, help="views per set, the set itself included (>= 1)")
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rotations")
    p.add_argument("--limit", type=int, default=None, help="score only the first LIMIT sets of each store")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="write the summary as JSON here")
    args = p.parse_args()
    if args.views < 1:
        p.error("--views must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    result = {}
    for path in args.store:
        name = Path(path).name
        result[name] = r = score_store(path, args.views, args.checkpoint, args.seed, args.limit)
        summary = "  ".join(f"K={k}: MAE {v['mae']:.3f} bias {v['bias']:+.3f}" for k, v in r["views"].items())
        corr = r.get("error_correlation_view0_view1")
        print(f"{name} ({r['sets']} sets)  {summary}" + (f"  error correlation {corr:.2f}" if corr is not None else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
