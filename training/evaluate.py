"""Validation of the estimator on fixed held-out sets, each at its own n.

Predictions are quantile grids of t = log1p(MI) at the model's levels; metrics are
reported in nats after mapping back with expm1 (quantiles commute with monotone maps,
so interval coverage is the same in t and in nats):

    mae, rmse, bias     of the median (after calibration), nats
    coverage_50/80/90   fraction of sets whose true MI lies in the central interval
    width_50/80/90      mean width of that interval, nats
    pinball             mean pinball loss of the raw grid in t-space (model selection)
    pinball_cal         the same after the calibration offsets
    num_sets            sets evaluated
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

INTERVALS = (0.5, 0.8, 0.9)


@dataclass
class ValSplit:
    """Prepared validation batches (CPU) and their targets, in batch order.

    batches: list of model.preprocess.Batch; target_t: (N,) log1p(MI); mi: (N,) nats.
    """

    name: str
    batches: list
    target_t: np.ndarray
    mi: np.ndarray

    def __len__(self) -> int:
        return len(self.mi)


def load_sets(store_path: str, max_sets: int = 0, select: slice | None = None
              ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """The first ``max_sets`` sets of a store (all if 0), optionally ``[select]`` of those.

    Returns (sets [(x (n, dx), y (n, dy)) float32], mi (N,) nats).
    """
    from metagen.store import open_store

    store = open_store(store_path)
    count = len(store) if max_sets <= 0 else min(max_sets, len(store))
    idx = np.arange(count)
    if select is not None:
        idx = idx[select]
    sets = [store.get(int(i)) for i in idx]
    return sets, np.asarray(store.mi, dtype=np.float64)[idx]


def build_split(name: str, sets: list[tuple[np.ndarray, np.ndarray]], mi: np.ndarray, model_cfg,
                batch_size: int, max_cells: int) -> ValSplit:
    """Group sets of similar n * (dx + dy) into batches (padded cells <= max_cells) and prepare them once."""
    from model.preprocess import prepare_batch

    if len(sets) == 0:
        raise ValueError(f"validation split {name!r} has no sets")
    cells = np.array([x.shape[0] * (x.shape[1] + y.shape[1]) for x, y in sets])
    order = np.lexsort((cells, [x.shape[0] for x, _ in sets]))
    batches, groups, group = [], [], []
    max_n = max_d = 0
    for i in order:
        x, y = sets[i]
        n, d = x.shape[0], x.shape[1] + y.shape[1]
        grown = len(group) + 1, max(max_n, n), max(max_d, d)
        if group and (grown[0] > batch_size or grown[0] * grown[1] * grown[2] > max_cells):
            groups.append(group)
            group, max_n, max_d = [], 0, 0
        group.append(int(i))
        max_n, max_d = max(max_n, n), max(max_d, d)
    groups.append(group)
    for g in groups:
        batches.append(prepare_batch([sets[i] for i in g], model_cfg, None))
    flat = np.concatenate([np.asarray(g) for g in groups])
    mi = np.asarray(mi, dtype=np.float64)[flat]
    return ValSplit(name=name, batches=batches, target_t=np.log1p(np.maximum(mi, 0.0)), mi=mi)


@torch.no_grad()
def predict_split(model: torch.nn.Module, split: ValSplit, device: torch.device, autocast: Any = None) -> np.ndarray:
    """Raw quantile grid (N, Q) of log1p(MI) for every set of the split (float64)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in split.batches:
            batch = batch.to(device)
            if autocast is not None:
                with autocast():
                    pred = model(batch)
            else:
                pred = model(batch)
            out.append(pred.float().cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def interval_levels(mass: float) -> tuple[float, float]:
    """Central interval of probability ``mass``: (lower level, upper level)."""
    return (1.0 - mass) / 2.0, (1.0 + mass) / 2.0


def split_metrics(grid_t: np.ndarray, target_t: np.ndarray, mi: np.ndarray, levels: np.ndarray,
                  offsets: np.ndarray | None) -> dict[str, float]:
    """Metrics of one split (see module docstring) from a raw grid (N, Q) in t-space."""
    from model.quantiles import apply_calibration, interpolate_quantiles, pinball_loss

    levels = np.asarray(levels, dtype=np.float64)
    grid_t = np.asarray(grid_t, dtype=np.float64)
    cal = grid_t if offsets is None else np.asarray(apply_calibration(grid_t, np.asarray(offsets)), dtype=np.float64)
    wanted = [0.5] + [lv for mass in INTERVALS for lv in interval_levels(mass)]
    q = np.asarray(interpolate_quantiles(levels, cal, np.asarray(wanted)), dtype=np.float64)
    median = np.expm1(q[:, 0])
    err = median - mi
    lv_t = torch.as_tensor(levels, dtype=torch.float32)
    tgt = torch.as_tensor(target_t, dtype=torch.float32)
    metrics: dict[str, float] = {
        "num_sets": int(len(mi)),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "bias": float(np.mean(err)),
        "pinball": float(pinball_loss(torch.as_tensor(grid_t, dtype=torch.float32), tgt, lv_t)),
        "pinball_cal": float(pinball_loss(torch.as_tensor(cal, dtype=torch.float32), tgt, lv_t)),
    }
    for k, mass in enumerate(INTERVALS):
        lo, hi = q[:, 1 + 2 * k], q[:, 2 + 2 * k]
        pct = int(round(mass * 100))
        metrics[f"coverage_{pct}"] = float(np.mean((target_t >= lo) & (target_t <= hi)))
        metrics[f"width_{pct}"] = float(np.mean(np.expm1(hi) - np.expm1(lo)))
    return metrics
