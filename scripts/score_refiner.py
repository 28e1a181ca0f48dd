"""Score a checkpoint's refiner member by member: the uncalibrated median's MAE (nats) on validation stores.

    python scripts/score_refiner.py --checkpoint data/default.safetensors --checkpoint runs/X/refined.safetensors \
        --store ~/.cache/amortized-mi/stores/val-id --store ~/.cache/amortized-mi/stores/val-ood

For each checkpoint and store it prints, as JSON, the MAE of the head alone, of each refiner member alone and
of the first k members' ensemble for every k. Why: two refiners fitted on different data are compared member
for member (and at equal ensemble size) this way, also while a long fit has saved only some of its members
(``fit_refiner.py --members K --state-dir <its OUT.members>`` writes a checkpoint of the first K). The
head outputs and statistics are computed as ``infer`` would and cached under ``--work`` per checkpoint
(``fit_refiner.refiner_inputs``); no calibration is applied.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import load_checkpoint  # noqa: E402
from model.network import Refiner  # noqa: E402
from scripts.fit_refiner import median_errors, refiner_inputs  # noqa: E402


def members_of(refiner: Refiner, indices: list[int]) -> Refiner:
    """A refiner of `refiner`'s members at `indices` (same input standardization): their mean correction."""
    m = len(refiner.nets)
    if not indices or any(not 0 <= i < m for i in indices):
        raise ValueError(f"member indices must be in 0..{m - 1}, got {indices}")
    first = refiner.nets[0]
    sub = Refiner(refiner.shift.numel(), first[0].out_features, first[-1].out_features, len(indices))
    sub.load_state_dict({"shift": refiner.shift, "scale": refiner.scale,
                         **{f"nets.{j}.{name}": v for j, i in enumerate(indices)
                            for name, v in refiner.nets[i].state_dict().items()}})
    return sub.eval()


def score(checkpoint: Path, stores: list[str], work: Path) -> dict[str, dict]:
    """Per store (by folder name): {"sets", "head", "members" (M,), "first_k" (M,)}, MAE in nats of the
    uncalibrated median; "first_k"[k - 1] is the ensemble of the first k members."""
    model, _ = load_checkpoint(checkpoint)
    if model.refine is None:
        raise ValueError(f"{checkpoint} has no refiner (fit one with scripts/fit_refiner.py)")
    levels = model.config.quantile_levels
    members = len(model.refine.nets)
    out = {}
    for store in stores:
        table = refiner_inputs(checkpoint, store, work, model.config.refine_inputs)

        def mae(indices: list[int] | None) -> float:
            refiner = None if indices is None else members_of(model.refine, indices)
            return float(median_errors(refiner, table, levels).mean())

        out[Path(store).name] = {"sets": int(len(table["t"])), "head": mae(None),
                                 "members": [mae([i]) for i in range(members)],
                                 "first_k": [mae(list(range(k))) for k in range(1, members + 1)]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint with a refiner; repeatable")
    p.add_argument("--store", action="append", required=True, help="validation store; repeatable")
    p.add_argument("--work", default="/tmp/fit_refiner", help="cache of the head outputs and statistics")
    args = p.parse_args(argv)
    try:
        report = {c: score(Path(c), args.store, Path(args.work)) for c in args.checkpoint}
    except ValueError as e:
        print(f"score_refiner: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
