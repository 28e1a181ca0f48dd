"""Benchmark meta-dataset generation: sets/s and MB/s, 1 vs 2 workers, with and without flows.

    .venv/bin/python scripts/bench_metagen.py --config configs/metagen/train.toml --num-sets 400

Builds config variants in code from the given (training) config:
``as-is`` (its transform weights), ``no-flows`` (weights of flow transforms set to
zero) and ``flows-only`` (only the flow transforms). Each variant is generated into a
temporary store with 1 and 2 worker processes; the table reports wall-clock
throughput (including process start-up and zarr writes), CPU time per set (summed
over workers, robust to other jobs on the machine), and the time to generate 100,000
and 200,000 sets at the wall rate and on 2 dedicated cores from the CPU time. Also splits one worker's time into
drawing+sampling vs writing for the as-is config.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metagen.config import GeneratorConfig, load_config  # noqa: E402
from metagen.generate import generate  # noqa: E402


def is_flow(name: str) -> bool:
    """Whether a transform name involves a normalizing flow."""
    return "flow" in name


def variants(config: GeneratorConfig) -> dict[str, GeneratorConfig]:
    """The as-is config and its no-flows / flows-only versions (when they exist)."""
    out = {"as-is": config}
    flows = {k: v for k, v in config.transforms.items() if is_flow(k)}
    rest = {k: v for k, v in config.transforms.items() if not is_flow(k)}
    if flows and rest:
        out["no-flows"] = dataclasses.replace(config, transforms=rest)
    if flows:
        out["flows-only"] = dataclasses.replace(config, transforms=flows)
    return out


def split_draw_write(config: GeneratorConfig, num_sets: int, seed: int) -> str:
    """CPU seconds spent drawing+sampling vs packing+writing ``num_sets`` sets here."""
    import normflows  # noqa: F401  (imported up front: not part of the per-set cost)
    import torch
    import zarr  # noqa: F401

    from metagen import store as st
    from metagen.tasks import draw_task

    torch.set_num_threads(1)
    c0 = time.process_time()
    sets = []
    for i in range(num_sets):
        task = draw_task(config, seed, i)
        x, y = task.sample()
        sets.append((x, y, st.SetMeta(task.mi, task.mi_stderr, task.family_code, task.transform_code, task.seed)))
    c1 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        st.write_shard(tmp, 0, 0, sets)
    c2 = time.process_time()
    mb = sum(x.size + y.size for x, y, _ in sets) * 4 / 1e6
    return (f"one process, as-is, {num_sets} sets: draw+sample {1e3 * (c1 - c0) / num_sets:.1f} CPU ms/set, "
            f"pack+write {1e3 * (c2 - c1) / num_sets:.2f} CPU ms/set ({mb:.1f} MB)")


def bench_reads(path: Path, reads: int = 300) -> str:
    """Time open_store and random-access ``get`` on a generated store."""
    import os

    import numpy as np

    from metagen.store import open_store

    t0 = time.perf_counter()
    store = open_store(path)
    t_open = time.perf_counter() - t0
    idx = np.random.default_rng(0).integers(0, len(store), reads)
    t0 = time.perf_counter()
    floats = sum(sum(a.size for a in store.get(int(i))) for i in idx)
    t_get = (time.perf_counter() - t0) / reads
    files = sum(len(f) for _, _, f in os.walk(path))
    return (f"store of {len(store)} sets: {files} files, open_store {1e3 * t_open:.0f} ms, "
            f"random get {1e3 * t_get:.2f} ms/set (mean {floats / reads:.0f} floats/set)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/metagen/train.toml"))
    parser.add_argument("--num-sets", type=int, default=400, help="sets per measurement")
    parser.add_argument("--sets-per-shard", type=int, default=50)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run")
    args = parser.parse_args(argv)

    base = dataclasses.replace(load_config(args.config), sets_per_shard=args.sets_per_shard)
    print(f"config {args.config} ({base.name}); {args.num_sets} sets per run, "
          f"{args.sets_per_shard} per shard; transforms: {', '.join(base.transforms)}")
    print(split_draw_write(base, min(args.num_sets, 100), args.seed), flush=True)

    read_report = ""
    rows = []
    for name, cfg in variants(base).items():
        if args.only and name not in args.only:
            continue
        for w in args.workers:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                res = generate(cfg, Path(tmp) / "store", num_sets=args.num_sets, seed=args.seed,
                               workers=w, progress=False)
                secs = time.perf_counter() - t0
                if name == "as-is" and w == args.workers[0]:
                    read_report = bench_reads(Path(tmp) / "store")
            rate = res.sets_written / secs
            mb = res.values_written * 4 / 1e6
            cpu_ms = 1e3 * res.cpu_seconds / res.sets_written
            rows.append((name, w, res.sets_written, secs, rate, mb / secs, mb / res.sets_written,
                         cpu_ms))
            print(f"  {name} workers={w}: {rate:.1f} sets/s wall, {cpu_ms:.1f} CPU ms/set", flush=True)

    print()
    print("wall: elapsed time including process start-up, on a machine shared with other jobs;")
    print("CPU: CPU time per set summed over workers; 'on 2 cores' = N * CPU/set / 2 (ideal).")
    print(f"{'variant':<11} {'workers':>7} {'sets':>5} {'wall s':>7} {'sets/s':>7} {'MB/s':>6} "
          f"{'MB/set':>6} {'CPU ms/set':>10} {'100k min':>8} {'200k min':>8} {'100k min':>8} "
          f"{'200k min':>8}")
    print(f"{'':<11} {'':>7} {'':>5} {'':>7} {'':>7} {'':>6} {'':>6} {'':>10} "
          f"{'(wall)':>8} {'(wall)':>8} {'(2 cores)':>8} {'(2 cores)':>8}")
    for name, w, n, secs, rate, mbs, mb_set, cpu_ms in rows:
        print(f"{name:<11} {w:>7} {n:>5} {secs:>7.1f} {rate:>7.1f} {mbs:>6.2f} {mb_set:>6.3f} "
              f"{cpu_ms:>10.1f} {100_000 / rate / 60:>8.1f} {200_000 / rate / 60:>8.1f} "
              f"{100_000 * cpu_ms / 2e3 / 60:>8.1f} {200_000 * cpu_ms / 2e3 / 60:>8.1f}")
    print(read_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
