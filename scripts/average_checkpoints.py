"""Average the weights of several checkpoints (stochastic weight averaging, model soups).

    python scripts/average_checkpoints.py --out runs/swa/average.safetensors \
        runs/swa/evals/step-00001000.safetensors runs/swa/evals/step-00001500.safetensors ...

The checkpoints must share the model config and the trained n and dimension limits
(e.g. the ``evals/step-*.safetensors`` that train.py writes along one run, best taken
at a constant learning rate: Izmailov et al., "Averaging Weights Leads to Wider Optima
and Better Generalization", 2018; or the last checkpoints of runs continued from the
same weights on different stores, a "model soup": Wortsman et al., 2022). Their MI
range (``mi_min``, ``mi_max``: the training store's extremes, which differ by sampling
between stores of one MI distribution) may differ; the average gets their union. The
network has no batch statistics to recompute, so the average is ready to use. Its
conformal calibration is dropped (it belonged to other weights): refit it with
``scripts/ship_checkpoint.py --calib-store``. The info
records the sources (``averaged_from``), and the step and lineage of the latest one
(most steps in all, counting the checkpoints it was started from), so the model card's
step count stays that of the run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.checkpoint import lineage, load_checkpoint, save_checkpoint  # noqa: E402


def average_checkpoints(paths: list[str], out: str) -> dict:
    """Write the mean of the weights of `paths` (>= 1 checkpoints, same config and limits) to `out`.

    Limits other than the MI range (nats) must be equal; the MI range written is the
    union of theirs. Returns the metadata info written. Raises ValueError when the
    configs or those limits differ.
    """
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    loaded = [load_checkpoint(p) for p in paths]
    model, meta = loaded[0]
    limits = dict(meta["limits"])
    for p, (m, mt) in zip(paths[1:], loaded[1:]):
        if m.config != model.config:
            raise ValueError(f"{p}: model config differs from {paths[0]}'s; only checkpoints of one architecture "
                             "can be averaged")
        if _without_mi(mt["limits"]) != _without_mi(meta["limits"]):
            raise ValueError(f"{p}: trained limits {mt['limits']} differ from {paths[0]}'s {meta['limits']} "
                             "(only the MI range may differ)")
        for key, pick in (("mi_min", min), ("mi_max", max)):
            if key in mt["limits"] and key in limits:
                limits[key] = pick(limits[key], mt["limits"][key])
    states = [m.state_dict() for m, _ in loaded]
    mean = {k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype) for k, v in states[0].items()}
    model.load_state_dict(mean)
    sources = [{**lineage(p, mt), "step": (mt.get("info") or {}).get("step")} for p, (_, mt) in zip(paths, loaded)]
    # the latest: most training steps in all (its own plus those of what it was started from),
    # so a soup of runs continued from one checkpoint keeps the longest chain's count
    latest = loaded[max(range(len(paths)), key=lambda i: sources[i]["steps_before"])][1]
    info = {k: v for k, v in (latest.get("info") or {}).items() if k in ("step", "config", "init_from")}
    info["averaged_from"] = sources
    save_checkpoint(out, model, limits=limits, calibration=None, info=info)
    return info


def _without_mi(limits: dict) -> dict:
    return {k: v for k, v in limits.items() if k not in ("mi_min", "mi_max")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="checkpoints of one architecture (same model config, n and dims limits)")
    p.add_argument("--out", required=True, help="where to write the averaged checkpoint")
    args = p.parse_args(argv)
    for c in args.checkpoints:
        if not Path(c).is_file():
            p.error(f"no such checkpoint: {c}")
    try:
        info = average_checkpoints(args.checkpoints, args.out)
    except ValueError as e:
        print(f"average_checkpoints: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: mean of {len(args.checkpoints)} checkpoints (latest step {info.get('step')}); "
          "refit its calibration with scripts/ship_checkpoint.py --calib-store")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
