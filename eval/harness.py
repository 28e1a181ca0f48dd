"""Benchmark harness: run MI estimators on the sets of a test store and score them.

    python -m eval.harness --store stores/test --out out/eval \
        [--checkpoint data/default.safetensors] \
        [--estimators model,ksg,ksg_boot,gaussian,infonce] [--max-sets 500] [--seed 0]

For every chosen set (all, or --max-sets picked reproducibly and stratified by n) every
estimator returns MI quantiles in nats at the levels 0.05, 0.10, ..., 0.95 and is timed.
Writes to --out:

    results.json   configuration, per-estimator scores overall and per group, and every
                   per-set prediction (quantiles, point = median, seconds, error)
    results.md     Markdown tables: overall, per group, bias per MI bin
    <name>.png     per estimator: calibration curve, |error| vs true MI, MAE vs n
    comparison.png all estimators together

Groups: family, transform, n (exact values if the store uses at most 8, else <=50,
51-200, 201-700, 701-2000, >2000), dims (max(dx, dy) <=5, 6-25, >25), rows per
dimension (n / (dx + dy) <=3, 3-10, >10: "<=3" are the near-minimum sets), true MI bin
(0, (0,1], (1,3], (3,8], (8,35], >35) and the family groups embeddings, spirals,
flows, heavy_tails, dims>25. Point estimators (no interval) get no coverage scores.
An estimator that raises on a set is recorded as a failure (NaN) and the run goes on.

--reuse OLD/results.json copies the per-set predictions (and times) of the baselines from
an earlier run on the same store, levels, seed and bootstrap count instead of recomputing
them (KSG, bootstrap and InfoNCE take most of a run); the model is always recomputed.
Sets or estimators that the old file lacks are computed as usual; results.json lists
what was reused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics
from .baselines import Estimator
from .sources import SetSource, StoreSource

MAX_FIXED_N = 8
GROUP_KINDS: tuple[str, ...] = ("family", "transform", "n", "dims", "rows_per_dim", "mi", "family_group")


def fixed_n_values(ns: Sequence[int]) -> list[int] | None:
    """The distinct sample sizes if there are at most MAX_FIXED_N of them, else None."""
    distinct = sorted({int(v) for v in ns})
    return distinct if len(distinct) <= MAX_FIXED_N else None


def select_sets(ns: Sequence[int], max_sets: int | None, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of at most max_sets sets, stratified by n bucket, reproducible from seed.

    Strata are the n labels of `metrics.n_bucket`; each stratum is shuffled with the seed and
    the strata are taken round-robin, so every n bucket is represented as evenly as the
    store allows. max_sets None (or >= len) selects everything.
    """
    ns = np.asarray(ns, dtype=np.int64)
    if max_sets is None or max_sets >= len(ns):
        return np.arange(len(ns))
    if max_sets < 1:
        raise ValueError(f"max_sets must be >= 1, got {max_sets}")
    fixed = fixed_n_values(ns)
    labels = np.array([metrics.n_bucket(v, fixed) for v in ns])
    rng = np.random.default_rng(seed)
    strata = [rng.permutation(np.flatnonzero(labels == lab)) for lab in sorted(set(labels.tolist()))]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < max_sets:
        for s in strata:
            if depth < len(s) and len(chosen) < max_sets:
                chosen.append(int(s[depth]))
        depth += 1
    return np.sort(np.array(chosen, dtype=np.int64))


def group_labels(info, fixed_n: list[int] | None) -> dict[str, list[str]]:
    """Every group a set belongs to, as {kind: [labels]} (one label per kind except family_group)."""
    return {
        "family": [info.family],
        "transform": [info.transform],
        "n": [metrics.n_bucket(info.n, fixed_n)],
        "dims": [metrics.dims_bucket(info.dx, info.dy)],
        "rows_per_dim": [metrics.rows_per_dim_bucket(info.n, info.dx, info.dy)],
        "mi": [metrics.mi_bin(info.mi)],
        "family_group": metrics.family_groups(info.family, info.transform, info.dx, info.dy),
    }


NEVER_REUSED = ("model",)
"""Estimators whose predictions --reuse never copies (the checkpoint is what changes between runs)."""


