"""Compare conformal calibration schemes for one network on the validation stores.

    python scripts/calibration_study.py --checkpoint data/default.safetensors \
        --calib-store $S/calib --calib-store $S/calib-large-n --calib-store $S/calib-mid-range \
        --val $S/val-id --val $S/val-ood --val $S/val-bench-id --val $S/val-bench-ood \
        --n-edges 300,1000 --n-edges 300,700,1000 --central-robust 1,0.5 --upper-tail 1,0.7 \
        --work /tmp/calib-study

The network runs once per store, exactly as ``infer`` runs it but without any stored
calibration (its raw grid quantiles in log1p space are cached under ``--work``, one file
per checkpoint content and store name); every scheme is then fitted on the pooled
calibration stores and scored on the validation stores in numpy, in seconds. Schemes:
every combination of ``--n-edges`` (repeat), ``--central-robust``, ``--tail-robust`` and
``--upper-tail`` (comma-separated) of the dimension-robust per-n-range fit that
``scripts/ship_checkpoint.py`` makes (``model.quantiles.fit_calibration_by_n``). Prints,
per scheme and store, the MAE of the median, the 50% and 90% coverage (also per n for
stores with at most five distinct n; for 90% also the share of sets below and above
it), the mean 90% width in nats and the selection rule's distance outside the bands
(``scripts/select_checkpoint.outside_bands``, within one standard error counts as
inside), schemes ordered by it; and per store the MAE per family and the bias (median -
truth) per true-MI bin. With ``--novelty-store``, two reports of the uncalibrated network per store and
novelty bin come first: the share of sets its 90% interval misses, and truth - median per bin of the
predicted median (where it reads low given what it reads). Validation stores only: test stores report the shipped
checkpoint and must not choose its calibration.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.metrics import interval_scores, mi_bin, point_errors, quantile_at  # noqa: E402
from metagen.store import open_store  # noqa: E402
from model.checkpoint import load_checkpoint  # noqa: E402
from model.novelty import (apply_calibration_by_novelty, fit_calibration_by_novelty, fit_novelty_reference,  # noqa: E402
                           novelty_bins)
from model.quantiles import apply_calibration, fit_calibration_by_n  # noqa: E402
from scripts.ship_checkpoint import _float_list, _int_list, batch_stats, uncalibrated_predictions  # noqa: E402
from scripts.select_checkpoint import outside_bands  # noqa: E402


def raw_grid(checkpoint: Path, store_path: str, work: Path, outputs=None, tag: str = "") -> dict[str, np.ndarray]:
    """Uncalibrated grid (N, Q) in log1p nats, truth t = log1p(MI) (N,), rows seen n (N,), dims labels (N,),
    set statistics (N, S) (``ship_checkpoint.uncalibrated_predictions``), cached under `work` per checkpoint content and store name.
    outputs: other per-set values as "grid" (N, F) (``infer._forward_grid``), cached under the name prefix `tag`."""
    work.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    cache = work / f"{tag}{digest}-{Path(store_path).name}.npz"
    if cache.is_file():
        cached = dict(np.load(cache))
        if "stats" in cached or tag:  # files cached before the statistics were kept are redone
            return cached
    model, meta = load_checkpoint(checkpoint)
    pred = uncalibrated_predictions(model, dict(meta["limits"]), meta.get("info") or {}, [store_path],
                                    work / f"{digest}-uncalibrated.safetensors",  # per checkpoint: studies share work
                                    outputs=outputs)
    out = {k: pred[k] for k in ("grid", "t", "n", "dims", "stats")}
    np.savez(cache, **out)
    return out


def coverage(levels: np.ndarray, grid: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """50% and 90% coverage, mean 90% width and MAE of the median (nats) of calibrated grids (N, Q) against t (N,)."""
    q, mi = np.expm1(grid), np.expm1(t)
    c50, _ = interval_scores(levels, q, mi, 0.5)
    c90, w90 = interval_scores(levels, q, mi, 0.9)
    return {"50": c50, "90": c90, "width90": w90, "mae": float(np.mean(np.abs(quantile_at(levels, q, 0.5) - mi))),
            "below05": float(np.mean(mi < quantile_at(levels, q, 0.05))),  # misses of the 90% interval, by side
            "above95": float(np.mean(mi > quantile_at(levels, q, 0.95)))}


def breakdown(levels: np.ndarray, grid: np.ndarray, t: np.ndarray, families: np.ndarray,
              bins: np.ndarray) -> dict[str, dict]:
    """MAE of the median per family and mean bias (median - truth) per true-MI bin, nats, with set counts,
    of calibrated grids (N, Q) against t = log1p(MI) (N,); `families` and `bins` (N,) label each set
    (`set_labels`)."""
    point, mi = quantile_at(levels, np.expm1(grid), 0.5), np.expm1(t)
    return {"per_family": {f: {"sets": int((families == f).sum()),
                               "mae": point_errors(point[families == f], mi[families == f])["mae"]}
                           for f in sorted(set(families))},
            "bias_by_mi": {b: {"sets": int((bins == b).sum()), "bias": point_errors(point[bins == b], mi[bins == b])["bias"]}
                           for b in dict.fromkeys(bins[np.argsort(t, kind="stable")])}}


def set_labels(store_path: str, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each set's family name and true-MI bin label (`eval.metrics.mi_bin`), (N,) each, of a store whose
    truth is t = log1p(MI) (N,) in store order: computed once per store, shared by every scheme."""
    store = open_store(store_path)
    return (np.array([store.family_names[int(c)] for c in store.family]),
            np.array([mi_bin(float(v)) for v in np.expm1(t)]))


