"""Speed and memory of the estimator network on CPU (accuracy-free).

Prints, for a model config (default: ModelConfig()), the parameter count, the
training throughput (sets/s: preprocessing + forward + backward + Adam step, batch of
32 sets of one size) with peak memory, over n in {100, 500, 1000} x dx + dy in
{4, 16, 32, 100}, and the single-set forward time (median, preprocessing included)
at n = 1000, dx = dy = 5; once per thread count.

    .venv/bin/python scripts/bench_model.py                       # default config, 1 and 2 threads
    .venv/bin/python scripts/bench_model.py --threads 1 --quick   # fewer sizes
    .venv/bin/python scripts/bench_model.py --set cell_rows=32 --set use_knn=false
    python scripts/bench_model.py --device cuda --precision fp32,bf16 --batch 128 --sizes 500x16,2000x16 --threads 1

On a GPU (``--device cuda``) preprocessing stays on the CPU (as in training, where the
DataLoader workers do it) and the 'step sets/s' column times forward + backward + step
alone (synchronised), which is how many sets/s the loader workers must deliver.
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
    config: ModelConfig, n: int, dx: int, dy: int, batch: int, steps: int,
    device: str = "cpu", precisions: tuple[str, ...] = ("fp32",),
) -> dict[str, tuple[float, float, float, float, float]]:
    """Per precision: (sets/s wall, sets/s from process CPU time, step-only sets/s, preprocessing s/step, peak memory MB).

    Two batches are preprocessed once (timed: the loader's share) and then trained on in
    turn for ``steps`` timed steps after one warm-up step (forward + pinball loss +
    backward + Adam; on a GPU the clock waits for the device). Whole-step rates add the
    median preprocessing time to the median step time. CPU-time throughput is the fair
    number on a shared machine with one thread (it excludes time spent waiting for a
    core); with several threads use the wall number. Peak memory is the process's RSS on
    CPU and the allocator's peak on a GPU. Precision "bf16" runs the forward under bf16
    autocast, as ``train.py`` with ``mixed_precision = "bf16"``.
    """
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    prepared, prep_wall, prep_cpu = [], [], []
    for _ in range(2):
        sets = _sets(batch, n, dx, dy, rng)
        c0, t0 = time.process_time(), time.perf_counter()
        prepared.append(prepare_batch(sets, config, rng=rng).to(dev))
        sync()
        prep_wall.append(time.perf_counter() - t0)
        prep_cpu.append(time.process_time() - c0)
    out = {}
    for precision in precisions:
        torch.manual_seed(0)
        model = MIEstimator(config).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        levels = torch.tensor(config.quantile_levels, device=dev)
        target = torch.rand(batch, device=dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        wall, cpu = [], []
        for step in range(steps + 1):
            c0, t0 = time.process_time(), time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                pred = model(prepared[step % 2])
            loss = pinball_loss(pred.float(), target, levels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sync()
            if step:  # first step is warm-up
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _peak_rss_mb()
        step_wall, prep = statistics.median(wall), statistics.median(prep_wall)
        out[precision] = (batch / (prep + step_wall), batch / (statistics.median(prep_cpu) + statistics.median(cpu)),
                          batch / step_wall, prep, peak)
    return out


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
    p.add_argument("--sizes", default=None, help="comma-separated NxD (n rows x dx+dy), e.g. 500x16,2000x16")
    p.add_argument("--device", default="cpu", help="torch device of the training steps (cpu, cuda)")
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32 and/or bf16 (autocast) training steps")
    args = p.parse_args(argv)

    config = ModelConfig(**_parse_overrides(args.set))
    print(f"config: {config.to_dict()}")
    print(f"parameters: {MIEstimator(config).num_parameters():,}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (shared machines inflate wall times)")
    sizes = [(n, d) for n in (100, 500, 1000) for d in (4, 16, 32, 100)]
    if args.quick:
        sizes = [(500, 16)]
    if args.sizes:
        try:
            sizes = [tuple(int(v) for v in item.lower().split("x")) for item in args.sizes.split(",")]
        except ValueError:
            p.error(f"--sizes must look like 500x16,2000x16, got {args.sizes!r}")
    if args.device != "cpu" and (torch.device(args.device).type != "cuda" or not torch.cuda.is_available()):
        p.error(f"--device {args.device!r}: only cpu, or cuda when a GPU is visible")
    precisions = tuple(args.precision.split(","))
    if not set(precisions) <= {"fp32", "bf16"}:
        p.error(f"--precision takes fp32 and/or bf16, got {args.precision!r}")
    print(f"training steps on {args.device} ({', '.join(precisions)}), batch {args.batch}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n== {threads} thread(s) ==")
        ms, prep_ms, cpu_ms = forward_time(config, 1000, 5, 5, repeats=30)
        print(f"single-set forward n=1000 dx=dy=5: {ms:.2f} ms wall median (preprocessing {prep_ms:.2f} ms), {cpu_ms:.2f} ms CPU")
        if args.no_train:
            continue
        mem = "peak GPU MB" if args.device != "cpu" else "peak RSS MB"
        print(f"{'n':>6} {'dx+dy':>6} {'prec':>5} {'sets/s':>8} {'sets/s CPU':>10} {'step sets/s':>11} "
              f"{'prep s/batch':>12} {mem:>12}")
        for n, d in sizes:
            steps = args.steps if n * d <= 16000 else max(1, args.steps - 1)
            rates = train_throughput(config, n, d // 2, d - d // 2, args.batch, steps, args.device, precisions)
            for precision, (rate, rate_cpu, rate_step, prep, peak) in rates.items():
                print(f"{n:>6} {d:>6} {precision:>5} {rate:>8.1f} {rate_cpu:>10.1f} {rate_step:>11.1f} "
                      f"{prep:>12.3f} {peak:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
