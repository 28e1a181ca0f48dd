"""Write data/MODEL_CARD.md from the shipped checkpoint's metadata and the harness results.

    python scripts/write_model_card.py --checkpoint data/default.safetensors \
        --results results --out data/MODEL_CARD.md

Every number in the card is read from the checkpoint (training steps, data, limits,
validation metrics) or from the eval harness's results.json files under --results
(one sub-folder per test store); nothing is typed in by hand.

    python scripts/write_model_card.py --examples-only --checkpoint A --checkpoint B

prints only the card's "Simple Gaussian examples" table for each checkpoint (calibrated or not),
to compare candidates on the simplest data before one is shipped; nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import lineage, load_checkpoint  # noqa: E402
from metagen.store import MANIFEST_NAME, read_json  # noqa: E402
from scripts.select_checkpoint import BANDS  # noqa: E402

BATCH_OPTIONS = ("n_train_full_fraction", "n_weight_power", "col_stats_dropout", "rotate_fraction")
"""TrainConfig fields that change what a training batch holds; the card lists those that are set."""


def _calibration_shape(cal: dict) -> str:
    """One sentence on the offsets' robustness options (ship_checkpoint's --calib-*), or ''."""
    parts = []
    if cal.get("groups") and cal["groups"] != "none":
        robust, tail = cal.get("central_robust", 1.0), cal.get("tail_robust", 1.0)
        share = lambda lam, where: (f"{lam:g} of the way from pooled to robust in {where}"
                                    if lam != 1.0 else f"fully robust in {where}")
        text = f"robust over {cal['groups']} groups (every group covered at least nominally)"
        if (robust, tail) != (1.0, 1.0):
            text += (f": {share(tail, 'the tails (tau <= 0.1, tau >= 0.9)')}, "
                     f"{share(robust, 'the central levels (0.1 < tau < 0.9)')}")
        parts.append(text)
    nov = cal.get("novelty")
    tails = cal.get("upper_tail", 1.0)
    tails = tails if isinstance(tails, list) else [tails]
    if nov:
        many = len(nov["quantiles"]) > 1
        parts.append(f"fitted apart per novelty bin (edge{'s' * many} at the {', '.join(f'{q:g}' for q in nov['quantiles'])} "
                     f"quantile{'s' * many} of the training sets' novelty, reference from `{Path(nov['store']).name}`; "
                     "`model.novelty`): sets whose statistics lie far from the training sets get their own, wider offsets")
    if any(k != 1.0 for k in tails):
        k = "/".join(f"{t:g}" for t in tails)
        parts.append(f"above the first n edge the levels tau >= 0.9 fitted at 1 - {k} (1 - tau)"
                     + (" per novelty bin" if len(tails) > 1 else "")
                     + ", since out of distribution the misses at large n are mostly underestimates")
    return ("Offsets " + "; ".join(parts) + ".") if parts else ""


def _fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _results_table(results_dir: Path) -> list[str]:
    lines = []
    for sub in sorted(p for p in results_dir.iterdir() if (p / "results.json").is_file()):
        r = json.loads((sub / "results.json").read_text())
        lines += [f"### `{sub.name}` ({r['num_sets']} sets; `{r['config'].get('command', '')}`)", "",
                  "| estimator | MAE | RMSE | bias | cov50 | cov80 | cov90 | width90 | median ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, e in r["estimators"].items():
            o = e["overall"]
            cov, width = o.get("coverage") or {}, o.get("width") or {}
            lines.append("| " + " | ".join([name, _fmt(o.get("mae")), _fmt(o.get("rmse")), _fmt(o.get("bias")),
                                             _fmt(cov.get("50"), 2), _fmt(cov.get("80"), 2),
                                             _fmt(cov.get("90"), 2), _fmt(width.get("90"), 2),
                                             _fmt(1000 * o["median_time_s"], 1) if o.get("median_time_s") else "-"]) + " |")
        lines.append("")
    return lines


GAUSSIAN_EXAMPLES = [(500, 1, 1, 0.0), (500, 1, 1, 0.45), (500, 1, 1, 0.9), (500, 1, 1, 0.999), (1000, 1, 1, 0.9),
                     (100, 2, 2, 0.6), (1000, 5, 5, 0.45), (1000, 5, 5, 0.9), (200, 20, 20, 0.5), (1000, 10, 10, 0.99),
                     (1000, 20, 1, 0.9)]
"""(n, dx, dy, rho) of the model card's simple Gaussian examples (dy <= dx)."""


