"""Latency of one inference call on CPU, 1 thread: `infer.predict_mi_quantiles` (single
set) and `infer.predict_mi_quantiles_batch` (time per set), everything included
(validation, preprocessing, forward, quantile interpolation).

Sizes: n = 100, 1000, 5000 with dx = dy = 5, and n = 1000 with dx = dy = 25 (float64
normal data, y = 0.5 x + noise). Prints the median over `--repeats` calls, as wall time
and as this thread's CPU time (the fairer number on a busy machine: it excludes time spent
waiting for a core).

    .venv/bin/python scripts/bench_infer.py                        # this tree
    .venv/bin/python scripts/bench_infer.py --baseline HEAD        # + the committed code, interleaved
    .venv/bin/python scripts/bench_infer.py --breakdown            # where one call's time goes (shipped checkpoint)

With --baseline (a git revision, or a directory holding model/ and infer.py), the same
measurements run alternately on the baseline and on this tree (fresh processes, several
rounds), and the table shows both and their ratio, all measured in the same run. Without
--checkpoint a randomly initialised default-config checkpoint is written to a temporary
directory (speed does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(100, 5, 5), (1000, 5, 5), (5000, 5, 5), (1000, 25, 25)]
CODE_FILES = ["infer.py", "model/__init__.py", "model/blocks.py", "model/checkpoint.py", "model/network.py",
              "model/novelty.py", "model/preprocess.py", "model/quantiles.py", "model/tracing.py", "model/validation.py"]


def _single_thread_env() -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def _worker(root: str, checkpoint: str, repeats: int, batch: int) -> None:
    """Runs in a fresh process with `root` first on sys.path; prints one JSON line."""
    sys.path.insert(0, root)
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import infer

    assert Path(infer.__file__).resolve().parent == Path(root).resolve(), infer.__file__
    rng = np.random.default_rng(0)
    out = {}
    for n, dx, dy in SIZES:
        x = rng.normal(size=(n, dx))
        y = 0.5 * x[:, : min(dx, dy)].repeat(-(-dy // min(dx, dy)), axis=1)[:, :dy] + rng.normal(size=(n, dy))
        pairs = [(x, y)] * batch

        def single():
            return infer.predict_mi_quantiles(x, y, checkpoint=checkpoint, max_rows=None)

        def many():
            return infer.predict_mi_quantiles_batch(pairs, checkpoint=checkpoint, max_rows=None)

        res = {}
        for name, fn, reps, per in (("single", single, repeats, 1), ("batch", many, max(5, repeats // 3), batch)):
            for _ in range(3):
                fn()
            wall, cpu = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.thread_time()
                fn()
                c1, t1 = time.thread_time(), time.perf_counter()
                wall.append((t1 - t0) * 1e3 / per)
                cpu.append((c1 - c0) * 1e3 / per)
            res[name] = {"wall": wall, "cpu": cpu}
        res["q"] = single().tolist()
        out[f"{n},{dx},{dy}"] = res
    print(json.dumps(out))


def _baseline_tree(spec: str, tmp: Path) -> Path:
    """A directory with the baseline's model/ and infer.py: spec is a directory or a git revision."""
    if Path(spec).is_dir():
        return Path(spec).resolve()
    dest = tmp / "baseline"
    (dest / "model").mkdir(parents=True)
    for f in CODE_FILES:
        r = subprocess.run(["git", "-C", str(ROOT), "show", f"{spec}:{f}"], capture_output=True)
        if r.returncode == 0:  # files the revision does not have yet are left out
            (dest / f).write_bytes(r.stdout)
    return dest


