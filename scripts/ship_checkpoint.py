"""Turn a training run's best checkpoint into the shipped default checkpoint.

    python scripts/ship_checkpoint.py --src runs/cpu1/best.safetensors \
        --calib-store ~/.cache/amortized-mi/stores/calib --n-max 5000 \
        --out data/default.safetensors

Steps: load the weights, (optionally) widen the n range that inference accepts
without subsampling to the range validated on held-out stores (``--n-max``),
(optionally) change the number of kNN reference rows (``--knn-rows``: an input
switch, see ``model.network.switch_inputs``; fewer rows make a call faster) or the kNN
distances' precision (``--knn-quantize true``: int16-rounded scores, faster), refit
the per-level conformal offsets on a calibration store that was used neither for
training nor for testing (predictions made exactly as ``infer`` makes them, i.e.
with the same subsampling rule), and write the result. ``--calib-groups dims``
(default) makes the offsets group-robust over the harness's dimension ranges
(max(dx, dy) <= 5, 6-25, > 25; ``model.quantiles.fit_calibration``): every range
of the calibration store gets at least nominal interval coverage, not only the mix.
``--calib-groups dims+geometry`` also makes them robust over transform kinds: sets
whose transform bends space (spiral, flow, Swiss roll, helix, embeddings; where the
model errs most, and all of the held-out pairs) and the rest. ``--calib-n-edges 1000``
fits one row of offsets per n range instead (Mondrian split-conformal,
``model.quantiles.fit_calibration_by_n``; inference picks the row by the rows the
network saw): the network's misses depend on n, and one row fitted on a mix where
small n dominates leaves large-n intervals off nominal. Each range needs at least 100
calibration sets: ``--calib-store`` may be repeated to pool stores (e.g. add
``calib-large-n``, made with ``configs/metagen/calib_large_n.toml``).
``--calib-central-robust 0.5`` takes the central levels (0.1 < tau < 0.9) only half-way
from the pooled to the group-robust offsets (robust ends of a 50% interval over-cover
the mix; ``--calib-tail-robust`` does the same for the other levels, the ends of the 80%
and wider intervals); ``--calib-upper-tail 0.7`` (needs ``--calib-n-edges``) fits the levels
tau >= 0.9 above the first n edge at 1 - 0.7 (1 - tau), for the out-of-distribution
underestimates at large n that the calibration sets cannot show
(``model.quantiles.fit_calibration_by_n``). Prints the coverage of each quantile level
on the calibration sets before and after.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infer  # noqa: E402
from eval.metrics import dims_bucket, interval_scores, is_geometric  # noqa: E402
from metagen.store import open_store  # noqa: E402
from model.checkpoint import lineage, load_checkpoint, save_checkpoint  # noqa: E402
from model.network import switch_inputs  # noqa: E402
from model.novelty import (  # noqa: E402
    apply_calibration_by_novelty,
    fit_calibration_by_novelty,
    fit_novelty_reference,
    novelty_bins,
)
from model.preprocess import stats_dim  # noqa: E402
from model.quantiles import (  # noqa: E402
    apply_calibration,
    check_n_edges,
    fit_calibration,
    fit_calibration_by_n,
    n_range_index,
    n_range_labels,
)


def _stream_run_limits(info: dict, limits: dict) -> dict:
    """A run on streamed sets: its limits are its metagen config's range (``train.stream_limits``).

    train.py before 2026-11-29 recorded the extremes of the batches seen instead, so a short
    streamed run had a small n_max and inference would subsample larger inputs to it.
    """
    cfg = info.get("config") or {}
    if cfg.get("train_store") is not None or not cfg.get("stream_config"):
        return limits
    from metagen.config import load_config
    from train import stream_limits
    from training.config import TrainConfig

    path = Path(cfg["stream_config"])
    if not path.is_file():
        print(f"ship_checkpoint: note: stream config {path} not found; limits kept as recorded", file=sys.stderr)
        return limits
    new = stream_limits(load_config(str(path)), TrainConfig(n_train_min=int(cfg["n_train_min"]),
                                                            n_train_max=int(cfg["n_train_max"])))
    if new != {k: limits.get(k) for k in new}:
        print(f"ship_checkpoint: streamed run: limits {json.dumps(limits)} -> {json.dumps(new)} (its config's range)",
              file=sys.stderr)
    return {**limits, **new}


def uncalibrated_predictions(model, limits: dict, info: dict, store_paths: list[str], tmp: Path,
                            max_sets: int = 0, outputs=None) -> dict:
    """The network's predictions exactly as ``infer`` makes them (same subsampling rule) but without
    any stored calibration, on the sets of each store in turn (at most `max_sets` each; 0: all).

    Returns grid (N, Q) quantiles of t = log1p(MI), t (N,) the truth, n (N,) the rows the network
    saw (after subsampling), dims (N,) dimension-range labels, geometric (N,) whether the transform
    bends space, stats (N, S) the set statistics (``Batch.stats``; what `model.novelty` scores),
    used: one record per store. `tmp` holds the uncalibrated checkpoint meanwhile.
    outputs: instead of the grid, (N, F) values of outputs(model, batch) (``infer._forward_grid``).
    """
    save_checkpoint(tmp, model, limits=limits, calibration=None, info=info)
    sets, target, dims, geometric, used = [], [], [], [], []
    try:
        loaded = infer.load(tmp)
        for path in store_paths:
            store = open_store(path)
            idx = np.arange(len(store))
            if max_sets:
                idx = idx[:max_sets]
            for i in idx:
                x, y = store.get(int(i))
                sets.append(infer._check_range(x.astype(np.float64), y.astype(np.float64), limits, "ignore", "auto"))
                dims.append(dims_bucket(int(store.dx[i]), int(store.dy[i])))
                geometric.append(is_geometric(store.transform_names[int(store.transform[i])]))
            target.append(np.log1p(store.mi[idx]))
            used.append({"path": str(path), "sets": int(len(idx)),
                         "manifest_config": store.manifest.get("config", {}).get("name")})
        stats = np.empty((len(sets), stats_dim(model.config)))
        grid = infer._forward_grid(loaded, sets, outputs, stats=stats)
    finally:
        tmp.unlink(missing_ok=True)
    return {"grid": grid, "t": np.concatenate(target), "n": np.array([x.shape[0] for x, _ in sets]),
            "dims": np.array(dims), "geometric": np.array(geometric), "stats": stats, "used": used}


def batch_stats(model, batch):
    """``infer._forward_grid`` outputs that skip the network: each set's statistics (B, S), what `model.novelty`
    scores (the novelty reference needs nothing else)."""
    return batch.stats


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of numbers") from None


def _int_list(text: str) -> list[int]:
    try:
        return list(check_n_edges(int(v) for v in text.split(",") if v.strip()))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="checkpoint written by train.py")
    p.add_argument("--out", default="data/default.safetensors")
    p.add_argument("--calib-store", action="append",
                   help="store to refit the conformal offsets on (default: keep the run's); repeat to pool stores")
    p.add_argument("--max-sets", type=int, default=0, help="use at most this many sets of each calibration store (0: all)")
    p.add_argument("--calib-n-edges", type=_int_list, default=[], metavar="N1,N2,...",
                   help="one row of offsets per n range (n <= N1, N1 < n <= N2, ..., n > last), each fitted on "
                        "its own calibration sets (default: one row for all n)")
    p.add_argument("--n-max", type=int, help="largest n inference takes without subsampling")
    p.add_argument("--calib-groups", choices=("dims", "dims+geometry", "none"), default="dims",
                   help="group-robust offsets over dimension ranges (default), over those and over "
                        "geometric vs other transforms, or one pooled fit")
    p.add_argument("--calib-central-robust", type=float, default=1.0, metavar="LAMBDA",
                   help="group-robustness of the central levels' offsets, 0 (pooled) to 1 (default: fully robust)")
    p.add_argument("--calib-tail-robust", type=float, default=1.0, metavar="LAMBDA",
                   help="the same for the other levels (tau <= 0.1, tau >= 0.9), 0 to 1 (default: fully robust)")
    p.add_argument("--calib-upper-tail", type=_float_list, default=[1.0], metavar="K[,K2,...]",
                   help="fit levels tau >= 0.9 above the first n edge at 1 - K (1 - tau); K in (0, 1], default 1; "
                        "with --calib-novelty-store one K per novelty bin (or one for all)")
    p.add_argument("--calib-novelty-store", help="training-distribution store whose set statistics become the novelty "
                                                 "reference: offsets are then fitted per novelty bin (model.novelty)")
    p.add_argument("--calib-novelty-quantiles", type=_float_list, default=[0.75], metavar="Q1,...",
                   help="novelty bin edges at these quantiles of the training sets' novelty (default 0.75)")
    p.add_argument("--calib-novelty-sets", type=int, default=8000,
                   help="sets of the novelty store to read (default 8000): --calib-novelty-reference of them become the "
                        "reference, the rest place the bin edges")
    p.add_argument("--calib-novelty-reference", type=int, default=5000, help="reference sets (default 5000)")
    p.add_argument("--knn-rows", type=int, help="kNN reference rows at inference (default: the run's)")
    p.add_argument("--knn-quantize", choices=("true", "false"),
                   help="kNN distances on int16-rounded scores (faster) or exact float32 (default: the run's)")
    p.add_argument("--init-from", help="the checkpoint the run was started from, recorded as its lineage when the "
                                       "run's own metadata lacks it (runs made before train.py recorded it)")
    args = p.parse_args(argv)
    for flag, value in (("--calib-central-robust", args.calib_central_robust),
                        ("--calib-tail-robust", args.calib_tail_robust)):
        if not 0.0 <= value <= 1.0:
            p.error(f"{flag} must lie in [0, 1], got {value}")
    if not all(0.0 < k <= 1.0 for k in args.calib_upper_tail):
        p.error(f"--calib-upper-tail must lie in (0, 1], got {args.calib_upper_tail}")
    if any(k != 1.0 for k in args.calib_upper_tail) and not args.calib_n_edges:
        p.error("--calib-upper-tail acts above the first n edge: it needs --calib-n-edges")
    bins = len(args.calib_novelty_quantiles) + 1 if args.calib_novelty_store else 1
    if len(args.calib_upper_tail) not in (1, bins):
        p.error(f"--calib-upper-tail takes one value or one per novelty bin ({bins}), got {args.calib_upper_tail}")
    if args.calib_novelty_store and not args.calib_store:
        p.error("--calib-novelty-store fits per-bin offsets: it needs --calib-store")

    model, meta = load_checkpoint(args.src)
    limits = dict(meta["limits"])
    info = dict(meta.get("info") or {})
    calibration = meta.get("calibration")
    n_edges = meta.get("calibration_n_edges") or []
    novelty = meta.get("calibration_novelty")
    if args.init_from and not info.get("init_from"):
        _, origin = load_checkpoint(args.init_from)
        info["init_from"] = lineage(args.init_from, origin)
    limits = _stream_run_limits(info, limits)
    if args.knn_rows is not None and args.knn_rows != model.config.knn_rows:
        info["knn_rows_trained"] = model.config.knn_rows
        model = switch_inputs(model, knn_rows=int(args.knn_rows))
    if args.knn_quantize is not None and (args.knn_quantize == "true") != model.config.knn_quantize:
        info["knn_quantize_trained"] = model.config.knn_quantize
        model = switch_inputs(model, knn_quantize=args.knn_quantize == "true")
    if args.n_max is not None:
        limits["n_max_trained"] = limits["n_max"]
        limits["n_max"] = int(args.n_max)
    if args.calib_store:
        n_edges = args.calib_n_edges  # checked by _int_list
        pred = uncalibrated_predictions(model, limits, info, args.calib_store,
                                        Path(args.out).with_suffix(".uncalibrated.tmp"), args.max_sets)
        grid, target, n_seen, dims, geometric, used = (pred[k] for k in ("grid", "t", "n", "dims", "geometric", "used"))
        levels = np.asarray(model.config.quantile_levels)
        groups = {}  # grouping name -> labels (N,); empty: one pooled fit
        if args.calib_groups != "none":
            groups["dims"] = np.array(dims)
        if args.calib_groups == "dims+geometry":
            groups["transform"] = np.where(geometric, "geometric", "other")
        grouping = list(groups.values()) or None
        novelty, bin_of = None, None
        if args.calib_novelty_store:
            ref = uncalibrated_predictions(model, limits, info, [args.calib_novelty_store],
                                           Path(args.out).with_suffix(".uncalibrated.tmp"), args.calib_novelty_sets,
                                           outputs=batch_stats)
            try:
                novelty = fit_novelty_reference(ref["stats"], args.calib_novelty_quantiles,
                                                size=args.calib_novelty_reference)
            except ValueError as e:
                p.error(f"--calib-novelty-store: {e}")
            bin_of = novelty_bins(novelty, pred["stats"])
            per_bin = np.bincount(bin_of, minlength=novelty.bins).tolist()
            print(f"novelty reference: {novelty.points.shape[0]} sets of {args.calib_novelty_store}, edges "
                  f"{[round(e, 3) for e in novelty.edges]}; calibration sets per bin {per_bin}")
        try:
            if novelty is not None:
                offsets = fit_calibration_by_novelty(grid, target, levels, n_seen, n_edges, bin_of, novelty.bins,
                                                     args.calib_upper_tail, groups=grouping,
                                                     central_robust=args.calib_central_robust,
                                                     tail_robust=args.calib_tail_robust)
            elif n_edges:
                offsets = fit_calibration_by_n(grid, target, levels, n_seen, n_edges, groups=grouping,
                                               central_robust=args.calib_central_robust,
                                               upper_tail=args.calib_upper_tail[0], tail_robust=args.calib_tail_robust)
            else:
                offsets = fit_calibration(grid, target, levels, groups=grouping,
                                          central_robust=args.calib_central_robust,
                                          tail_robust=args.calib_tail_robust)
        except ValueError as e:
            p.error(str(e))
        if novelty is not None:
            cal = apply_calibration_by_novelty(grid, offsets, bin_of, n=n_seen, n_edges=n_edges)
        else:
            cal = apply_calibration(grid, offsets, n=n_seen, n_edges=n_edges)
        before = (target[:, None] <= grid).mean(0)
        after = (target[:, None] <= cal).mean(0)
        print("level   coverage before -> after (calibration store, %d sets)" % len(target))
        for lv, b, a in zip(levels, before, after):
            print(f"{lv:6.3f}  {b:6.3f} -> {a:6.3f}")
        if n_edges:  # each set labelled by its range's bounds: "n <= 300", "300 < n <= 1000", ...
            groups["n range"] = np.array(n_range_labels(n_edges))[n_range_index(n_seen, n_edges)]
        if novelty is not None:
            groups["novelty bin"] = bin_of.astype(str)
        for kind, labels in groups.items():
            for g in np.unique(labels):
                sel = labels == g
                inside, _ = interval_scores(levels, cal[sel], target[sel], 0.9)
                print(f"{kind} {g:>9}: {sel.sum():5d} sets, central 90% interval covers {inside:.3f}")
        calibration = np.asarray(offsets).tolist()
        info["calibration_store"] = {**used[0], "groups": args.calib_groups, "n_edges": n_edges,
                                     "central_robust": args.calib_central_robust,
                                     "tail_robust": args.calib_tail_robust,
                                     "upper_tail": (args.calib_upper_tail if novelty is not None
                                                    else args.calib_upper_tail[0])}
        if novelty is not None:
            info["calibration_store"]["novelty"] = {"store": str(args.calib_novelty_store),
                                                    "quantiles": args.calib_novelty_quantiles,
                                                    "sets_read": int(len(ref["t"])),
                                                    "reference_sets": args.calib_novelty_reference}
        if len(used) > 1:
            info["calibration_store"]["stores"] = used
    info["shipped_from"] = str(args.src)
    save_checkpoint(args.out, model, limits=limits, calibration=calibration, calibration_n_edges=n_edges,
                    calibration_novelty=novelty, info=info)
    print(f"wrote {args.out}: limits {json.dumps(limits)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
