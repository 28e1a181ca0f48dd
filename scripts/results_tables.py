"""Summarise eval-harness outputs into the Markdown tables quoted in the README.

    python scripts/results_tables.py results > results/SUMMARY.md

Reads ``<dir>/<store>/results.json`` for every store folder the harness wrote
(``scripts/make_results.sh`` makes them) and prints, per store: the overall table,
MAE per n, the model's interval coverage per n, MAE per family group, per dimension
range and per samples-per-dimension range, bias per MI bin, the ratio of the model's MAE
to the better classical baseline's, and the model's 90% interval width per n within
each true-MI bin (a store draws MI and n independently, so the plain width per n mixes
in how many high-MI sets each n happened to get; within a bin it does not), and MAE
per true-MI bin with each bin's share of the model's summed absolute error, and for the
sets above 8 nats each estimator's mean estimate per family group. First of all, the table of
where the checkpoint stands against the targets (``scripts/targets_table.py``). Then, for every folder
``python -m eval.paired_n`` wrote (the same tasks sampled at several n), its paired.md. Every
number is read from those files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.metrics import MI_BINS, central_interval  # noqa: E402
from scripts.targets_table import targets_lines  # noqa: E402

BASELINES = ("ksg", "gaussian")


def _f(v, nd=2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _overall(r: dict) -> list[str]:
    rows = ["| estimator | sets | MAE | RMSE | bias | cov50 | cov80 | cov90 | width90 | median ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in r["estimators"].items():
        o = e["overall"]
        cov, width = o.get("coverage") or {}, o.get("width") or {}
        rows.append(f"| {name} | {o['count']} | {_f(o['mae'])} | {_f(o['rmse'])} | {_f(o['bias'])} | "
                    f"{_f(cov.get('50'))} | {_f(cov.get('80'))} | {_f(cov.get('90'))} | {_f(width.get('90'))} | "
                    f"{_f(1000 * o['median_time_s'], 1) if o.get('median_time_s') is not None else '-'} |")
    return rows


def _by(r: dict, group: str, metric: str, title: str) -> list[str]:
    names = list(r["estimators"])
    keys: list[str] = []
    for e in r["estimators"].values():
        for k in e["groups"].get(group, {}):
            if k not in keys:
                keys.append(k)
    rows = [f"| {title} | sets | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for k in keys:
        cells, count = [], None
        for n in names:
            g = r["estimators"][n]["groups"].get(group, {}).get(k)
            cells.append(_f(g[metric]) if g else "-")
            count = count or (g["count"] if g else None)
        rows.append(f"| {k} | {count} | " + " | ".join(cells) + " |")
    return rows


def _has_model_and_baselines(r: dict) -> bool:
    """Whether the store was scored with the model and both classical baselines (the comparison tables need all three)."""
    return all(k in r["estimators"] for k in ("model", *BASELINES))


def _ratio(r: dict) -> list[str]:
    est = r["estimators"]
    if not _has_model_and_baselines(r):
        return []
    rows = ["| n | model MAE | KSG MAE | Gaussian MAE | model / KSG | model / best baseline |",
            "|---|---:|---:|---:|---:|---:|"]
    for k, g in est["model"]["groups"].get("n", {}).items():
        ksg, gau = est["ksg"]["groups"]["n"][k]["mae"], est["gaussian"]["groups"]["n"][k]["mae"]
        best = min(ksg, gau)
        rows.append(f"| {k} | {_f(g['mae'])} | {_f(ksg)} | {_f(gau)} | {_f(g['mae'] / ksg if ksg else None)} | "
                    f"{_f(g['mae'] / best if best else None)} |")
    return rows


def _error_by_mi(r: dict) -> list[str]:
    """MAE per true-MI bin for the model and both baselines, the model / KSG ratio, and each bin's
    share of the model's summed absolute error: which bins the overall ratio is made of."""
    est = r["estimators"]
    if not _has_model_and_baselines(r):
        return []
    bins = est["model"]["groups"].get("mi", {})
    total = sum(g["mae"] * g["count"] for g in bins.values())
    rows = ["| true MI | sets | model MAE | KSG MAE | Gaussian MAE | model / KSG | share of the model's error |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for k, g in bins.items():
        ksg, gau = est["ksg"]["groups"]["mi"][k]["mae"], est["gaussian"]["groups"]["mi"][k]["mae"]
        rows.append(f"| {k} | {g['count']} | {_f(g['mae'])} | {_f(ksg)} | {_f(gau)} | "
                    f"{_f(g['mae'] / ksg if ksg else None)} | {_f(g['mae'] * g['count'] / total if total else None)} |")
    return rows


def _high_mi_by_group(r: dict, above: float = 8.0) -> list[str]:
    """Sets with true MI above `above` nats, per family group: the mean truth and each estimator's mean
    point estimate (what it sees of the dependence), from the per-set predictions."""
    if not _has_model_and_baselines(r):
        return []
    names = ["model", *BASELINES]
    rows_of: dict[str, list[dict]] = {}
    for s in r["sets"]:
        if s["mi"] > above and all(s["predictions"].get(k, {}).get("point") is not None for k in names):
            for g in [*s["groups"].get("family_group", []), "all"]:
                rows_of.setdefault(g, []).append(s)
    if not rows_of:
        return []
    rows = ["| group | sets | true MI | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    for g, sets in sorted(rows_of.items(), key=lambda kv: kv[0] == "all"):
        est = [np.mean([s["predictions"][k]["point"] for s in sets]) for k in names]
        rows.append(f"| {g} | {len(sets)} | {np.mean([s['mi'] for s in sets]):.2f} | " + " | ".join(_f(v) for v in est) + " |")
    return rows


def _n_header(label: str) -> str:
    return f"n = {label}" if label.isdigit() else f"n {label}"


def _width_by_mi_and_n(r: dict, coverage: float = 0.9) -> list[str]:
    """Mean width (nats) of the model's central interval per true-MI bin (rows) and n group (columns)."""
    sets = [s for s in r["sets"] if s["predictions"].get("model", {}).get("quantiles")]
    if not sets:
        return []
    order_n = list(r["estimators"]["model"]["groups"].get("n", {}))
    ns = [k for k in order_n if any(s["groups"]["n"][0] == k for s in sets)]
    lo, hi = central_interval(r["levels"], np.asarray([s["predictions"]["model"]["quantiles"] for s in sets]), coverage)
    bins: dict[str, dict[str, list[float]]] = {}
    for s, width in zip(sets, hi - lo):
        for key in (s["groups"]["mi"][0], "all"):
            bins.setdefault(key, {}).setdefault(s["groups"]["n"][0], []).append(float(width))
    order = [label for label, _ in MI_BINS if label in bins] + ["all"]
    rows = ["| true MI | " + " | ".join(_n_header(n) for n in ns) + " |", "|---|" + "---:|" * len(ns)]
    for key in order:
        per_n = bins[key]
        cells = [f"{np.mean(per_n[n]):.2f} ({len(per_n[n])})" if n in per_n else "-" for n in ns]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return rows


def _coverage_by(r: dict, group: str, title: str) -> list[str]:
    """The model's central 50% / 90% coverage and mean 90% width (nats) per label of `group`."""
    groups = r["estimators"].get("model", {}).get("groups", {}).get(group, {})
    if not groups or r["estimators"]["model"]["overall"].get("coverage") is None:
        return []
    rows = [f"| {title} | sets | cov50 | cov90 | width90 |", "|---|---:|---:|---:|---:|"]
    for k, g in groups.items():
        cov, width = g.get("coverage") or {}, g.get("width") or {}
        rows.append(f"| {k} | {g['count']} | {_f(cov.get('50'))} | {_f(cov.get('90'))} | {_f(width.get('90'))} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "results")
    out: list[str] = []
    targets = targets_lines(root)
    if targets:
        out += ["### Against the targets", "", f"`python scripts/targets_table.py {root}` (every number below it comes "
                "from the tables that follow; \"met?\" is decided on unrounded values)", "", *targets, ""]
    for sub in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        r = json.loads((sub / "results.json").read_text())
        out += [f"### {sub.name}", "", f"`{r['config'].get('command', '')}`", "", *_overall(r), ""]
        subset = sub.name.endswith("-subset")  # a few sets of the slow estimators: no per-group detail
        kinds = next(iter(r["estimators"].values()))["groups"]
        if "n" in kinds:
            ratio = _ratio(r)
            if ratio:
                out += ["Model vs baselines per n:", "", *ratio, ""]
            out += ["MAE per n:", "", *_by(r, "n", "mae", "n"), ""]
            cov = [] if subset else _coverage_by(r, "n", "n")
            if cov:
                out += ["Model's interval coverage per n:", "", *cov, ""]
            width = [] if subset else _width_by_mi_and_n(r)
            if width:
                out += ["Model's 90% interval width per n within each true-MI bin, nats (sets):", "", *width, ""]
        if not subset:
            groups = _by(r, "family_group", "mae", "group")
            if len(groups) > 2:  # a store of families outside every group (plain Gaussians) has no rows
                out += ["MAE per family group:", "", *groups, ""]
            out += ["MAE per dims (max(dx, dy)):", "", *_by(r, "dims", "mae", "dims"), ""]
            if "rows_per_dim" in kinds:  # results.json written before the harness had this group has none
                out += ["MAE per samples per dimension (n / (dx + dy); <=3: the near-minimum sets):", "",
                        *_by(r, "rows_per_dim", "mae", "n / (dx + dy)"), ""]
            out += ["Bias (estimate - truth) per MI bin, nats:", "", *_by(r, "mi", "bias", "true MI"), ""]
            by_mi = _error_by_mi(r)
            if by_mi:
                out += ["MAE per MI bin and each bin's share of the model's summed absolute error:", "", *by_mi, ""]
            high = _high_mi_by_group(r)
            if high:
                out += ["Sets above 8 nats per family group: mean true MI and mean point estimate, nats:", "", *high, ""]
    for sub in sorted(p for p in root.iterdir() if (p / "paired.md").is_file()):  # eval.paired_n's tables
        out += [f"### {sub.name}", "", (sub / "paired.md").read_text().rstrip(), ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
