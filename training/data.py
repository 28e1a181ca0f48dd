"""Training batches: sets of similar size, subsampled to one shared n, a pure function of the step.

A micro-batch is identified by its index ``m`` (optimizer step * grad_accum + k).
Its composition depends only on ``(seed, m, process_index)``, so a resumed run sees
the same data as an uninterrupted one, and processes see disjoint data:

- ``StoreBatches``: process p owns the store's sets ``p, p + P, p + 2P, ...``; they are
  bucketed by dx + dy (contiguous chunks of the sets sorted by dx + dy); every epoch
  (a pure function of (seed, epoch, p)) sorts each bucket by a jittered log n, cuts
  it into batches and shuffles the batches, so a batch holds sets of similar
  (dx + dy, n) and each set is seen once per epoch (``n_weight_power`` p > 0: a set of
  n rows round((n / 100) ** p) times, at least once, with its own row subsample each
  time: more of the steps on large n, where the benchmark's n = 500 and 1,000 lie).
- ``StreamBatches``: fresh sets straight from ``metagen.tasks.draw_task``. Micro-batches
  come in groups of ``pool``: group g of process p draws the tasks
  ``(g * P + p) * B * pool + j`` (disjoint everywhere), buckets them as a store is (by
  dx + dy into buckets of ``bucket_sets``, each sorted by a jittered log n) and cuts
  them into ``pool`` batches of similar dimensions and n, served in an order shuffled by
  (seed, g, p). Every drawn task is used once (drawing costs ~20 ms a task, mostly the
  Monte Carlo MI of mixtures, ten times the sampling). A worker serving part of a group
  draws the whole group, so ``make_loader`` sends the micro-batches of a group to one
  worker (``worker_order``): each group is drawn once, whatever the number of workers,
  and the order of the batches depends on the number of workers (their content does not).

All sets of a batch are then subsampled to one n' drawn log-uniformly between
``n_train_min`` and ``min(n_train_max, min n_i)``; taking a random subset of rows keeps
the sample i.i.d. from the same joint distribution, so the MI target stays exact.
Streamed tasks are sampled at n' directly (the same distribution, less work).

Two optional augmentations (both off by default; both pure functions of (seed, m)):
``rotate_fraction`` of the sets have x and y each replaced by their normal scores times
a Haar-random orthogonal matrix (`rotate_block`): an invertible map of each block, so
the MI target stays the same, while the coordinates the model sees are mixed.
``col_stats_dropout`` of the sets get all-zero column features (``Batch.cols``), so
the model cannot lean on them alone.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

_TAG_EPOCH, _TAG_BATCH, _TAG_PREP, _TAG_GROUP, _TAG_AUG = 7, 11, 13, 17, 19   # separate random streams from one seed


@dataclass
class TrainBatch:
    """One micro-batch: the model input and its targets.

    batch: model.preprocess.Batch of B sets, all with ``n`` rows.
    target_t: (B,) float32 tensor, log1p(MI in nats).
    n: shared number of rows after subsampling.
    dx, dy: (B,) int arrays; mi: (B,) float64 array, MI in nats.
    fingerprint: hex digest of the raw subsampled values and targets ("" unless requested).
    """

    batch: Any
    target_t: torch.Tensor
    n: int
    dx: np.ndarray
    dy: np.ndarray
    mi: np.ndarray
    fingerprint: str = ""


def draw_rows(rng: np.random.Generator, n_min_in_batch: int, n_train_min: int, n_train_max: int,
              full_fraction: float = 0.0) -> int:
    """Shared subsample size n', log-uniform in [n_train_min, hi], hi = min(n_train_max, n_min_in_batch).

    With probability ``full_fraction`` n' = hi (the sets keep all their rows up to
    n_train_max), so training sees the store's own n distribution as well as smaller
    subsamples. If the smallest set has fewer than n_train_min rows, all sets are cut
    to its size.
    """
    hi = min(n_train_max, n_min_in_batch)
    lo = min(n_train_min, hi)
    if lo >= hi:
        return int(hi)
    if full_fraction > 0 and rng.uniform() < full_fraction:
        return int(hi)
    value = math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))
    return int(min(hi, max(lo, math.floor(value))))


def n_repeats(n: np.ndarray, power: float) -> np.ndarray:
    """Times each set of n rows comes per epoch: max(1, round((n / 100) ** power)); all 1 for power 0."""
    return np.maximum(1, np.rint((np.asarray(n, dtype=np.float64) / 100.0) ** power)).astype(np.int64)


def jittered_n_order(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices that sort sets by log n + a uniform jitter in [0, 0.5): neighbours have n within ~1.6x."""
    key = np.log(np.asarray(n, dtype=np.float64)) + rng.uniform(0.0, 0.5, size=len(n))
    return np.argsort(key, kind="stable")


