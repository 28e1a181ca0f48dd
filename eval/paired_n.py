"""Error and interval width against n on the same distributions: each task drawn once, sampled at every n.

    python -m eval.paired_n --config configs/metagen/bench_ood.toml --seed 35 --num-tasks 300 \
        --n 100,500,1000 --out results/paired-n/bench-ood [--checkpoint PATH] \
        [--estimators model,ksg,gaussian,train_mean --train-store DIR] [--threads 1]

The benchmark stores draw a new task for every set, so their per-n rows compare different
distributions: a 90% interval that is no narrower at n = 1,000 than at n = 500 there may be
task-to-task noise. Here every task (family, transform with its fitted parameters, dims and
true MI) is drawn once with metagen's ``draw_task`` and sampled at each n with the task's own
seed, so the differences between two n are paired. Tasks whose dims need more rows than the
smallest n (dx + dy + 2 > min n) are skipped and counted; drawing goes on until --num-tasks
are kept.

Writes to --out: paired.json (the config, and per n the harness records: every estimator's
quantiles per task, tasks in the same order at every n) and paired.md (per n: MAE, the
model's coverage and mean widths; per consecutive pair of n: the model's mean paired change
of the 90% width with its standard error, the geometric-mean width ratio and the share of
tasks whose interval got narrower; the model's 90% width per n within true-MI bins; the model's
MAE, bias and 50% / 90% coverage per family group at each n).
All MI in nats.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics
from .harness import _json_safe, _torch_threads, run_estimators
from .sources import ListSource

MAX_DRAWS_PER_TASK = 20
"""Drawing stops with an error after this many draws per wanted task (dims too large for min n)."""


def parse_sizes(spec: str) -> list[int]:
    """'100,500,1000' -> [100, 500, 1000]: at least two, strictly increasing, each >= 3 (ValueError otherwise)."""
    try:
        ns = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--n: expected comma-separated integers, got {spec!r}") from None
    if len(ns) < 2:
        raise ValueError(f"--n: give at least two sample sizes to compare, got {spec!r}")
    if any(b <= a for a, b in zip(ns, ns[1:])):
        raise ValueError(f"--n: sizes must be strictly increasing, got {ns}")
    if ns[0] < 3:
        raise ValueError(f"--n: sizes must be >= 3 (dx + dy + 2 rows at least), got {ns[0]}")
    return ns


def draw_paired_tasks(config: Any, seed: int, num_tasks: int, min_n: int) -> tuple[list[Any], int]:
    """The first num_tasks tasks of (config, seed) that fit min_n rows, and how many were skipped.

    A task fits when dx + dy + 2 <= min_n (metagen's smallest set). Tasks are
    ``metagen.tasks.draw_task(config, seed, index)`` for index = 0, 1, ...; raises ValueError
    if num_tasks < 1 or too few fit within MAX_DRAWS_PER_TASK * num_tasks draws.
    """
    from metagen.tasks import draw_task  # noqa: PLC0415

    if num_tasks < 1:
        raise ValueError(f"--num-tasks must be >= 1, got {num_tasks}")
    kept: list[Any] = []
    skipped = 0
    for index in range(MAX_DRAWS_PER_TASK * num_tasks):
        task = draw_task(config, seed, index)
        if task.dx + task.dy + 2 <= min_n:
            kept.append(task)
            if len(kept) == num_tasks:
                return kept, skipped
        else:
            skipped += 1
    raise ValueError(f"only {len(kept)} of {MAX_DRAWS_PER_TASK * num_tasks} tasks fit n = {min_n} "
                     f"(dx + dy + 2 <= n); lower the config's dims.max or raise the smallest --n")


def sets_at(tasks: Sequence[Any], n: int) -> ListSource:
    """Every task sampled at n rows (its own seed), as a harness source in the tasks' order."""
    sets = []
    for t in tasks:
        x, y = replace(t, n=int(n)).sample()
        sets.append((x, y, {"mi": t.mi, "mi_stderr": t.mi_stderr, "family": t.family,
                            "transform": t.transform, "seed": t.seed}))
    return ListSource(sets)


def _quantiles(records: list[dict], name: str) -> np.ndarray:
    return np.array([r["predictions"][name]["quantiles"] for r in records], dtype=np.float64)


def _widths(q: np.ndarray, levels: Sequence[float], coverage: float) -> np.ndarray:
    """(T,) width of the central interval of each row of quantiles q (T, Q) (NaN where the estimate failed)."""
    lo, hi = metrics.central_interval(levels, q, coverage)
    return hi - lo


def paired_summary(records_by_n: dict[int, list[dict]], levels: Sequence[float], estimators: Sequence[str],
                   interval_estimator: str | None = "model") -> dict:
    """Scores per n and paired width changes between consecutive n.

    records_by_n: {n: harness records (run_estimators) of the same tasks in the same order}.
    Returns {"n": [...], "tasks": T, "per_n": {n: {estimator: metrics.summarise(...)}},
    "width_change": [{"from", "to", "coverage", "mean_from", "mean_to", "mean_change", "se_change",
    "ratio_geomean", "share_narrower", "tasks"}, ...] for the 50% and 90% intervals of
    interval_estimator, "width90_by_mi": {bin: {n: mean width}}, "tasks_by_mi": {bin: count} and
    "by_group": {family group: {n: metrics.summarise of interval_estimator on that group's tasks}}}.
    Tasks where any n's interval is not finite are left out of the paired changes.
    """
    ns = sorted(records_by_n)
    first = records_by_n[ns[0]]
    for n in ns[1:]:
        if [r["mi"] for r in records_by_n[n]] != [r["mi"] for r in first]:
            raise ValueError(f"records at n = {n} are not the tasks of n = {ns[0]} in the same order")
    truth = np.array([r["mi"] for r in first], dtype=np.float64)
    out: dict[str, Any] = {"n": ns, "tasks": len(first), "per_n": {}, "width_change": []}
    for n in ns:
        recs = records_by_n[n]
        out["per_n"][n] = {}
        for name in estimators:
            times = np.array([r["predictions"][name]["time_s"] for r in recs], dtype=np.float64)
            has_interval = name == interval_estimator
            out["per_n"][n][name] = metrics.summarise(levels, _quantiles(recs, name), truth, times, has_interval)
    if interval_estimator is None:
        return out
    q_by_n = {n: _quantiles(records_by_n[n], interval_estimator) for n in ns}  # n -> (T, Q)
    widths = {c: np.stack([_widths(q_by_n[n], levels, c) for n in ns]) for c in (0.5, 0.9)}  # c -> (N, T)
    for coverage, w in widths.items():
        ok = np.all(np.isfinite(w), axis=0) & np.all(w > 0, axis=0)
        for i in range(len(ns) - 1):
            a, b = w[i, ok], w[i + 1, ok]
            d = b - a
            out["width_change"].append({
                "from": ns[i], "to": ns[i + 1], "coverage": coverage, "tasks": int(d.size),
                "mean_from": float(a.mean()), "mean_to": float(b.mean()), "mean_change": float(d.mean()),
                "se_change": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan,
                "ratio_geomean": float(np.exp(np.mean(np.log(b / a)))),
                "share_narrower": float(np.mean(d < 0)),
            })
    w90 = widths[0.9]
    bins = np.array([metrics.mi_bin(m) for m in truth])
    out["width90_by_mi"], out["tasks_by_mi"] = {}, {}
    for label, _ in metrics.MI_BINS:
        sel = bins == label
        if sel.any():
            out["tasks_by_mi"][label] = int(sel.sum())
            out["width90_by_mi"][label] = {n: float(np.nanmean(w90[i, sel])) for i, n in enumerate(ns)}
    out["by_group"] = {}
    for group in metrics.FAMILY_GROUPS:
        sel = np.array([group in r["groups"]["family_group"] for r in first])
        if sel.any():
            out["by_group"][group] = {
                n: metrics.summarise(levels, q_by_n[n][sel], truth[sel], np.zeros(int(sel.sum())), True)
                for n in ns}
    return out


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def paired_markdown(summary: dict, estimators: Sequence[str], interval_estimator: str | None = "model",
                    command: str | None = None) -> str:
    """paired_summary as Markdown tables (MI and widths in nats)."""
    ns = summary["n"]
    lines = [f"Paired sets: {summary['tasks']} tasks, each sampled at n = {', '.join(map(str, ns))}.", ""]
    if command:
        lines += [f"`{command}`", ""]
    head = "| n | " + " | ".join(f"{e} MAE" for e in estimators)
    sep = "|---:|" + "---:|" * len(estimators)
    if interval_estimator is not None:
        head += f" | {interval_estimator} cov50 | cov90 | width50 | width90"
        sep += "---:|" * 4
    lines += [head + " |", sep]
    for n in ns:
        row = [str(n)] + [_f(summary["per_n"][n][e]["mae"]) for e in estimators]
        if interval_estimator is not None:
            s = summary["per_n"][n][interval_estimator]
            row += [_f(s["coverage"]["50"]), _f(s["coverage"]["90"]), _f(s["width"]["50"]), _f(s["width"]["90"])]
        lines.append("| " + " | ".join(row) + " |")
    if interval_estimator is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"Paired change of {interval_estimator}'s interval width between consecutive n (same tasks):", "",
              "| interval | n | tasks | mean width | mean change (SE) | width ratio (geometric mean) | share narrower |",
              "|---|---|---:|---|---|---:|---:|"]
    for c in summary["width_change"]:
        lines.append(f"| {round(c['coverage'] * 100)}% | {c['from']} -> {c['to']} | {c['tasks']} | "
                     f"{_f(c['mean_from'])} -> {_f(c['mean_to'])} | {c['mean_change']:+.2f} ({_f(c['se_change'])}) | "
                     f"{_f(c['ratio_geomean'], 3)} | {_f(c['share_narrower'])} |")
    lines += ["", f"{interval_estimator}'s mean 90% width per true-MI bin (same tasks at every n):", "",
              "| true MI | tasks | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|---:|" + "---:|" * len(ns)]
    for label, by_n in summary["width90_by_mi"].items():
        lines.append(f"| {label} | {summary['tasks_by_mi'][label]} | " + " | ".join(_f(by_n[n]) for n in ns) + " |")
    if summary.get("by_group"):
        lines += ["", f"{interval_estimator} per family group, at each n (same tasks): MAE, bias, 50% / 90% coverage:", "",
                  "| group | tasks | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|---:|" + "---|" * len(ns)]
        for group, by_n in summary["by_group"].items():
            cells = [f"{_f(s['mae'])}, {s['bias']:+.2f}, {_f(s['coverage']['50'])} / {_f(s['coverage']['90'])}"
                     for s in (by_n[n] for n in ns)]
            lines.append(f"| {group} | {by_n[ns[0]]['count']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on a usage or input error)."""
    from .estimators import make_estimator, parse_estimator_names  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m eval.paired_n", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="metagen generator config (TOML) the tasks are drawn from")
    p.add_argument("--seed", type=int, default=None, help="task seed (default: the config's; use one no store uses)")
    p.add_argument("--num-tasks", type=int, default=300, help="tasks to keep (default 300)")
    p.add_argument("--n", default="100,500,1000", help="sample sizes, increasing (default 100,500,1000)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: infer's shipped checkpoint)")
    p.add_argument("--estimators", default="model,ksg,gaussian", help="comma-separated names (default model,ksg,gaussian)")
    p.add_argument("--train-store", default=None, help="store whose mean MI the train_mean estimator predicts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        from metagen.config import ConfigError, load_config  # noqa: PLC0415

        ns = parse_sizes(args.n)
        names = parse_estimator_names(args.estimators)
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        seed = config.seed if args.seed is None else args.seed
        if args.threads is not None:
            import torch  # noqa: PLC0415

            torch.set_num_threads(args.threads)
        estimators = [make_estimator(name, seed=0, checkpoint=args.checkpoint, on_out_of_range="ignore",
                                     train_store=args.train_store) for name in names]
        for est in estimators:
            if hasattr(est, "check_available"):
                est.check_available()
        interval = next((e.name for e in estimators if e.has_interval), None)
        tasks, skipped = draw_paired_tasks(config, seed, args.num_tasks, ns[0])
        levels = metrics.DEFAULT_LEVELS
        records = {}
        for n in ns:
            if not args.no_progress:
                print(f"n = {n}: {len(tasks)} sets", file=sys.stderr)
            records[n] = run_estimators(sets_at(tasks, n), estimators, range(len(tasks)), levels,
                                        progress=not args.no_progress)
        summary = paired_summary(records, levels, names, interval)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m eval.paired_n " + " ".join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"config": str(args.config), "seed": seed, "num_tasks": len(tasks), "skipped": skipped, "n": ns,
           "checkpoint": args.checkpoint, "estimators": names, "train_store": args.train_store, "command": command,
           "torch_threads": _torch_threads()}
    (out / "paired.json").write_text(json.dumps(_json_safe({"config": cfg, "levels": list(levels), "summary": summary,
                                                            "records": {str(n): r for n, r in records.items()}}), indent=1))
    md = paired_markdown(summary, names, interval, command) + f"\n{skipped} drawn tasks skipped (dx + dy + 2 > {ns[0]}).\n"
    (out / "paired.md").write_text(md)
    print(md)
    print(f"wrote {out / 'paired.json'} and paired.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
