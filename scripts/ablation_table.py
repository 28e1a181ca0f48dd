"""Markdown table of training runs' validation metrics against training time.

    python scripts/ablation_table.py runs/ablate-base runs/ablate-nocell runs/ablate-noknn

For every run directory (train.py's metrics.jsonl): at each evaluation, the step, sets
seen, wall minutes since the start, and val_id / val_ood pinball loss and MAE (nats).
Runs made one after the other by scripts/ablate.sh share the machine's conditions, so
their times compare; the model sizes come from each run's config.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def rows(run: Path) -> list[dict]:
    """One dict per evaluation of the run: step, minutes, val metrics."""
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()]
    elapsed = {r["step"]: r["elapsed_s"] for r in lines if r.get("kind") == "train"}
    out = []
    for r in lines:
        if r.get("kind") != "eval":
            continue
        minutes = elapsed.get(r["step"])
        out.append({"step": r["step"], "minutes": None if minutes is None else minutes / 60,
                    "id": r.get("val_id", {}), "ood": r.get("val_ood", {})})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    print("| run | model | step | sets seen | wall min | val-id pinball | val-id MAE | val-ood pinball | val-ood MAE |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            print(f"ablation_table.py: {run} has no metrics.jsonl", file=sys.stderr)
            return 2
        cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
        model = cfg.get("model", {})
        desc = f"cell_layers={model.get('cell_layers', '?')}, use_knn={model.get('use_knn', '?')}"
        train = cfg.get("train", cfg)
        batch = int(train.get("batch_size", 0)) * int(train.get("grad_accum", 1))
        for r in rows(run):
            f = lambda d, k: "-" if k not in d else f"{d[k]:.4f}" if k == "pinball" else f"{d[k]:.2f}"  # noqa: E731
            mins = "-" if r["minutes"] is None else f"{r['minutes']:.0f}"
            print(f"| {run.name} | {desc} | {r['step']} | {r['step'] * batch} | {mins} | {f(r['id'], 'pinball')} | "
                  f"{f(r['id'], 'mae')} | {f(r['ood'], 'pinball')} | {f(r['ood'], 'mae')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