def subsample_rows(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random subset of n rows of (x (N, dx), y (N, dy)), same rows in both."""
    if n >= x.shape[0]:
        return x, y
    rows = rng.permutation(x.shape[0])[:n]
    return x[rows], y[rows]


def rotate_block(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, d) -> (n, d): normal scores of each column times a Haar-random orthogonal d x d matrix.

    Per-column normal scores (a monotone map of each coordinate) then a rotation: an
    invertible map of the block, so I(X;Y) is unchanged. d = 1 returns `a` unchanged.
    """
    from model.preprocess import normal_scores

    d = a.shape[1]
    if d == 1:
        return a
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return normal_scores(a) @ (q * np.sign(np.diag(r)))  # sign fix: Haar-distributed


def fingerprint_sets(sets: list[tuple[np.ndarray, np.ndarray]], mi: np.ndarray) -> str:
    """Short hex digest of the sets' values and their MI (debug check of the data order)."""
    h = hashlib.sha1()
    for x, y in sets:
        h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(y, dtype=np.float32).tobytes())
    h.update(np.asarray(mi, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


class _BatchesBase(Dataset):
    """Shared part: map-style dataset whose item ``m`` is micro-batch m of this process."""

    def __init__(self, cfg, model_cfg, process_index: int, num_processes: int) -> None:
        self.seed = int(cfg.seed)
        self.batch_size = int(cfg.batch_size)
        self.n_train_min = int(cfg.n_train_min)
        self.n_train_max = int(cfg.n_train_max)
        self.full_fraction = float(cfg.n_train_full_fraction)
        self.bucket_sets = max(int(cfg.bucket_sets) or 16 * self.batch_size, self.batch_size)   # sets per dims bucket
        self.with_fingerprint = bool(cfg.log_batch_hash)
        self.rotate_fraction = float(cfg.rotate_fraction)
        self.col_stats_dropout = float(cfg.col_stats_dropout)
        self.model_cfg = model_cfg
        self.process_index = int(process_index)
        self.num_processes = int(num_processes)

    def __len__(self) -> int:          # effectively infinite; the sampler picks the indices
        return 2**62

    def _rng(self, tag: int, *key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, tag, *key, self.process_index]))

    def _finish(self, m: int, sets: list[tuple[np.ndarray, np.ndarray]], mi: np.ndarray, n: int) -> TrainBatch:
        """Prepare sets that all have n rows into a TrainBatch."""
        from model.preprocess import prepare_batch

        mi = np.asarray(mi, dtype=np.float64)
        aug = self._rng(_TAG_AUG, m)
        if self.rotate_fraction > 0:
            sets = [(rotate_block(x, aug), rotate_block(y, aug)) if aug.random() < self.rotate_fraction else (x, y)
                    for x, y in sets]
        batch = prepare_batch(sets, self.model_cfg, self._rng(_TAG_PREP, m))
        if self.col_stats_dropout > 0:
            batch.cols[torch.from_numpy(aug.random(len(sets)) < self.col_stats_dropout)] = 0.0  # (B, D, F)
        return TrainBatch(
            batch=batch,
            target_t=torch.from_numpy(np.log1p(np.maximum(mi, 0.0))).float(),
            n=n,
            dx=np.array([x.shape[1] for x, _ in sets]),
            dy=np.array([y.shape[1] for _, y in sets]),
            mi=mi,
            fingerprint=fingerprint_sets(sets, mi) if self.with_fingerprint else "",
        )


