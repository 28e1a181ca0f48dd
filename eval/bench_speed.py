"""Speed benchmark: seconds per MI estimate at n = 1000, dx = dy = 5 (defaults).

    python -m eval.bench_speed [--n 1000] [--dim 5] [--repeats 7] [--batch 16]
                               [--threads 1] [--checkpoint PATH] [--skip-infonce] [--rounds 3]
                               [--max-rows M]

Times, in the same run on the same correlated-Gaussian sample: the model (one
`predict_mi_quantiles` call, and the batch form `predict_mi_quantiles_batch` on --batch
sets, reported per set), KSG (k-d tree, k = 3), the Gaussian-copula baseline and InfoNCE
at its default fixed budget. Each time is the median over --repeats calls (InfoNCE:
--infonce-repeats) after one warm-up call; ratios are baseline time / model single-call
time. If infer.py or its checkpoint cannot be used, says so and still times the baselines.
--max-rows M times the model with `max_rows=M` (rows subsampled to M: faster at large n).

On a shared machine a slow baseline's time drifts during the run (InfoNCE took 5-13 s
per estimate on the same data on the 2-core development box), and so does the model's:
the table's ratios divide medians taken a minute apart. --rounds R (> 1) adds R rounds
that alternate the model's single call (median of --repeats) with one InfoNCE estimate,
then R rounds that alternate it with KSG (median of --repeats each), so each ratio
compares times taken under the same conditions; the report lists every round's ratio,
their median and their minimum.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .baselines import GaussianCopulaEstimator, InfoNCEEstimator, KSGEstimator
from .estimators import ModelEstimator

LEVELS = (0.05, 0.5, 0.95)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall time in seconds of `repeats` calls of fn, after one untimed warm-up call (unless warmup=False)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def correlated_gaussian(n: int, dim: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y (n, dim) float32 with corr(x_j, y_j) = rho; I = -dim/2 log(1 - rho^2) nats."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((n, dim))
    return x.astype(np.float32), y.astype(np.float32)


def run_benchmark(n: int = 1000, dim: int = 5, repeats: int = 7, batch: int = 16, threads: int = 1,
                  checkpoint: str | None = None, infonce: bool = True, infonce_repeats: int = 3,
                  max_rows: int | str = "auto") -> dict[str, float | str]:
    """Time every estimator; returns {label: seconds per estimate} plus 'model_error' if the model failed."""
    torch.set_num_threads(threads)
    x, y = correlated_gaussian(n, dim, 0.6, seed=0)
    times: dict[str, float | str] = {}
    model = ModelEstimator(checkpoint=checkpoint, max_rows=max_rows)
    try:
        times["model (single call)"] = median_seconds(lambda: model.estimate_quantiles(x, y, LEVELS), repeats)
        pairs = [correlated_gaussian(n, dim, 0.6, seed=s) for s in range(batch)]
        times[f"model (batch of {batch}, per set)"] = median_seconds(lambda: model.estimate_quantiles_batch(pairs, LEVELS), repeats) / batch
    except Exception as exc:  # the baselines are still worth timing
        times["model_error"] = f"{type(exc).__name__}: {exc}"
    times["ksg (k-d tree, k=3)"] = median_seconds(lambda: KSGEstimator().estimate(x, y), repeats)
    times["gaussian copula"] = median_seconds(lambda: GaussianCopulaEstimator().estimate(x, y), repeats)
    if infonce:
        est = InfoNCEEstimator()
        times[f"infonce ({est.steps} steps, batch {est.batch_size})"] = median_seconds(lambda: est.estimate(x, y), infonce_repeats)
    return times


def alternating_ratios(fast: Callable[[], object], slow: Callable[[], object], rounds: int,
                       repeats: int, slow_repeats: int = 1) -> list[tuple[float, float]]:
    """[(fast seconds, slow seconds)] for `rounds` rounds: median of `repeats` fast calls, then the median
    of `slow_repeats` slow calls.

    Both callables get one untimed warm-up call first.
    """
    if rounds < 1 or repeats < 1 or slow_repeats < 1:
        raise ValueError(f"rounds, repeats and slow_repeats must be >= 1, got {rounds}, {repeats}, {slow_repeats}")
    fast()
    slow()
    out = []
    for _ in range(rounds):
        fast_s = median_seconds(fast, repeats, warmup=False)
        out.append((fast_s, median_seconds(slow, slow_repeats, warmup=False)))
    return out


def format_rounds(rounds: list[tuple[float, float]], label: str) -> str:
    """One line per round (model ms, baseline ms, ratio), then the median and the minimum ratio."""
    ratios = [o / m for m, o in rounds]
    lines = [f"alternating rounds, model single call vs {label}:"]
    for i, (m, o) in enumerate(rounds):
        lines.append(f"  round {i + 1}: model {m * 1e3:.2f} ms, baseline {o * 1e3:.2f} ms, ratio {o / m:.3g}")
    lines.append(f"  median ratio {float(np.median(ratios)):.3g}")
    lines.append(f"  minimum ratio {min(ratios):.3g}")
    return "\n".join(lines)


def format_report(times: dict[str, float | str], n: int, dim: int, threads: int) -> str:
    """A plain-text table: estimator, ms per estimate, ratio to the model's single call."""
    lines = [f"time per estimate, n = {n}, dx = dy = {dim}, torch threads = {torch.get_num_threads()} (requested {threads}), "
             f"torch {torch.__version__}"]
    ref = times.get("model (single call)")
    if "model_error" in times:
        lines.append(f"model not available: {times['model_error']} (timing the baselines only)")
    lines.append(f"{'estimator':40s} {'ms/estimate':>12s} {'x model':>9s}")
    for label, t in times.items():
        if label == "model_error":
            continue
        ratio = f"{t / ref:9.3g}" if isinstance(ref, float) and ref > 0 else f"{'-':>9s}"
        lines.append(f"{label:40s} {t * 1e3:12.2f} {ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--dim", type=int, default=5, help="dx = dy")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--infonce-repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="sets per batched model call")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--skip-infonce", action="store_true")
    p.add_argument("--max-rows", type=int, default=None, help="time the model with max_rows=M (default: the checkpoint's n_max)")
    p.add_argument("--rounds", type=int, default=1,
                   help="> 1: also alternate the model with InfoNCE, then with KSG, this many rounds each (ratios under the "
                        "same conditions)")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    max_rows = "auto" if a.max_rows is None else a.max_rows
    times = run_benchmark(a.n, a.dim, a.repeats, a.batch, a.threads, a.checkpoint, not a.skip_infonce, a.infonce_repeats,
                          max_rows)
    print(format_report(times, a.n, a.dim, a.threads))
    if a.rounds > 1 and "model_error" not in times:
        x, y = correlated_gaussian(a.n, a.dim, 0.6, seed=0)
        model = ModelEstimator(checkpoint=a.checkpoint, max_rows=max_rows)
        single = lambda: model.estimate_quantiles(x, y, LEVELS)  # noqa: E731
        if not a.skip_infonce:
            est = InfoNCEEstimator()
            rounds = alternating_ratios(single, lambda: est.estimate(x, y), a.rounds, a.repeats)
            print(format_rounds(rounds, f"infonce ({est.steps} steps, batch {est.batch_size})"))
        rounds = alternating_ratios(single, lambda: KSGEstimator().estimate(x, y), a.rounds, a.repeats, a.repeats)
        print(format_rounds(rounds, "ksg (k-d tree, k=3)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
