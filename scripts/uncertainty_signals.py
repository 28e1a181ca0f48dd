"""Which per-set signals tell where the network's intervals fail out of distribution?

    python scripts/uncertainty_signals.py --checkpoint data/default.safetensors \
        --calib-store $S/calib --calib-store $S/calib-large-n --calib-store $S/calib-mid-range \
        --pair $S/val-id,$S/val-ood --pair $S/val-bench-id,$S/val-bench-ood \
        --work /tmp/signals --out results/selection/session32-uncertainty-signals.json

Three signals per set, from the uncalibrated network (``calibration_study.raw_grid``, cached under --work):
``novelty`` (the checkpoint's `model.novelty` score, what the shipped calibration bins on), ``spread``
(standard deviation of the refiner members' medians of log1p(MI): ensemble disagreement) and ``width``
(the raw 90% interval's width in log1p space). For each signal it prints the AUC of telling the
out-of-distribution store of a pair from its in-distribution twin (0.5: no better than chance; below:
the OOD sets look *more* typical), overall and at n <= 300 / n > 300, and within every store the AUC
of telling the sets that the raw 90% interval misses (MI > 0.05 nats, where a miss is not the
interval's floor above 0).

Then it refits the checkpoint's own calibration scheme (its n ranges, novelty bins, upper tails and
robustness, from the checkpoint's metadata, on the --calib-store sets) twice: additive offsets in
log1p space, as shipped, and *width-scaled* offsets (normalized split-conformal: residuals divided
by raw 90% width + --floor, the offsets multiplied back), and prints 50% / 90% coverage and 90% width
per store, overall and per n range. Validation stores only: test stores do not choose a calibration.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infer  # noqa: E402
from eval.metrics import interval_scores, quantile_at  # noqa: E402
from model.novelty import apply_calibration_by_novelty, fit_calibration_by_novelty, novelty_bins, novelty_scores  # noqa: E402
from scripts.calibration_study import raw_grid  # noqa: E402
from scripts.ship_checkpoint import _float_list  # noqa: E402

N_SPLIT = 300  # rows: the shipped calibration's first n edge


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive set scores above a random negative one (ties count half); NaN
    without both kinds. score (N,), positive (N,) bool."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    p, q = int(positive.sum()), int((~positive).sum())
    if p == 0 or q == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[positive].sum() - p * (p + 1) / 2) / (p * q))


def auc_between(negative: np.ndarray, positive: np.ndarray) -> float:
    """`auc` of two groups' scores: the probability that a set of `positive` (P,) scores above one of `negative` (N,)."""
    negative, positive = np.asarray(negative), np.asarray(positive)
    return auc(np.r_[negative, positive], np.r_[np.zeros(negative.size, bool), np.ones(positive.size, bool)])


def member_medians(model, batch) -> torch.Tensor:
    """``infer._forward_grid`` outputs: each refiner member's median of log1p(MI) (B, M), from
    `Refiner.corrections` (the shipped output adds their mean)."""
    if model.refine is None:
        raise ValueError("the checkpoint has no refiner: no members to compare")
    head_in = model.head_input(batch)
    raw = model.head(head_in)  # (B, Q)
    corr = model.refine.corrections(raw, model.refiner_context(head_in, model.config.refine_inputs, batch.shape))  # (M, B, Q)
    mid = int(np.argmin(np.abs(np.asarray(model.config.quantile_levels) - 0.5)))
    return torch.cumsum(F.softplus(raw + corr), dim=-1)[..., mid].T  # (B, M)