def reusable_predictions(old: dict, *, store: str, levels: Sequence[float], seed: int, n_boot: int,
                         train_store: str | None) -> dict[str, dict[int, dict]]:
    """{estimator: {set index: prediction}} from an earlier results.json that may be reused.

    Only when the earlier run used the same store path, levels, seed, and (for *_boot) bootstrap
    count, and (for train_mean) the same training store; never for NEVER_REUSED. Each prediction
    also carries the set's true MI ("mi") so the caller can check that the store is unchanged.
    """
    cfg = old.get("config", {})
    if cfg.get("store") != store or cfg.get("seed") != seed:
        return {}
    old_levels = old.get("levels", [])
    if len(old_levels) != len(levels) or not np.allclose(old_levels, list(levels)):
        return {}
    out: dict[str, dict[int, dict]] = {}
    for rec in old.get("sets", []):
        for name, pred in rec.get("predictions", {}).items():
            if name in NEVER_REUSED or pred.get("error") is not None:
                continue
            if name.endswith("_boot") and cfg.get("n_boot") != n_boot:
                continue
            if name == "train_mean" and cfg.get("train_store") != train_store:
                continue
            out.setdefault(name, {})[int(rec["index"])] = {**pred, "mi": rec["mi"]}
    return out


def run_estimators(
    source: SetSource,
    estimators: Sequence[Estimator],
    indices: Sequence[int],
    levels: Sequence[float] = metrics.DEFAULT_LEVELS,
    *,
    progress: bool = True,
    reuse: dict[str, dict[int, dict]] | None = None,
) -> list[dict[str, Any]]:
    """Run every estimator on every selected set; one record per set.

    A record holds the SetInfo fields, `groups` (see group_labels) and `predictions`:
    {name: {"quantiles": (Q,) list in nats, "point": median, "time_s": seconds, "error": str | None}}.
    reuse (see `reusable_predictions`): predictions to copy instead of computing, by
    estimator and set index; a copied prediction is used only if its true MI matches the set's,
    and is marked "reused": True.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    fixed_n = fixed_n_values([source.info(int(i)).n for i in indices])
    records = []
    for i in tqdm(indices, desc="sets", disable=not progress):
        info = source.info(int(i))
        x, y = source.get(int(i))
        rec: dict[str, Any] = asdict(info)
        rec["groups"] = group_labels(info, fixed_n)
        rec["predictions"] = {}
        for est in estimators:
            old = (reuse or {}).get(est.name, {}).get(int(i))
            if old is not None and math.isclose(old["mi"], info.mi, rel_tol=1e-9, abs_tol=1e-12):
                rec["predictions"][est.name] = {**{k: old[k] for k in ("quantiles", "point", "time_s", "error")}, "reused": True}
                continue
            t0 = time.perf_counter()
            try:
                q = np.asarray(est.estimate_quantiles(x, y, levels), dtype=np.float64)
                err = None
            except Exception as exc:  # a failing estimate is a result, not a crash
                q = np.full(len(levels), math.nan)
                err = f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            rec["predictions"][est.name] = {
                "quantiles": q.tolist(),
                "point": float(metrics.quantile_at(levels, q[None, :], 0.5)[0]),
                "time_s": dt,
                "error": err,
            }
        records.append(rec)
    return records


def _label_order(kind: str, labels: set[str]) -> list[str]:
    tables = {"n": metrics.N_BUCKETS, "dims": metrics.DIMS_BUCKETS, "rows_per_dim": metrics.ROWS_PER_DIM_BUCKETS,
              "mi": metrics.MI_BINS}
    if kind == "n" and all(lab.isdigit() for lab in labels):
        return sorted(labels, key=int)
    if kind in tables:
        order = [lab for lab, _ in tables[kind]]
        return [lab for lab in order if lab in labels]
    if kind == "family_group":
        return [lab for lab in metrics.FAMILY_GROUPS if lab in labels]
    return sorted(labels)


def _summary_of(records: list[dict], name: str, levels: Sequence[float], has_interval: bool) -> dict:
    q = np.array([r["predictions"][name]["quantiles"] for r in records], dtype=np.float64).reshape(len(records), len(levels))
    truth = np.array([r["mi"] for r in records], dtype=np.float64)
    times = np.array([r["predictions"][name]["time_s"] for r in records], dtype=np.float64)
    return metrics.summarise(levels, q, truth, times, has_interval)


def summarise_records(records: list[dict], estimators: Sequence[Estimator], levels: Sequence[float]) -> dict:
    """{name: {"has_interval", "overall": summary, "groups": {kind: {label: summary}}}} (see metrics.summarise)."""
    out = {}
    for est in estimators:
        entry = {"has_interval": bool(est.has_interval), "overall": _summary_of(records, est.name, levels, est.has_interval), "groups": {}}
        for kind in GROUP_KINDS:
            labels = {lab for r in records for lab in r["groups"][kind]}
            entry["groups"][kind] = {
                lab: _summary_of([r for r in records if lab in r["groups"][kind]], est.name, levels, est.has_interval)
                for lab in _label_order(kind, labels)
            }
        out[est.name] = entry
    return out


def _json_safe(obj: Any) -> Any:
    """Replace NaN / inf by None so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _overall_row(name: str, s: dict, has_interval: bool) -> str:
    cells = [name, str(s["count"]), str(s["failures"]), _fmt(s["mae"]), _fmt(s["rmse"]), _fmt(s["bias"])]
    for c in ("50", "80", "90"):
        cells.append(_fmt(s["coverage"][c], 2) if has_interval else "-")
    for c in ("50", "80", "90"):
        cells.append(_fmt(s["width"][c], 2) if has_interval else "-")
    cells.append(_fmt(s["median_time_s"] * 1e3 if s["median_time_s"] is not None else None, 2))
    return "| " + " | ".join(cells) + " |"


