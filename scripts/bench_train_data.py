"""Does loading starve the model? Loader-only batches/s (store and stream) vs the training step.

    python scripts/bench_train_data.py --config configs/train/cpu.toml \
        --store ~/.cache/amortized-mi/stores/tiny-train --stream-config configs/metagen/tiny.toml

For each source (zarr store, fresh sets from metagen's draw_task) and each number of
DataLoader workers, it times the loader alone (batches/s after the first batch, and the
first-batch latency), then times the training step alone (forward + pinball loss +
backward + AdamW on batches already in memory, one torch thread). Loading keeps up if
loader batches/s >= step batches/s; with workers > 0 the loader runs on another core,
so what matters is that ratio. Prints one JSON object (also written with --out).
Extra ``--key value`` arguments override the training config (e.g. --batch_size 32).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.config import load_train_config  # noqa: E402
from training.data import StoreBatches, StreamBatches, make_loader  # noqa: E402


def time_loader(dataset, batches: int, workers: int) -> dict:
    """Iterate the loader over micro-batches 0..batches; return timings and mean n."""
    t0 = time.perf_counter()
    loader = make_loader(dataset, 0, batches + 1, workers)
    it = iter(loader)
    first = next(it)
    t1 = time.perf_counter()
    ns = [first.n]
    for tb in it:
        ns.append(tb.n)
    t2 = time.perf_counter()
    return {"workers": workers, "first_batch_s": t1 - t0, "batches_per_s": batches / (t2 - t1),
            "batches_per_s_with_start": (batches + 1) / (t2 - t0),
            "n_mean": float(np.mean(ns))}


def time_steps(model, batches: list, levels: torch.Tensor, repeats: int) -> dict:
    """Forward + backward + AdamW step on in-memory batches; steps/s (after one warm-up step)."""
    from model.quantiles import pinball_loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(tb):
        loss = pinball_loss(model(tb.batch), tb.target_t, levels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])
    t0 = time.perf_counter()
    count = 0
    for _ in range(repeats):
        for tb in batches:
            step(tb)
            count += 1
    return {"steps_per_s": count / (time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/train/cpu.toml"))
    parser.add_argument("--store", default=None, help="zarr training store to read")
    parser.add_argument("--stream-config", default=None, help="metagen config TOML to stream from")
    parser.add_argument("--batches", type=int, default=40, help="micro-batches per loader measurement")
    parser.add_argument("--workers", default="0,1", help="comma-separated DataLoader worker counts")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--loader-only", action="store_true", help="skip the training-step timing")
    args, rest = parser.parse_known_args(argv)
    torch.set_num_threads(1)
    cfg = load_train_config(args.config, rest, check_paths=False)
    model_cfg = cfg.model_config()
    from model.network import MIEstimator

    torch.manual_seed(0)
    model = MIEstimator(model_cfg)
    levels = torch.tensor(model_cfg.quantile_levels, dtype=torch.float32)
    report: dict = {"batch_size": cfg.batch_size, "n_train_min": cfg.n_train_min, "n_train_max": cfg.n_train_max,
                    "model_parameters": sum(p.numel() for p in model.parameters()), "sources": {}}
    sources = {}
    if args.store:
        sources["store"] = StoreBatches(str(Path(args.store).expanduser()), cfg, model_cfg)
    if args.stream_config:
        sources["stream"] = StreamBatches(args.stream_config, cfg, model_cfg)
    if not sources:
        parser.error("give --store and/or --stream-config")
    for name, dataset in sources.items():
        runs = [time_loader(dataset, args.batches, int(w)) for w in args.workers.split(",")]
        report["sources"][name] = {"loader": runs}
        step_text = ""
        if not args.loader_only:
            sample = [dataset[m] for m in range(min(8, args.batches))]
            steps = time_steps(model, sample, levels, repeats=2)
            report["sources"][name].update(train_step=steps, loader_over_step=[
                r["batches_per_s"] / steps["steps_per_s"] for r in runs])
            step_text = f"step {steps['steps_per_s']:.2f}/s; "
        print(f"{name}: {step_text}" + ", ".join(
            f"loader(workers={r['workers']}) {r['batches_per_s']:.2f}/s (first {r['first_batch_s']:.2f} s)"
            for r in runs), file=sys.stderr)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