def raw_width(levels: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Width of the raw 90% interval (B,) in log1p space, from grids (B, Q)."""
    return quantile_at(levels, grid, 0.95) - quantile_at(levels, grid, 0.05)


def fit_scaled(grid, t, levels, n, scale, bins, num_bins, n_edges, upper_tails, **kwargs) -> np.ndarray:
    """`fit_calibration_by_novelty` on residuals divided by `scale` (N,) > 0: offsets in units of each set's scale."""
    return fit_calibration_by_novelty(grid / scale[:, None], t / scale, levels, n, n_edges, bins, num_bins,
                                      upper_tails, **kwargs)


def apply_scaled(grid, offsets, scale, bins, n, n_edges) -> np.ndarray:
    """Inverse of `fit_scaled`'s normalization: calibrated grids (B, Q) = scale * (grid / scale + offsets)."""
    return apply_calibration_by_novelty(grid / scale[:, None], offsets, bins, n, n_edges) * scale[:, None]


def coverage_table(levels, grid, t, n) -> dict:
    """50% / 90% coverage and mean 90% width (nats) overall and at n <= N_SPLIT / n > N_SPLIT."""
    q, mi = np.expm1(grid), np.expm1(t)
    out = {}
    for name, sel in (("all", np.ones(len(t), bool)), (f"n<={N_SPLIT}", n <= N_SPLIT), (f"n>{N_SPLIT}", n > N_SPLIT)):
        if sel.any():
            c50, _ = interval_scores(levels, q[sel], mi[sel], 0.5)
            c90, w90 = interval_scores(levels, q[sel], mi[sel], 0.9)
            out[name] = {"sets": int(sel.sum()), "cov50": c50, "cov90": c90, "width90": w90}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--calib-store", action="append", required=True, help="calibration store (repeat to pool)")
    p.add_argument("--pair", action="append", required=True, metavar="ID_STORE,OOD_STORE",
                   help="an in-distribution validation store and its out-of-distribution twin (repeat)")
    p.add_argument("--floor", type=_float_list, default=[0.5], help="width-scaled offsets: scale = raw width + floor "
                                                                    "(comma-separated values to compare)")
    p.add_argument("--work", required=True, help="cache folder for the raw predictions")
    p.add_argument("--out", help="write all numbers here as JSON")
    args = p.parse_args(argv)
    pairs = [s.split(",") for s in args.pair]
    if any(len(pr) != 2 for pr in pairs):
        p.error("--pair takes two stores separated by a comma")
    ck, work = Path(args.checkpoint), Path(args.work)
    loaded = infer.load(ck)
    model, meta, novelty = loaded.model, loaded.meta, loaded.novelty
    if novelty is None or model.refine is None:
        p.error("needs a checkpoint with a novelty-binned calibration and a refiner (the shipped kind)")
    levels = np.asarray(model.config.quantile_levels, dtype=np.float64)
    calib_info = (meta.get("info") or {}).get("calibration_store") or {}
    scheme = {"n_edges": list(meta.get("calibration_n_edges") or []), "upper_tails": calib_info.get("upper_tail", [1.0]),
              "central_robust": calib_info.get("central_robust", 1.0), "tail_robust": calib_info.get("tail_robust", 1.0)}

    def load(store: str) -> dict:
        v = raw_grid(ck, store, work)
        v["spread"] = raw_grid(ck, store, work, outputs=member_medians, tag="members-")["grid"].std(axis=1)
        v["novelty"] = novelty_scores(novelty, v["stats"])
        v["width"] = raw_width(levels, v["grid"])
        v["bin"] = novelty.bin_of(v["novelty"])
        return v

    signals = ("novelty", "spread", "width")
    stores = {Path(s).name: load(s) for pr in pairs for s in pr}
    report: dict = {"checkpoint": str(ck), "scheme": scheme, "ood_vs_id": {}, "miss": {}, "calibration": {}}
    print("AUC, out-of-distribution store vs its in-distribution twin (all n / n <= 300 / n > 300)")
    for id_s, ood_s in pairs:
        a, b = stores[Path(id_s).name], stores[Path(ood_s).name]
        key = f"{Path(id_s).name} vs {Path(ood_s).name}"
        report["ood_vs_id"][key] = {}
        for sig in signals:
            row = {}
            for name, fa, fb in (("all", a["n"] > 0, b["n"] > 0), (f"n<={N_SPLIT}", a["n"] <= N_SPLIT, b["n"] <= N_SPLIT),
                                 (f"n>{N_SPLIT}", a["n"] > N_SPLIT, b["n"] > N_SPLIT)):
                row[name] = auc_between(a[sig][fa], b[sig][fb])
            report["ood_vs_id"][key][sig] = row
            print(f"  {key:32s} {sig:8s} " + " / ".join(f"{v:.3f}" for v in row.values()))
    print("AUC, sets the raw 90% interval misses vs the rest, within each store (MI > 0.05 nats; n <= 300 / n > 300)")
    for name, v in stores.items():
        lo, hi = quantile_at(levels, v["grid"], 0.05), quantile_at(levels, v["grid"], 0.95)
        miss = (v["t"] < lo) | (v["t"] > hi)
        pos = np.expm1(v["t"]) > 0.05
        report["miss"][name] = {}
        for sig in signals:
            row = {part: auc(v[sig][pos & sel], miss[pos & sel])
                   for part, sel in ((f"n<={N_SPLIT}", v["n"] <= N_SPLIT), (f"n>{N_SPLIT}", v["n"] > N_SPLIT))}
            report["miss"][name][sig] = row
            print(f"  {name:16s} {sig:8s} " + " / ".join(f"{x:.3f}" for x in row.values()))
    cal = [raw_grid(ck, s, work) for s in args.calib_store]
    cal = {k: np.concatenate([c[k] for c in cal]) for k in ("grid", "t", "n", "dims", "stats")}
    cal_bins = novelty_bins(novelty, cal["stats"])
    kw = {"groups": cal["dims"], "central_robust": scheme["central_robust"], "tail_robust": scheme["tail_robust"]}
    print("calibrated coverage 50% / 90%, 90% width (nats): all | n <= 300 | n > 300")
    for floor in [None, *args.floor]:
        label = "additive" if floor is None else f"width-scaled, floor {floor:g}"
        scale_of = (lambda g: np.ones(len(g))) if floor is None else (lambda g, f=floor: raw_width(levels, g) + f)
        offsets = fit_scaled(cal["grid"], cal["t"], levels, cal["n"], scale_of(cal["grid"]), cal_bins, novelty.bins,
                             scheme["n_edges"], scheme["upper_tails"], **kw)
        report["calibration"][label] = {}
        for name, v in stores.items():
            g = apply_scaled(v["grid"], offsets, scale_of(v["grid"]), v["bin"], v["n"], scheme["n_edges"])
            table = coverage_table(levels, g, v["t"], v["n"])
            report["calibration"][label][name] = table
            print(f"  {label:24s} {name:16s} " + " | ".join(f"{c['cov50']:.3f} / {c['cov90']:.3f}, {c['width90']:.2f}"
                                                           for c in table.values()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
