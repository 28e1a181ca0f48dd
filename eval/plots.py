"""Figures of a harness run (matplotlib, Agg backend; MI in nats).

Per estimator one figure `<name>.png` with three panels: calibration curve (nominal vs
empirical central-interval coverage; point estimators have none), |error| vs true MI,
MAE vs n. `comparison.png` overlays all estimators.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _per_set(results: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true MI, point estimate, n) arrays over the sets, NaN where the estimate failed."""
    sets = results["sets"]
    truth = np.array([s["mi"] for s in sets], dtype=np.float64)
    point = np.array([np.nan if s["predictions"][name]["point"] is None else s["predictions"][name]["point"] for s in sets], dtype=np.float64)
    n = np.array([s["n"] for s in sets], dtype=np.float64)
    return truth, point, n


def _mae_by_n(results: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(median n of each n group, MAE of the group), ordered as in the report."""
    truth, point, n = _per_set(results, name)
    labels = [s["groups"]["n"][0] for s in results["sets"]]
    xs, ys = [], []
    for lab, summary in results["estimators"][name]["groups"]["n"].items():
        members = np.array([lb == lab for lb in labels])
        if summary["mae"] is not None and members.any():
            xs.append(float(np.median(n[members])))
            ys.append(summary["mae"])
    return np.array(xs), np.array(ys)


def _calibration(ax, results: dict, name: str, label: str | None = None) -> None:
    entry = results["estimators"][name]
    if not entry["has_interval"]:
        ax.text(0.5, 0.5, "point estimator:\nno interval", ha="center", va="center", transform=ax.transAxes)
    else:
        cal = np.array([[c, np.nan if v is None else v] for c, v in entry["overall"]["calibration"]], dtype=np.float64)
        ax.plot(cal[:, 0], cal[:, 1], "o-", label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal central coverage")
    ax.set_ylabel("empirical coverage")
    ax.set_title("calibration")


def _error_vs_mi(ax, results: dict, name: str) -> None:
    truth, point, _ = _per_set(results, name)
    ok = np.isfinite(point)
    ax.scatter(truth[ok], np.abs(point[ok] - truth[ok]), s=8, alpha=0.5)
    ax.set_xlabel("true MI (nats)")
    ax.set_ylabel("|estimate - truth| (nats)")
    ax.set_title("|error| vs true MI")


def _mae_vs_n(ax, results: dict, name: str, label: str | None = None) -> None:
    xs, ys = _mae_by_n(results, name)
    ax.plot(xs, ys, "o-", label=label)
    if xs.size and xs.min() > 0:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("n (median of group)")
    ax.set_ylabel("MAE (nats)")
    ax.set_title("MAE vs n")


def plot_estimator(results: dict, name: str, path: str | Path) -> Path:
    """Write the three-panel figure of estimator `name` to path (PNG)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    _calibration(axes[0], results, name)
    _error_vs_mi(axes[1], results, name)
    _mae_vs_n(axes[2], results, name)
    fig.suptitle(f"{name}: {results['num_sets']} sets")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_comparison(results: dict, path: str | Path) -> Path:
    """Write calibration (interval estimators), MAE vs n and bias per MI bin of all estimators."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = list(results["estimators"])
    for name in names:
        if results["estimators"][name]["has_interval"]:
            _calibration(axes[0], results, name, label=name)
        _mae_vs_n(axes[1], results, name, label=name)
    if not any(results["estimators"][n]["has_interval"] for n in names):
        _calibration(axes[0], results, names[0])
    bins = list(results["estimators"][names[0]]["groups"]["mi"]) if names else []
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        groups = results["estimators"][name]["groups"]["mi"]
        bias = [np.nan if groups[b]["bias"] is None else groups[b]["bias"] for b in bins]
        axes[2].bar(np.arange(len(bins)) + k * width, bias, width=width, label=name)
    axes[2].axhline(0, color="k", lw=0.8)
    axes[2].set_xticks(np.arange(len(bins)) + 0.4 - width / 2, bins)
    axes[2].set_xlabel("true MI bin (nats)")
    axes[2].set_ylabel("bias (nats)")
    axes[2].set_title("bias per MI bin")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def write_plots(results: dict, out_dir: str | Path) -> list[Path]:
    """Write <name>.png for every estimator and comparison.png into out_dir; return the paths."""
    out = Path(out_dir)
    paths = [plot_estimator(results, name, out / f"{name}.png") for name in results["estimators"]]
    paths.append(plot_comparison(results, out / "comparison.png"))
    return paths
