"""Speed and memory of the estimator network on CPU (accuracy-free).

Prints, for a model config (default: ModelConfig()), the parameter count, the
training throughput (sets/s: preprocessing + forward + backward + Adam step, batch of
32 sets of one size) with peak memory, over n in {100, 500, 1000} x dx + dy in
{4, 16, 32, 100}, and the single-set forward time (median, preprocessing included)
at n = 1000, dx = dy = 5; once per thread count.

    .venv/bin/python scripts/bench_model.py                       # default config, 1 and 2 threads
    .venv/bin/python scripts/bench_model.py --threads 1 --quick   # fewer sizes
    .venv/bin/python scripts/bench_model.py --set cell_rows=32 --set use_knn=false
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.network import MIEstimator, ModelConfig  # noqa: E402
from model.preprocess import prepare_batch  # noqa: E402
from model.quantiles import pinball_loss  # noqa: E402


def _sets(b: int, n: int, dx: int, dy: int, rng: np.random.Generator):
    out = []
    for _ in range(b):
        x = rng.normal(size=(n, dx))
        y = 0.5 * x[:, :1] + rng.normal(size=(n, dy))
        out.append((x, y))
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_throughput(
    config: ModelConfig, n: int, dx: int, dy: int, batch: int, steps: int
) -> tuple[float, float, float, float]:
    """(sets/s wall, sets/s from process CPU time, preprocessing s/step, peak RSS MB) for training steps.

    CPU-time throughput is the fair number on a shared machine with one thread (it
    excludes time spent waiting for a core); with several threads use the wall number.
    """
    torch.manual_seed(0)
    model = MIEstimator(config).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    levels = torch.tensor(config.quantile_levels)
    rng = np.random.default_rng(0)
    data = [_sets(batch, n, dx, dy, rng) for _ in range(2)]
    target = torch.rand(batch)
    times, cpu, prep = [], [], []
    for step in range(steps + 1):
        c0 = time.process_time()
        t0 = time.perf_counter()
        b = prepare_batch(data[step % 2], config, rng=rng)
        t1 = time.perf_counter()
        loss = pinball_loss(model(b), target, levels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if step:  # first step is warm-up
            times.append(t2 - t0)
            cpu.append(time.process_time() - c0)
            prep.append(t1 - t0)
    return batch / statistics.median(times), batch / statistics.median(cpu), statistics.median(prep), _peak_rss_mb()


def forward_time(config: ModelConfig, n: int, dx: int, dy: int, repeats: int) -> tuple[float, float]:
    """(median wall ms of preprocessing + forward for one set, of preprocessing alone, median CPU ms of both)."""
    torch.manual_seed(0)
    model = MIEstimator(config).eval()
    (x, y), = _sets(1, n, dx, dy, np.random.default_rng(1))
    total, prep, cpu = [], [], []
    with torch.inference_mode():
        for i in range(repeats + 2):
            c0 = time.process_time()
            t0 = time.perf_counter()
            b = prepare_batch([(x, y)], config)
            t1 = time.perf_counter()
            model(b)
            t2 = time.perf_counter()
            if i >= 2:
                total.append(t2 - t0)
                prep.append(t1 - t0)
                cpu.append(time.process_time() - c0)
    return 1e3 * statistics.median(total), 1e3 * statistics.median(prep), 1e3 * statistics.median(cpu)


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        if val.lower() in ("true", "false"):
            out[key] = val.lower() == "true"
        else:
            try:
                out[key] = int(val)
            except ValueError:
                out[key] = float(val) if val.replace(".", "", 1).isdigit() else val
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per size")
    p.add_argument("--quick", action="store_true", help="only n=500 x dx+dy=16 and the forward time")
    p.add_argument("--no-train", action="store_true", help="only the forward time")
    args = p.parse_args(argv)

    config = ModelConfig(**_parse_overrides(args.set))
    print(f"config: {config.to_dict()}")
    print(f"parameters: {MIEstimator(config).num_parameters():,}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machines inflate wall times)")
    sizes = [(n, d) for n in (100, 500, 1000) for d in (4, 16, 32, 100)]
    if args.quick:
        sizes = [(500, 16)]
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n== {threads} thread(s) ==")
        ms, prep_ms, cpu_ms = forward_time(config, 1000, 5, 5, repeats=30)
        print(f"single-set forward n=1000 dx=dy=5: {ms:.2f} ms wall median (preprocessing {prep_ms:.2f} ms), {cpu_ms:.2f} ms CPU")
        if args.no_train:
            continue
        print(f"{'n':>6} {'dx+dy':>6} {'sets/s':>8} {'sets/s CPU':>10} {'prep s/step':>11} {'peak RSS MB':>12}")
        for n, d in sizes:
            steps = args.steps if n * d <= 16000 else max(1, args.steps - 1)
            rate, rate_cpu, prep, rss = train_throughput(config, n, d // 2, d - d // 2, args.batch, steps)
            print(f"{n:>6} {d:>6} {rate:>8.1f} {rate_cpu:>10.1f} {prep:>11.3f} {rss:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
