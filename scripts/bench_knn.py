"""Time the kNN step alone: exact float32 distances vs the int16 path (knn_quantize), in the same run.

    python scripts/bench_knn.py [--repeats 30] [--threads 1]

For each case (n rows, dx = dy dims, reference rows) prints the median milliseconds of
``model.preprocess.knn_statistics`` with quantize=False and quantize=True, their ratio, and
how far the mean KSG term moved (nats). The inputs are normal scores of a correlated
Gaussian sample, as the model sees them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.bench_speed import median_seconds  # noqa: E402
from model.preprocess import knn_statistics, normal_scores  # noqa: E402

CASES = ((1000, 5, 256), (1000, 5, 1024), (1000, 25, 256), (1000, 25, 1024), (2000, 1, 1024), (2000, 50, 256))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"kNN step, k = 3, torch threads = {torch.get_num_threads()}; median of {args.repeats} calls")
    print(f"{'n':>5} {'dims':>7} {'refs':>5} {'float32 ms':>11} {'int16 ms':>9} {'ratio':>6} {'KSG moved':>10}")
    for n, d, m in CASES:
        x = rng.standard_normal((n, d))
        y = 0.7 * x + 0.7 * rng.standard_normal((n, d))
        z = np.column_stack([normal_scores(x), normal_scores(y)])
        ref = np.sort(rng.choice(n, min(m, n), replace=False))
        exact = median_seconds(lambda: knn_statistics(z, d, ref, 3), args.repeats) * 1e3
        quant = median_seconds(lambda: knn_statistics(z, d, ref, 3, quantize=True), args.repeats) * 1e3
        moved = knn_statistics(z, d, ref, 3, quantize=True)[1] - knn_statistics(z, d, ref, 3)[1]
        print(f"{n:>5} {f'{d}+{d}':>7} {min(m, n):>5} {exact:>11.2f} {quant:>9.2f} {exact / quant:>6.2f} {moved:>+10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
