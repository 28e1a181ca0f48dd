"""Training throughput on the real training mix, restricted to a size range.

    python scripts/bench_train_mix.py --store ~/.cache/amortized-mi/stores/train50k \
        --max-d 16 --n-max 500 --steps 40

Batches are drawn as train.py draws them (sets of one dx+dy value and similar n, one
shared subsample size n' from `training.data.draw_rows` with the given n range and
full fraction), for the default ModelConfig on one torch thread. Prints sets/s of the
optimizer step alone (forward + pinball loss + backward + AdamW; in train.py the
preprocessing runs in a DataLoader worker on the other core) and of step +
preprocessing in one process, with the mean n' and dx+dy of the timed batches.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metagen.store import open_store  # noqa: E402
from model.network import MIEstimator, ModelConfig  # noqa: E402
from model.preprocess import prepare_batch  # noqa: E402
from model.quantiles import pinball_loss  # noqa: E402
from training.data import draw_rows, subsample_rows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--max-d", type=int, default=16, help="largest dx + dy")
    p.add_argument("--n-min", type=int, default=16)
    p.add_argument("--n-max", type=int, default=500)
    p.add_argument("--full-fraction", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    store = open_store(args.store)
    d = store.dx + store.dy
    pool = np.flatnonzero(d <= args.max_d)
    rng = np.random.default_rng(args.seed)
    cfg = ModelConfig()
    model = MIEstimator(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    levels = torch.tensor(cfg.quantile_levels)
    t_prep = t_step = 0.0
    ns, ds, batch_sizes = [], [], []
    for step in range(args.steps + 2):
        dd = d[rng.choice(pool)]
        same = pool[d[pool] == dd]
        same = same[np.argsort(store.n[same], kind="stable")]  # like train.py: similar n within a batch
        start = int(rng.integers(max(1, same.size - args.batch + 1)))
        idx = same[start:start + args.batch]
        n = draw_rows(rng, int(store.n[idx].min()), args.n_min, args.n_max, args.full_fraction)
        t0 = time.perf_counter()
        sets = [subsample_rows(*store.get(int(i)), n, rng) for i in idx]
        batch = prepare_batch(sets, cfg, rng)
        target = torch.from_numpy(np.log1p(store.mi[idx])).float()
        t1 = time.perf_counter()
        loss = pinball_loss(model(batch), target, levels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if step >= 2:  # first steps warm up
            t_prep += t1 - t0
            t_step += t2 - t1
            ns.append(n)
            ds.append(int(dd))
            batch_sizes.append(len(idx))
    sets_timed = int(np.sum(batch_sizes))
    print(f"training mix: dx+dy <= {args.max_d}, n' in [{args.n_min}, {args.n_max}] (full fraction "
          f"{args.full_fraction}); mean n' {np.mean(ns):.0f}, mean dx+dy {np.mean(ds):.1f}; "
          f"{model.num_parameters():,} parameters, 1 thread")
    print(f"  optimizer step alone:        {sets_timed / t_step:7.1f} sets/s")
    print(f"  step + preprocessing, 1 core: {sets_timed / (t_step + t_prep):7.1f} sets/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
