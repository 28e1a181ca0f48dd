"""Why the calibrated intervals of the same tasks do or do not narrow with n: novelty bins on paired tasks.

    python scripts/paired_novelty.py --checkpoint data/default.safetensors \
        --tasks configs/metagen/bench_id.toml,34 --tasks configs/metagen/bench_ood.toml,35 \
        --num-tasks 300 --n 100,500,1000 --out results/selection/session33-paired-novelty.json

The tasks are `eval.paired_n`'s (the first --num-tasks of each config and seed that fit the smallest n,
each sampled at every n with its own seed), so with the README's seeds these are the sets of the
paired tables. For a checkpoint whose calibration depends on the novelty bin (`model.novelty`) it
prints, per config and n: the share of sets in the novel bin(s), the mean uncalibrated and calibrated
90% width (nats) and the calibrated 90% coverage; then, between consecutive n, the mean width change
of the same tasks split by the bins they fall in at the two n (a task that turns novel gets the novel
bin's wider offsets even when the network's own interval narrows); and, with two or more configs,
the AUC of telling each later config's sets from the first's by the novelty score at each n (0.5: no
better than chance; below: the later config's sets look *more* typical). Diagnosis only: nothing here
fits or selects a calibration.
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
from eval.metrics import quantile_at  # noqa: E402
from eval.paired_n import draw_paired_tasks, parse_sizes, sets_at  # noqa: E402
from scripts.uncertainty_signals import auc_between  # noqa: E402


def predict(loaded, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """The checkpoint on the sets, as `infer.predict_mi_quantiles_batch` runs it: raw and calibrated 5% / 95%
    quantiles (B,) in nats, the novelty score and bin (B,)."""
    sets = [infer._check_range(*infer.as_sample_pair(x, y, n_min=infer.ABSOLUTE_MIN_ROWS), loaded.limits, "error", "auto")
            for x, y in pairs]
    grid, score = infer._grid_and_novelty(loaded, sets)  # (B, Q) log1p(MI), uncalibrated; (B,)
    bins = loaded.novelty.bin_of(score)
    cal = infer._grid_to_levels(loaded, grid, np.array([0.05, 0.95]), np.array([x.shape[0] for x, _ in sets]), bins)
    raw = np.expm1(np.clip(np.stack([quantile_at(loaded.levels, grid, q) for q in (0.05, 0.95)], axis=1), 0.0, None))
    return {"raw_lo": raw[:, 0], "raw_hi": raw[:, 1], "lo": cal[:, 0], "hi": cal[:, 1], "score": score, "bin": bins}


def per_n_summary(p: dict[str, np.ndarray], mi: np.ndarray) -> dict:
    """Share of sets in a novel bin (>= 1), mean raw and calibrated 90% width (nats), calibrated 90% coverage."""
    return {"sets": int(mi.size), "novel_share": float(np.mean(p["bin"] >= 1)),
            "raw_width90": float(np.mean(p["raw_hi"] - p["raw_lo"])), "width90": float(np.mean(p["hi"] - p["lo"])),
            "cov90": float(np.mean((mi >= p["lo"]) & (mi <= p["hi"])))}


def width_changes(a: dict[str, np.ndarray], b: dict[str, np.ndarray], num_bins: int) -> list[dict]:
    """The same tasks at two n (a, then b), grouped by (bin at a, bin at b): tasks, mean change of the raw and of
    the calibrated 90% width (nats), for every pair of bins that holds a task."""
    raw = (b["raw_hi"] - b["raw_lo"]) - (a["raw_hi"] - a["raw_lo"])  # (B,) per task
    cal = (b["hi"] - b["lo"]) - (a["hi"] - a["lo"])
    out = []
    for ba in range(num_bins):
        for bb in range(num_bins):
            sel = (a["bin"] == ba) & (b["bin"] == bb)
            if sel.any():
                out.append({"bins": [ba, bb], "tasks": int(sel.sum()), "raw_change": float(raw[sel].mean()),
                            "change": float(cal[sel].mean())})
    return out


def _task_spec(spec: str) -> tuple[str, int]:
    path, sep, seed = spec.rpartition(",")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--tasks takes CONFIG,SEED, got {spec!r}")
    try:
        return path, int(seed)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tasks: the seed must be an integer, got {seed!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--tasks", action="append", required=True, type=_task_spec, metavar="CONFIG,SEED",
                   help="metagen config and task seed (repeat; AUCs compare each later one with the first)")
    p.add_argument("--num-tasks", type=int, default=300)
    p.add_argument("--n", default="100,500,1000", help="comma-separated sample sizes, as eval.paired_n's")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="write all numbers here as JSON")
    args = p.parse_args(argv)
    from metagen.config import ConfigError, load_config  # noqa: PLC0415

    try:
        sizes = parse_sizes(args.n)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    loaded = infer.load(args.checkpoint)
    if loaded.novelty is None:
        p.error("needs a checkpoint whose calibration depends on novelty (model.novelty), as the shipped one")
    report: dict = {"checkpoint": args.checkpoint, "n": sizes, "novelty_edges": list(loaded.novelty.edges),
                    "configs": {}, "auc_vs_first": {}}
    preds = {}
    for path, seed in args.tasks:
        try:
            tasks, _ = draw_paired_tasks(load_config(path), seed, args.num_tasks, min(sizes))
        except (ConfigError, OSError, ValueError) as e:
            p.error(f"{path}: {e}")
        key = f"{Path(path).stem},{seed}"
        mi = np.array([t.mi for t in tasks])
        preds[key] = {}
        for n in sizes:
            src = sets_at(tasks, n)
            preds[key][n] = predict(loaded, [src.get(i) for i in range(len(src))])
        rows = {str(n): per_n_summary(preds[key][n], mi) for n in sizes}
        steps = {f"{a}->{b}": width_changes(preds[key][a], preds[key][b], loaded.novelty.bins)
                 for a, b in zip(sizes, sizes[1:])}
        report["configs"][key] = {"per_n": rows, "width_change_by_bins": steps}
        print(f"{key}: n, novel share, raw / calibrated 90% width (nats), calibrated 90% coverage")
        for n, r in rows.items():
            print(f"  {n:>6s}  {r['novel_share']:.3f}  {r['raw_width90']:.2f} / {r['width90']:.2f}  {r['cov90']:.3f}")
        for step, groups in steps.items():
            print(f"  {step}: width change by (bin, bin): " + "; ".join(
                f"{g['bins'][0]}->{g['bins'][1]} {g['tasks']} tasks raw {g['raw_change']:+.2f} calibrated {g['change']:+.2f}"
                for g in groups))
    first, *rest = preds
    for key in rest:
        row = {str(n): auc_between(preds[first][n]["score"], preds[key][n]["score"]) for n in sizes}
        report["auc_vs_first"][f"{key} vs {first}"] = row
        print(f"novelty AUC, {key} vs {first}, per n: " + " / ".join(f"{v:.3f}" for v in row.values()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