def raw_misses_by_novelty(levels: np.ndarray, stores: dict[str, dict], bins: int) -> dict[str, list[dict]]:
    """Per store and novelty bin: sets, and the share of them whose truth falls outside the uncalibrated
    90% interval, among sets with n <= 300 and n > 300 (NaN where none): does novelty flag the misses?"""
    out = {}
    for name, v in stores.items():
        lo, hi = quantile_at(levels, v["grid"], 0.05), quantile_at(levels, v["grid"], 0.95)
        miss = (v["t"] < lo) | (v["t"] > hi)
        rows = []
        for b in range(bins):
            sel = v["bin"] == b
            small, large = sel & (v["n"] <= 300), sel & (v["n"] > 300)
            rows.append({"sets": int(sel.sum()),
                         "miss_small_n": float(miss[small].mean()) if small.any() else float("nan"),
                         "miss_large_n": float(miss[large].mean()) if large.any() else float("nan")})
        out[name] = rows
    return out


MEDIAN_BINS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, np.inf)  # nats: bins of the predicted median


def raw_residuals_by_novelty(levels: np.ndarray, stores: dict[str, dict], bins: int,
                             edges=MEDIAN_BINS) -> dict[str, list[dict]]:
    """Per store and novelty bin, per bin of the uncalibrated median (nats, `edges`): sets, and the mean and
    median of truth - median (nats) among them: where the network reads low or high given what it reads, i.e.
    the correction a calibration of the median keyed on the prediction would need. Cells without sets are left out."""
    out = {}
    for name, v in stores.items():
        med = np.expm1(quantile_at(levels, v["grid"], 0.5))
        res = np.expm1(v["t"]) - med
        rows = []
        for b in range(bins):
            cells = {}
            for lo, hi in zip(edges, edges[1:]):
                sel = (v["bin"] == b) & (med > lo) & (med <= hi)
                if sel.any():
                    cells[f"({lo:g},{hi:g}]"] = {"sets": int(sel.sum()), "mean": float(res[sel].mean()),
                                                 "median": float(np.median(res[sel]))}
            rows.append(cells)
        out[name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--calib-store", action="append", required=True, help="calibration store (repeat to pool)")
    p.add_argument("--val", action="append", required=True, help="validation store (repeat)")
    p.add_argument("--n-edges", action="append", type=_int_list, metavar="N1,N2,...",
                   help="n ranges of one scheme (repeat to compare; default 300,1000)")
    p.add_argument("--central-robust", type=_float_list, default=[1.0], help="comma-separated values to compare")
    p.add_argument("--upper-tail", type=_float_list, default=[1.0], help="comma-separated values to compare")
    p.add_argument("--tail-robust", type=_float_list, default=[1.0],
                   help="comma-separated values to compare (the tails' share of the group-robustness; 1: all of it)")
    p.add_argument("--novelty-store", help="training-distribution store for the novelty reference (as ship_checkpoint's "
                                           "--calib-novelty-store, its first --novelty-sets sets); adds the schemes of "
                                           "--novelty-upper-tails")
    p.add_argument("--novelty-sets", type=int, default=8000)
    p.add_argument("--novelty-reference", type=int, default=5000)
    p.add_argument("--novelty-quantiles", type=_float_list, default=[0.75], help="bin edges as training-novelty quantiles")
    p.add_argument("--novelty-upper-tails", action="append", type=_float_list, metavar="K1,K2,...",
                   help="one upper tail per novelty bin (repeat to compare); each with every --n-edges and --central-robust")
    p.add_argument("--work", required=True, help="cache folder for the raw predictions")
    p.add_argument("--out", help="write all numbers here as JSON")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    levels = np.asarray(load_checkpoint(args.checkpoint)[0].config.quantile_levels, dtype=np.float64)
    cal = [raw_grid(Path(args.checkpoint), s, work) for s in args.calib_store]
    cal = {k: np.concatenate([c[k] for c in cal]) for k in cal[0]}
    vals = {Path(s).name: raw_grid(Path(args.checkpoint), s, work) for s in args.val}
    labels = {Path(s).name: set_labels(s, vals[Path(s).name]["t"]) for s in args.val}
    novelty = None
    if args.novelty_store:
        ref = raw_grid(Path(args.checkpoint), args.novelty_store, work, outputs=batch_stats, tag="stats-")
        novelty = fit_novelty_reference(ref["grid"][: args.novelty_sets], args.novelty_quantiles,
                                        size=args.novelty_reference)
        cal["bin"] = novelty_bins(novelty, cal["stats"])
        for v in vals.values():
            v["bin"] = novelty_bins(novelty, v["stats"])
        novelty_report = raw_misses_by_novelty(levels, {"calib (pooled)": cal, **vals}, novelty.bins)
        residual_report = raw_residuals_by_novelty(levels, {"calib (pooled)": cal, **vals}, novelty.bins)
        print(f"novelty bins (edges {[round(e, 3) for e in novelty.edges]}): sets, and the share the uncalibrated "
              "90% interval misses, at n <= 300 / n > 300")
        for name, rows in novelty_report.items():
            print(f"  {name:14s} " + "  ".join(f"bin {b}: {r['sets']}, {r['miss_small_n']:.2f} / {r['miss_large_n']:.2f}"
                                                for b, r in enumerate(rows)))
        print("truth - uncalibrated median (nats; median over the sets, their count), by novelty bin and predicted median")
        for name, rows in residual_report.items():
            for b, cells in enumerate(rows):
                print(f"  {name:14s} bin {b}: " + ", ".join(f"{k} {c['median']:+.2f} ({c['sets']})" for k, c in cells.items()))
    schemes = [(up, None) for up in args.upper_tail]
    schemes += [(None, tails) for tails in (args.novelty_upper_tails or []) if novelty is not None]
    results = []
    for edges in args.n_edges or [[300, 1000]]:
        for lam, rob in itertools.product(args.central_robust, args.tail_robust):
            for up, tails in schemes:
                try:
                    if tails is None:
                        offsets = fit_calibration_by_n(cal["grid"], cal["t"], levels, cal["n"], edges,
                                                       groups=cal["dims"], central_robust=lam, upper_tail=up,
                                                       tail_robust=rob)
                    else:
                        offsets = fit_calibration_by_novelty(cal["grid"], cal["t"], levels, cal["n"], edges, cal["bin"],
                                                             novelty.bins, tails, groups=cal["dims"], central_robust=lam,
                                                             tail_robust=rob)
                except ValueError as e:
                    p.error(str(e))
                row = {"n_edges": edges, "central_robust": lam, "tail_robust": rob,
                       "upper_tail": up if tails is None else tails,
                       "novelty_quantiles": None if tails is None else args.novelty_quantiles, "stores": {}}
                for name, v in vals.items():
                    if tails is None:
                        g = apply_calibration(v["grid"], offsets, n=v["n"], n_edges=edges)
                    else:
                        g = apply_calibration_by_novelty(v["grid"], offsets, v["bin"], n=v["n"], n_edges=edges)
                    s = coverage(levels, g, v["t"])
                    s["outside"] = outside_bands(s, len(v["t"]))
                    ns = np.unique(v["n"])
                    if len(ns) <= 5:
                        s["per_n"] = {str(k): coverage(levels, g[v["n"] == k], v["t"][v["n"] == k]) for k in ns}
                    s.update(breakdown(levels, g, v["t"], *labels[name]))
                    row["stores"][name] = s
                row["outside"] = sum(s["outside"] for s in row["stores"].values())
                results.append(row)
    results.sort(key=lambda r: r["outside"])
    for r in results:
        tail = (f"upper_tail {r['upper_tail']:g}" if r["novelty_quantiles"] is None else
                f"novelty bins at {r['novelty_quantiles']}, upper tails {r['upper_tail']}")
        print(f"n_edges {','.join(map(str, r['n_edges']))}  central_robust {r['central_robust']:g}  "
              f"tail_robust {r['tail_robust']:g}  "
              f"{tail}: distance outside the bands {r['outside']:.4f}")
        for name, s in r["stores"].items():
            per = "".join(f"  n={k}: {c['50']:.3f}/{c['90']:.3f} w{c['width90']:.2f}" for k, c in s.get("per_n", {}).items())
            print(f"  {name:14s} MAE {s['mae']:.3f} cov50 {s['50']:.3f} cov90 {s['90']:.3f} "
                  f"(below {s['below05']:.3f}, above {s['above95']:.3f}) width90 {s['width90']:.2f}{per}")
            print("    MAE per family: " + ", ".join(f"{f} {c['mae']:.2f} ({c['sets']})" for f, c in s["per_family"].items()))
            print("    bias per true-MI bin: " + ", ".join(f"{b} {c['bias']:+.2f} ({c['sets']})"
                                                        for b, c in s["bias_by_mi"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(results if novelty is None else
                                             {"schemes": results, "raw_misses_by_novelty": novelty_report,
                                              "raw_residuals_by_novelty": residual_report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