def breakdown(checkpoint: str | None, repeats: int) -> None:
    """Median milliseconds of the stages of one call at n = 1,000, 5 + 5 dims, this tree, 1 thread:
    each stage timed alone (warm caches), then the whole call, whose excess over the sum of the
    stages is what they cost together (caches, allocation)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import infer
    from model import preprocess as P
    from model.novelty import novelty_scores

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5))
    y = 0.5 * x + rng.normal(size=(1000, 5))
    loaded = infer.load(checkpoint)
    cfg = loaded.model.config
    z = np.column_stack([P.normal_scores(x), P.normal_scores(y)])
    ref = np.arange(1000) if cfg.knn_rows >= 1000 else P.canonical_subset(z, 5, cfg.knn_rows, seed=P.SUBSET_SEED + 1)
    batch = P.prepare_batch([(x, y)], cfg)
    forward = loaded.single or loaded.model

    def run_forward():
        with torch.inference_mode():
            return forward(batch)

    stages = {
        "copula scores": lambda: P.normal_scores(np.column_stack([x, y])),
        "kNN statistics": lambda: P.knn_statistics(z, 5, ref, cfg.knn_k, quantize=cfg.knn_quantize),
        "canonical correlations": lambda: P.canonical_correlations(z[:, :5], z[:, 5:]),
        "column statistics": (lambda: P.column_statistics(z, 5)) if cfg.use_col_stats else None,
        "raw statistics": (lambda: P.raw_statistics(x, y, cfg.cca_top)) if cfg.use_raw_stats else None,
        "network forward": run_forward,
        "novelty score": (lambda: novelty_scores(loaded.novelty, batch.stats.double().numpy()))
        if loaded.novelty is not None else None,
    }
    totals = {"prepare_batch (all statistics)": lambda: P.prepare_batch([(x, y)], cfg),
              "predict_mi_quantiles (whole call)": lambda: infer.predict_mi_quantiles(x, y, checkpoint=checkpoint)}

    def median_ms(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    print(f"stages of one call, n = 1000, dx = dy = 5, 1 thread, median of {repeats} (ms)")
    parts = 0.0
    for name, fn in stages.items():
        if fn is not None:
            ms = median_ms(fn)
            parts += ms
            print(f"  {name:<36} {ms:7.2f}")
    print(f"  {'sum of the stages above':<36} {parts:7.2f}")
    for name, fn in totals.items():
        print(f"  {name:<36} {median_ms(fn):7.2f}")


def _make_checkpoint(path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from model.checkpoint import save_checkpoint
    from model.network import MIEstimator, ModelConfig

    torch.manual_seed(0)
    limits = {"n_min": 10, "n_max": 100000, "dx_max": 64, "dy_max": 64, "mi_max": 35.0}
    save_checkpoint(path, MIEstimator(ModelConfig()), limits=limits, info={"note": "random init, benchmark only"})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint to time (default: random init, default config)")
    p.add_argument("--baseline", default=None, help="git revision or directory to compare against (interleaved)")
    p.add_argument("--repeats", type=int, default=30, help="timed single calls per size and round (>= 30)")
    p.add_argument("--batch", type=int, default=8, help="sets per batch call")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree with --baseline")
    p.add_argument("--breakdown", action="store_true",
                   help="time the stages of one call (n = 1000, 5 + 5) in this tree instead, with --checkpoint or the shipped one")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.breakdown:
        breakdown(args.checkpoint, max(args.repeats, 30))
        return 0
    if args.worker:
        _worker(args.worker, args.checkpoint, args.repeats, args.batch)
        return 0
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.checkpoint is None:
            ckpt = str(tmp / "bench.safetensors")
            _make_checkpoint(Path(ckpt))
        else:
            ckpt = str(Path(args.checkpoint).resolve())  # the workers run in tmp
            if not Path(ckpt).is_file():
                p.error(f"--checkpoint {args.checkpoint}: no such file")
        trees = {"this": ROOT}
        if args.baseline:
            trees = {"base": _baseline_tree(args.baseline, tmp), "this": ROOT}
        samples: dict = {t: {} for t in trees}
        quantiles: dict = {t: {} for t in trees}
        for _ in range(args.rounds if args.baseline else 1):
            for tree, root in trees.items():
                cmd = [sys.executable, __file__, "--worker", str(root), "--checkpoint", ckpt,
                       "--repeats", str(args.repeats), "--batch", str(args.batch)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                env=_single_thread_env(), cwd=tmp).stdout.strip().splitlines()[-1])
                for size, r in res.items():
                    quantiles[tree][size] = r.pop("q")
                    for form, d in r.items():
                        for clock, vals in d.items():
                            samples[tree].setdefault((size, form, clock), []).extend(vals)
    med = {t: {k: statistics.median(v) for k, v in s.items()} for t, s in samples.items()}
    print(f"median latency in ms, 1 thread ({args.repeats} single calls per size and round; batch of {args.batch}: "
          "time per set); wall = elapsed, cpu = this thread's CPU time")
    head = f"{'n':>5} {'dx':>3} {'dy':>3}  {'form':<6} {'clock':<5}"
    if args.baseline:
        print(head + f" {'before':>8} {'after':>8} {'ratio':>6}")
    else:
        print(head + f" {'ms':>8}")
    for n, dx, dy in SIZES:
        size = f"{n},{dx},{dy}"
        for form in ("single", "batch"):
            for clock in ("wall", "cpu"):
                key = (size, form, clock)
                line = f"{n:>5} {dx:>3} {dy:>3}  {form:<6} {clock:<5}"
                if args.baseline:
                    b, a = med["base"][key], med["this"][key]
                    line += f" {b:8.2f} {a:8.2f} {b / a:5.2f}x"
                else:
                    line += f" {med['this'][key]:8.2f}"
                print(line)
    if args.baseline:
        diffs = [max(abs(u - v) for u, v in zip(quantiles["base"][s], quantiles["this"][s])) for s in quantiles["this"]]
        print(f"max |difference| of the returned quantiles, before vs after: {max(diffs):.2e} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