class StoreBatches(_BatchesBase):
    """Micro-batches from a zarr meta-dataset (``metagen.store.open_store``)."""

    def __init__(self, store_path: str, cfg, model_cfg, process_index: int = 0, num_processes: int = 1) -> None:
        super().__init__(cfg, model_cfg, process_index, num_processes)
        from metagen.store import open_store

        self.store_path = store_path
        store = open_store(store_path)
        self._store = store
        mine = np.arange(len(store))[self.process_index::self.num_processes]
        if len(mine) < self.batch_size:
            raise ValueError(f"store {store_path!r} has {len(store)} sets: too few for batch_size "
                             f"{self.batch_size} on {self.num_processes} process(es)")
        self.n = np.asarray(store.n, dtype=np.int64)
        self.dx = np.asarray(store.dx, dtype=np.int64)
        self.dy = np.asarray(store.dy, dtype=np.int64)
        self.mi = np.asarray(store.mi, dtype=np.float64)
        mine = np.repeat(mine, n_repeats(self.n[mine], float(cfg.n_weight_power)))
        order = mine[np.argsort(self.dx[mine] + self.dy[mine], kind="stable")]
        self.buckets = np.array_split(order, max(1, len(order) // self.bucket_sets))
        self.batches_per_epoch = sum(len(b) // self.batch_size for b in self.buckets)
        self._epoch_cache: tuple[int, list[np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None           # each worker opens its own handle
        state["_epoch_cache"] = None
        return state

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches (arrays of set indices) of one epoch, in order; pure in (seed, epoch, p)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = self._rng(_TAG_EPOCH, epoch)
        batches: list[np.ndarray] = []
        for bucket in self.buckets:
            ordered = bucket[jittered_n_order(self.n[bucket], rng)]
            usable = len(ordered) // self.batch_size * self.batch_size
            batches.extend(np.split(ordered[:usable], usable // self.batch_size))
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
        self._epoch_cache = (epoch, batches)
        return batches

    def indices(self, m: int) -> np.ndarray:
        """Set indices of micro-batch m of this process."""
        epoch, j = divmod(int(m), self.batches_per_epoch)
        return self.epoch_batches(epoch)[j]

    def __getitem__(self, m: int) -> TrainBatch:
        if self._store is None:
            from metagen.store import open_store

            self._store = open_store(self.store_path)
        idx = self.indices(m)
        rng = self._rng(_TAG_BATCH, m)
        n = draw_rows(rng, int(self.n[idx].min()), self.n_train_min, self.n_train_max, self.full_fraction)
        sets = [subsample_rows(*self._store.get(int(i)), n, rng) for i in idx]
        return self._finish(m, sets, self.mi[idx], n)


class StreamBatches(_BatchesBase):
    """Micro-batches of fresh sets drawn with ``metagen.tasks.draw_task`` (infinite data)."""

    def __init__(self, config_path: str, cfg, model_cfg, process_index: int = 0, num_processes: int = 1) -> None:
        super().__init__(cfg, model_cfg, process_index, num_processes)
        from metagen.config import load_config

        self.config_path = config_path
        self.gen_config = load_config(config_path)
        self.stream_seed = int(cfg.stream_seed)
        self.pool = int(cfg.stream_pool)
        self._group_cache: tuple[int, list] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group_cache"] = None
        return state

    def group_tasks(self, group: int) -> list:
        """The pool * B tasks of a group of ``pool`` consecutive micro-batches, bucketed as a store is.

        The tasks are sorted by dx + dy and cut into buckets of about ``bucket_sets``
        whole batches; each bucket is sorted by a jittered log n (as ``StoreBatches``
        does every epoch), so the batches cut from it have similar dimensions and an n
        within ~1.6x. (Sorting by dimensions alone left n' = the smallest n of 64 random
        tasks, so the model trained on n' ~ 30 where the store gives ~130.)
        """
        from metagen.tasks import draw_task

        if self._group_cache is not None and self._group_cache[0] == group:
            return self._group_cache[1]
        size = self.batch_size * self.pool
        base = (int(group) * self.num_processes + self.process_index) * size
        tasks = [draw_task(self.gen_config, self.stream_seed, base + j) for j in range(size)]
        tasks.sort(key=lambda t: t.dx + t.dy)            # stable: ties keep index order
        rng = self._rng(_TAG_GROUP, group)
        buckets = max(1, self.pool // (self.bucket_sets // self.batch_size))
        ordered = []
        for chunk in np.array_split(np.arange(self.pool), buckets):   # whole batches per bucket
            part = tasks[chunk[0] * self.batch_size:(chunk[-1] + 1) * self.batch_size]
            ordered.extend(part[i] for i in jittered_n_order([t.n for t in part], rng))
        self._group_cache = (group, ordered)
        return ordered

    def tasks(self, m: int) -> list:
        """The B tasks of micro-batch m of this process (drawn, not yet sampled)."""
        group, k = divmod(int(m), self.pool)
        chunk = int(self._rng(_TAG_EPOCH, group).permutation(self.pool)[k])
        return self.group_tasks(group)[chunk * self.batch_size:(chunk + 1) * self.batch_size]

    def __getitem__(self, m: int) -> TrainBatch:
        tasks = self.tasks(m)
        n = draw_rows(self._rng(_TAG_BATCH, m), min(t.n for t in tasks), self.n_train_min, self.n_train_max,
                      self.full_fraction)
        # sampling n rows directly is the same as subsampling a larger i.i.d. sample, and cheaper
        sets = [dataclasses.replace(t, n=n).sample() if t.n > n else t.sample() for t in tasks]
        return self._finish(m, sets, np.array([t.mi for t in tasks]), n)


def _identity(item):
    return item


def _worker_init(_worker_id: int) -> None:
    """One torch thread per worker; Ctrl-C / SIGTERM are for the training process only.

    (A worker killed by SIGTERM from SLURM would make the DataLoader abort the main
    process before it can save its state; the main process ends the workers itself.)
    """
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_order(position: int, num_workers: int, group: int) -> int:
    """The micro-batch index m served at loader position ``position``.

    The DataLoader hands position k to worker k % num_workers. Micro-batches that share a
    drawing group (``group`` consecutive indices, ``StreamBatches.pool``) should reach one
    worker, which then draws the group once: positions are taken in windows of
    ``num_workers * group``, and position ``base + i`` of a window serves
    ``m = base + (i % num_workers) * group + i // num_workers``. Each window is a
    permutation of its own indices, so every micro-batch is still served exactly once.
    With one worker or ``group`` 1 the order is the identity.
    """
    if num_workers <= 1 or group <= 1:
        return int(position)
    window = num_workers * group
    base, i = divmod(int(position), window)
    return base * window + (i % num_workers) * group + i // num_workers


@dataclass(frozen=True)
class _Positions:
    """Lazy sampler: ``worker_order`` of the positions start .. stop - 1."""

    start: int
    stop: int
    num_workers: int
    group: int

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        return (worker_order(p, self.num_workers, self.group) for p in range(self.start, self.stop))


def make_loader(dataset: Dataset, start: int, stop: int, num_workers: int) -> DataLoader:
    """DataLoader over loader positions start .. stop - 1 (yields one TrainBatch per position).

    Position p serves ``dataset[worker_order(p, num_workers, group)]``, where group is the
    dataset's ``pool`` (streamed sets) or 1 (stores: the identity order), so a resumed
    run with the same number of workers sees the same batches in the same order.
    Workers run with one torch thread each; the loader never collates (items are batches).
    """
    group = int(getattr(dataset, "pool", 1))
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=_Positions(start, stop, num_workers, group),
        num_workers=num_workers,
        collate_fn=_identity,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
