"""Choose among candidate checkpoints on the validation stores, by the shipping rule.

    python scripts/select_checkpoint.py --calib-store $S/calib --val $S/val-id --val $S/val-ood \
        --val $S/val-bench-id --val $S/val-bench-ood --work /tmp/select --jobs 2 data/default.safetensors runs/swa/average.safetensors runs/deep/last.safetensors

Each candidate is prepared exactly as it would be shipped (``scripts/ship_checkpoint.py``:
conformal offsets refit on the calibration store, extra arguments after ``--ship-args``)
and scored by the evaluation harness (``python -m eval.harness --estimators model``) on
every validation store. The rule: interval coverage first, then accuracy, i.e. the
candidate whose 50% and 90% coverage lie closest to the issue's bands (0.45-0.55 and
0.87-0.93; distance = summed amount outside the bands over the stores, each beyond one
binomial standard error sqrt(p (1 - p) / sets) of that store's coverage estimate, so a
miss smaller than the estimate's own noise counts as inside) wins, ties (e.g. all
inside) broken by the mean MAE over the stores. Prints a markdown table and
writes it with the numbers to ``<work>/selection.json``. Never use test or benchmark
stores here: they report the chosen checkpoint and must not choose it.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = {"50": (0.45, 0.55), "90": (0.87, 0.93)}


def outside_bands(coverage: dict[str, float], sets: int | None = None) -> float:
    """How far the 50% and 90% coverages lie outside their bands (0 when both are inside).

    With `sets` (the number of sets they were measured on), each miss is first reduced by
    one binomial standard error of the coverage, sqrt(p (1 - p) / sets) at the nominal p.
    """
    def noise(k: str) -> float:
        return 0.0 if not sets else (int(k) / 100 * (1 - int(k) / 100) / sets) ** 0.5
    return sum(max(0.0, lo - coverage[k] - noise(k), coverage[k] - hi - noise(k)) for k, (lo, hi) in BANDS.items())


def band_distance(per_store: dict[str, dict]) -> float:
    """One candidate's `outside_bands` summed over its stores (per_store[store] as in `rank`)."""
    return sum(outside_bands(s["coverage"], s.get("count")) for s in per_store.values())


def rank(scores: dict[str, dict[str, dict]]) -> list[str]:
    """Candidates ordered by the rule: summed distance outside the bands, then mean MAE.

    scores[candidate][store] = the harness's overall summary (``mae``, ``coverage``: {"50", "90"},
    optionally ``count``: the number of sets, for the noise allowance of `outside_bands`).
    """
    def key(name: str) -> tuple[float, float]:
        per = scores[name].values()
        return round(band_distance(scores[name]), 6), sum(s["mae"] for s in per) / len(per)
    return sorted(scores, key=key)


def score_candidate(i: int, cand: str, calib_store: str, val: list[str], work: str, ship_args: str,
                    threads: int) -> dict[str, dict] | int:
    """Ship candidate `i` into `work` and score it on every validation store.

    Returns {store name: the harness's overall summary (mae, coverage, width, count)},
    or the failing step's exit code.
    """
    import ship_checkpoint  # noqa: PLC0415 (scripts/ is on sys.path when run as a script)

    from eval import harness  # noqa: PLC0415

    prepared = Path(work) / f"candidate-{i}.safetensors"
    rc = ship_checkpoint.main(["--src", cand, "--calib-store", calib_store, "--out", str(prepared),
                               *shlex.split(ship_args)])
    if rc:
        return rc
    scores: dict[str, dict] = {}
    for store in val:
        out = Path(work) / f"candidate-{i}" / Path(store).name
        rc = harness.main(["--store", store, "--out", str(out), "--checkpoint", str(prepared),
                           "--estimators", "model", "--threads", str(threads), "--no-progress", "--no-plots"])
        if rc:
            return rc
        summary = json.loads((out / "results.json").read_text())["estimators"]["model"]["overall"]
        scores[Path(store).name] = {k: summary[k] for k in ("mae", "coverage", "width", "count")}
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("candidates", nargs="+", help="checkpoints (train.py's or shipped ones)")
    p.add_argument("--calib-store", required=True, help="store the conformal offsets are refit on")
    p.add_argument("--val", action="append", required=True, help="validation store (repeat: in- and out-of-distribution)")
    p.add_argument("--work", required=True, help="folder for the prepared checkpoints and harness outputs")
    p.add_argument("--ship-args", default="", help="extra arguments for ship_checkpoint.py, one quoted string")
    p.add_argument("--threads", type=int, default=1, help="torch threads per candidate")
    p.add_argument("--jobs", type=int, default=1, help="candidates scored at once, one process each")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads must be >= 1")
    if len(set(args.candidates)) != len(args.candidates):
        p.error("a candidate is named twice")
    if len({Path(v).name for v in args.val}) != len(args.val):
        p.error("validation stores need distinct folder names (results are filed under them)")
    for path in [*args.candidates, args.calib_store, *args.val]:
        if not Path(path).exists():
            p.error(f"no such file or store: {path}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    score = partial(score_candidate, calib_store=args.calib_store, val=args.val, work=str(work),
                    ship_args=args.ship_args, threads=args.threads)
    indices = range(len(args.candidates))
    if args.jobs == 1:  # lazily: stops at the first failure
        results = map(score, indices, args.candidates)
    else:  # one process per candidate at a time (each runs torch with --threads threads)
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(score, indices, args.candidates))
    scores: dict[str, dict[str, dict]] = {}
    for cand, result in zip(args.candidates, results):
        if isinstance(result, int):
            return result
        scores[cand] = result
    order = rank(scores)
    stores = [Path(s).name for s in args.val]
    head = "| candidate | " + " | ".join(f"{s} MAE | {s} cov50 | {s} cov90 | {s} width90" for s in stores) + \
           " | outside bands (beyond noise) | chosen |"
    lines = [head, "|---" * (2 + 4 * len(stores) + 1) + "|"]
    for cand in args.candidates:
        cells = []
        for s in stores:
            sc = scores[cand][s]
            cells += [f"{sc['mae']:.3f}", f"{sc['coverage']['50']:.3f}", f"{sc['coverage']['90']:.3f}",
                      f"{sc['width']['90']:.2f}"]
        lines.append(f"| {cand} | " + " | ".join(cells) + f" | {band_distance(scores[cand]):.3f} | {'yes' if cand == order[0] else ''} |")
    table = "\n".join(lines)
    print(table)
    (work / "selection.json").write_text(json.dumps({"order": order, "scores": scores, "table": table}, indent=1))
    print(f"chosen: {order[0]} (prepared as {work / ('candidate-%d.safetensors' % args.candidates.index(order[0]))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