def _gaussian_examples(checkpoint: str) -> tuple[list[str], list[str]]:
    """Predictions on correlated Gaussian pairs with exact MI, fixed seed: what a user sees on the simplest data.
    x is (n, dx) standard normal and y = rho x[:, :dy] + sqrt(1 - rho^2) noise, so dy independent pairs of
    correlation rho carry MI = -dy/2 log(1 - rho^2) nats and the other dx - dy columns of x are irrelevant.
    Returns the table's rows and a known-limit bullet for each example whose 90% interval misses the exact MI."""
    import warnings

    import numpy as np

    import infer

    rows = ["| n | dx | dy | rho | exact MI | 5% | median | 95% | novelty percentile |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rng = np.random.default_rng(0)
    est = infer.AmortizedMIEstimator(checkpoint, quantiles=(0.05, 0.5, 0.95), on_out_of_range="ignore")
    misses = []
    for n, dx, dy, rho in GAUSSIAN_EXAMPLES:
        x = rng.normal(size=(n, dx))
        y = rho * x[:, :dy] + np.sqrt(1 - rho**2) * rng.normal(size=(n, dy))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = est.estimate_with_info(x, y).additional_information
        lo, med, hi = (info["quantiles"][lv] for lv in (0.05, 0.5, 0.95))
        pct = info["novelty_percentile"]
        exact = max(0.0, -0.5 * dy * np.log(1 - rho**2))
        rows.append(f"| {n} | {dx} | {dy} | {rho} | {exact:.3f} | {lo:.3f} | {med:.3f} | "
                    f"{hi:.3f} | {'-' if np.isnan(pct) else f'{pct:.0f}'} |")
        if not lo - 1e-3 <= exact <= hi:  # 1e-3: MI = 0 sits on the interval's floor
            misses.append(f"- Simple Gaussian example n = {n}, dx = {dx}, dy = {dy}, rho = {rho}: the exact MI {exact:.2f} nats "
                          f"lies {'above' if exact > hi else 'below'} the 90% interval ({lo:.2f} to {hi:.2f}).")
    return rows, misses


def _limits_from_results(results_dir: Path) -> list[str]:
    """Known-limit bullets computed from the harness results (model vs the floor overall and per family
    group, high MI, widths, coverage outside the bands overall and per n); the small "-subset" runs are
    left out."""
    out = []
    subs = sorted(p for p in results_dir.iterdir() if (p / "results.json").is_file()) if results_dir.is_dir() else []
    for sub in (p for p in subs if not p.name.endswith("-subset")):
        est = json.loads((sub / "results.json").read_text())["estimators"]
        model = est.get("model")
        if model is None:
            continue
        o = model["overall"]
        floor = est.get("train_mean", {}).get("overall", {}).get("mae")
        if floor is not None and o["mae"] >= 0.9 * floor:
            out.append(f"- `{sub.name}`: MAE {o['mae']:.2f} nats, hardly better than predicting the training mean "
                       f"({floor:.2f}).")
        high = model["groups"].get("mi", {}).get("(8,35]")
        if high and high.get("bias") is not None and high["bias"] < -1:
            out.append(f"- `{sub.name}`: MI above 8 nats is underestimated by {-high['bias']:.1f} nats on average "
                       f"({high['count']} sets).")
        width = (o.get("width") or {}).get("90")
        if width is not None and width > 4:
            out.append(f"- `{sub.name}`: 90% intervals are wide ({width:.1f} nats on average).")
        out += _coverage_limits(sub.name, model)
        for group, s in model["groups"].get("family_group", {}).items():
            floor_g = est.get("train_mean", {}).get("groups", {}).get("family_group", {}).get(group, {}).get("mae")
            if floor_g is not None and s.get("mae") is not None and s["mae"] >= floor_g:
                out.append(f"- `{sub.name}`: on {group} ({s['count']} sets) the model (MAE {s['mae']:.2f} nats) does "
                           f"not beat predicting the training mean ({floor_g:.2f}).")
    return out or ["- See the test tables above."]


def _coverage_limits(store: str, model: dict) -> list[str]:
    """Bullets for central intervals whose coverage leaves the issue's bands (select_checkpoint.BANDS),
    overall and per n group."""
    out = []
    for c, (lo, hi) in BANDS.items():
        cov = (model["overall"].get("coverage") or {}).get(c)
        if cov is not None and not lo <= cov <= hi:
            out.append(f"- `{store}`: {c}% intervals cover {cov:.3f} ({'too narrow' if cov < lo else 'too wide'}; "
                       f"band {lo:.2f}-{hi:.2f}).")
        off = [(n, s["coverage"][c]) for n, s in model["groups"].get("n", {}).items()
               if (s.get("coverage") or {}).get(c) is not None and not lo <= s["coverage"][c] <= hi]
        if off:
            where = ", ".join(f"{n}: {v:.2f}" for n, v in off)
            out.append(f"- `{store}`: {c}% coverage per n outside {lo:.2f}-{hi:.2f} at n {where}.")
    return out


def _refiner_lines(refiner: dict | None) -> list[str]:
    """The model card's line on a refiner fit (`scripts/fit_refiner.py`'s record in the checkpoint info)."""
    if not refiner:
        return []
    stores = ", ".join(f"`{s}`" for s in refiner.get("stores", []))
    return [f"- refiner: fitted on {refiner.get('sets')} sets of {stores} with the network above frozen, "
            f"{refiner.get('members')} members, up to {refiner.get('steps')} full passes at lr {refiner.get('lr')} "
            f"(each kept at its best step on {refiner.get('holdout_sets')} held-out sets: pinball loss "
            f"{_fmt(refiner.get('holdout_loss_before'), 4)} -> {_fmt(refiner.get('holdout_loss_after'), 4)}, median MAE "
            f"{_fmt(refiner.get('holdout_mae_before'))} -> {_fmt(refiner.get('holdout_mae_after'))} nats, uncalibrated)"]


def _store_config(path: str | None) -> str:
    """Which metagen config drew a training store: the name in its manifest, when the store is here."""
    manifest = read_json(Path(path) / MANIFEST_NAME) if path else None
    config = manifest.get("config") if isinstance(manifest, dict) else None
    name = config.get("name") if isinstance(config, dict) else None
    return f"metagen `configs/metagen/{name}.toml`" if name else f"metagen config: see the store's {MANIFEST_NAME}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append",
                   help="checkpoint to describe (default data/default.safetensors); repeatable with --examples-only")
    p.add_argument("--results", default="results", help="folder with one harness output folder per store")
    p.add_argument("--out", default="data/MODEL_CARD.md")
    p.add_argument("--examples-only", action="store_true",
                   help="print each checkpoint's simple Gaussian examples table and its misses; write nothing")
    args = p.parse_args(argv)
    checkpoints = args.checkpoint or ["data/default.safetensors"]
    if args.examples_only:
        for path in checkpoints:
            rows, misses = _gaussian_examples(path)
            print("\n".join([f"{path}:", "", *rows, "", *misses, ""]))
        return 0
    if len(checkpoints) > 1:
        p.error("the card describes one checkpoint: give --checkpoint once (or use --examples-only)")
    args.checkpoint = checkpoints[0]

    model, meta = load_checkpoint(args.checkpoint)
    info, limits, cfg = meta.get("info") or {}, meta["limits"], meta["config"]
    train_cfg = info.get("config", {})
    batch_options = [k for k in BATCH_OPTIONS if train_cfg.get(k)]  # the ones this run set
    n_params = sum(t.numel() for t in model.parameters())
    size_kb = Path(args.checkpoint).stat().st_size / 1024
    L = [
        "# Model card: the shipped default checkpoint",
        "",
        f"File: `{args.checkpoint}` ({size_kb:.0f} KiB, safetensors, weights fingerprint `{meta['fingerprint'][:16]}...`).",
        "Generated by `python scripts/write_model_card.py`; do not edit by hand.",
        "",
        "## What it is",
        "",
        f"A permutation-invariant set-attention quantile regressor (`model/network.py`) with {n_params:,} parameters: "
        f"{cfg.get('cell_layers')} 2D cell layer(s), {cfg.get('row_layers')} row ISAB layer(s), kNN statistics "
        f"{'on' if cfg.get('use_knn') else 'off'}, canonical-correlation statistics {'on' if cfg.get('use_cca') else 'off'}, "
        f"per-column dependence features {'on' if cfg.get('use_col_stats') else 'off'}, nonlinear-dependence statistics "
        f"{'on' if cfg.get('use_nonlinear_stats') else 'off'}, raw-value Gaussian-MI statistics "
        f"{'on' if cfg.get('use_raw_stats') else 'off'}"
        + (f", and a refiner ({cfg.get('refine_members', 1)} MLPs of width {cfg['refine_hidden']} on the head's own "
           "quantiles and the set statistics, fitted with the network frozen: `scripts/fit_refiner.py`)."
           if cfg.get("refine_hidden") else "."),
        "It returns non-crossing quantiles of log(1 + I(X;Y)) at a fixed grid of levels, mapped to nats,",
        ("after per-level conformal offsets fitted on held-out calibration sets, one row per n range (edges "
         f"{', '.join(str(e) for e in meta['calibration_n_edges'])}: each range fitted on its own sets)."
         if meta.get("calibration_n_edges") else
         "after per-level conformal offsets fitted on a held-out calibration store."),
        *filter(None, [_calibration_shape(info.get("calibration_store") or {})]),
        "",
        "Model config:",
        "",
        "```json",
        json.dumps(cfg, indent=1),
        "```",
        "",
        "## Training",
        "",
        f"- steps: {info.get('step')}" + (
            f" in this run, continued from `{info['init_from']['path']}` (fingerprint "
            f"`{str(info['init_from']['fingerprint'])[:16]}...`, {info['init_from']['steps_before']} earlier steps): "
            f"{lineage(args.checkpoint, meta)['steps_before']} steps in all" if info.get("init_from") else "")
        + f"; batch size {train_cfg.get('batch_size')}; lr {train_cfg.get('lr')} (warmup "
        f"{train_cfg.get('warmup_steps')}, cosine to {train_cfg.get('min_lr')}); torch threads {train_cfg.get('threads')}",
        *([f"- weights: the mean of {len(info['averaged_from'])} checkpoints of this run, steps "
           f"{', '.join(str(a.get('step')) for a in info['averaged_from'])} (`scripts/average_checkpoints.py`)"]
          if info.get("averaged_from") else []),
        *_refiner_lines(info.get("refiner")),
        f"- training store: `{train_cfg.get('train_store')}` ({_store_config(train_cfg.get('train_store'))}; rows subsampled per "
        f"batch to n' in [{train_cfg.get('n_train_min')}, {train_cfg.get('n_train_max')}])",
        *([f"- batch options: " + ", ".join(f"`{k}` {train_cfg[k]}" for k in batch_options)] if batch_options else []),
        f"- validation stores: `{train_cfg.get('val_id_store')}`, `{train_cfg.get('val_ood_store')}`",
        f"- calibration: {json.dumps(info.get('calibration_store', 'half of the in-distribution validation store'))}",
        f"- shipped from: `{info.get('shipped_from', '-')}`",
        "",
        "## Intended range (checked by `infer.py`)",
        "",
        "| limit | value |", "|---|---|",
    ]
    L += [f"| {k} | {_fmt(v, 2)} |" for k, v in limits.items()]
    L += ["", "Outside it `infer.py` applies the documented rules (subsample rows above n_max with a warning;",
          "error below n_min or above the dims unless `on_out_of_range` says otherwise).", ""]
    metrics = info.get("metrics") or {}
    if metrics:
        L += ["## Validation metrics at the selected step (from train.py)", "", "| split | metric | value |", "|---|---|---|"]
        for split, m in metrics.items():
            if isinstance(m, dict):
                for k, v in m.items():
                    L.append(f"| {split} | {k} | {_fmt(v)} |")
        L.append("")
    res = Path(args.results)
    if res.is_dir():
        L += ["## Test results (eval harness; see README for per-group tables)", ""] + _results_table(res)
    L += ["## Simple Gaussian examples", "",
          "Correlated Gaussian pairs with exact MI (generated with a fixed seed when this card was written). The last "
          "column says how far each sample's statistics lie from the training sets' (`model.novelty`; 50: a typical "
          "training set, 100: beyond all of them; `AmortizedMIEstimator.estimate_with_info` and `infer.py` report it):", ""]
    rows, misses = _gaussian_examples(args.checkpoint)
    L += rows + [""]
    L += ["## Known limits", ""] + _limits_from_results(res) + misses + [
          "- Trained on synthetic families only (metagen); real data whose dependence looks like none of them may",
          "  be estimated worse than the test tables suggest.",
          "- Not trained or selected on the BMI benchmark tasks (Czyz et al.), which stay an independent yardstick."]
    Path(args.out).write_text("\n".join(L) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