_OVERALL_HEADER = (
    "| estimator | sets | failures | MAE | RMSE | bias | cov50 | cov80 | cov90 | width50 | width80 | width90 | median ms |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def results_markdown(results: dict) -> str:
    """The report as Markdown: overall table, one table per group kind, bias per MI bin."""
    est = results["estimators"]
    cfg = results["config"]
    lines = [
        "# MI estimator benchmark",
        "",
        f"Store: `{cfg.get('store')}`; sets: {results['num_sets']}; seed: {cfg.get('seed')}; "
        f"estimators: {', '.join(est)}. MI in nats; bias = mean(estimate - truth); point = median "
        "quantile; cov/width: central intervals (interval estimators only); time: median per estimate.",
        "",
        f"Command: `{cfg.get('command')}`",
        "",
        "## Overall",
        "",
        _OVERALL_HEADER,
    ]
    lines += [_overall_row(name, e["overall"], e["has_interval"]) for name, e in est.items()]
    titles = {"family": "family", "transform": "transform", "n": "n", "dims": "max(dx, dy)", "rows_per_dim": "n / (dx + dy)", "mi": "true MI (nats)", "family_group": "family group"}
    for kind in GROUP_KINDS:
        lines += ["", f"## By {titles[kind]}", "", _OVERALL_HEADER.replace("| estimator |", f"| {titles[kind]} | estimator |", 1).replace("|---|", "|---|---|", 1)]
        labels = list(next(iter(est.values()))["groups"][kind]) if est else []
        for lab in labels:
            for name, e in est.items():
                lines.append(f"| {lab} " + _overall_row(name, e["groups"][kind][lab], e["has_interval"]))
    lines += ["", "## Bias per true-MI bin (nats)", "", "| MI bin | sets | " + " | ".join(est) + " |", "|---|---:|" + "---:|" * len(est)]
    if est:
        first = next(iter(est.values()))
        for lab, s in first["groups"]["mi"].items():
            lines.append(f"| {lab} | {s['count'] + s['failures']} | " + " | ".join(_fmt(e["groups"]["mi"][lab]["bias"]) for e in est.values()) + " |")
    return "\n".join(lines) + "\n"


def evaluate(
    source: SetSource,
    estimators: Sequence[Estimator],
    out_dir: str | Path,
    *,
    max_sets: int | None = None,
    seed: int = 0,
    levels: Sequence[float] = metrics.DEFAULT_LEVELS,
    progress: bool = True,
    plots: bool = True,
    config: dict | None = None,
    reuse: dict[str, dict[int, dict]] | None = None,
) -> dict:
    """Run, score and write results.json, results.md and the plots into out_dir; return the results dict.

    reuse: earlier predictions to copy (see `reusable_predictions` and `run_estimators`)."""
    names = [e.name for e in estimators]
    if len(set(names)) != len(names):
        raise ValueError(f"estimator names must be unique, got {names}")
    if len(source) == 0:
        raise ValueError("the source holds no sets")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = select_sets([source.info(i).n for i in range(len(source))], max_sets, seed)
    records = run_estimators(source, estimators, indices, levels, progress=progress, reuse=reuse)
    reused = sorted(e.name for e in estimators if records and all(r["predictions"][e.name].get("reused") for r in records))
    results = {
        "config": {"seed": seed, "max_sets": max_sets, **(config or {}), "reused": reused},
        "levels": list(levels),
        "num_sets": len(records),
        "estimators": summarise_records(records, estimators, levels),
        "sets": records,
    }
    results = _json_safe(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(results_markdown(results))
    if plots:
        from .plots import write_plots  # noqa: PLC0415 (matplotlib only when plotting)

        results["plots"] = [str(p) for p in write_plots(results, out)]
    return results


def _torch_threads() -> int | None:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch.get_num_threads()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on a usage or input error)."""
    from .estimators import make_estimator, parse_estimator_names  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m eval.harness", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="test store directory (metagen zarr store)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: infer's shipped checkpoint)")
    p.add_argument("--estimators", default="model,ksg,ksg_boot,gaussian,infonce", help="comma-separated names")
    p.add_argument("--max-sets", type=int, default=None, help="evaluate at most this many sets (stratified by n)")
    p.add_argument("--seed", type=int, default=0, help="seed for set selection and every estimator")
    p.add_argument("--n-boot", type=int, default=50, help="bootstrap resamples for *_boot estimators")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="device for the model (default: infer's choice)")
    p.add_argument("--model-out-of-range", default="ignore", choices=("error", "warn", "ignore"),
                   help="infer's rule for sets outside the trained range (default ignore: the model answers "
                        "every set, so extrapolation is scored, not dropped as a failure)")
    p.add_argument("--train-store", default=None, help="store whose mean MI the train_mean estimator predicts")
    p.add_argument("--reuse", default=None, metavar="RESULTS_JSON",
                   help="copy the baselines' predictions from an earlier results.json of the same store, "
                        "levels, seed and --n-boot instead of recomputing them (the model is always recomputed)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        names = parse_estimator_names(args.estimators)
        if args.threads is not None:
            import torch  # noqa: PLC0415

            torch.set_num_threads(args.threads)
        source = StoreSource(args.store)
        estimators = [make_estimator(n, seed=args.seed, checkpoint=args.checkpoint, device=args.device, n_boot=args.n_boot,
                                     on_out_of_range=args.model_out_of_range, train_store=args.train_store)
                      for n in names]
        for est in estimators:
            if hasattr(est, "check_available"):
                est.check_available()  # fail before hours of baselines, not after
        command = "python -m eval.harness " + " ".join(sys.argv[1:] if argv is None else argv)
        reuse = None
        if args.reuse is not None:
            try:
                old = json.loads(Path(args.reuse).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"--reuse: cannot read {args.reuse}: {exc}") from None
            reuse = reusable_predictions(old, store=str(args.store), levels=metrics.DEFAULT_LEVELS, seed=args.seed,
                                         n_boot=args.n_boot, train_store=args.train_store)
        results = evaluate(
            source, estimators, args.out, max_sets=args.max_sets, seed=args.seed, progress=not args.no_progress,
            plots=not args.no_plots, config={"store": str(args.store), "checkpoint": args.checkpoint, "command": command, "n_boot": args.n_boot,
                    "model_out_of_range": args.model_out_of_range, "torch_threads": _torch_threads(),
                    "train_store": args.train_store},
            reuse=reuse,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {Path(args.out) / 'results.json'}, results.md and {len(results.get('plots', []))} plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
