"""Generate a meta-dataset into a zarr store: sharded, resumable, parallel, deterministic.

Set ``i`` depends only on (config, seed, i) (``metagen.tasks.draw_task``), and shard
``k`` holds a fixed set range, so the bytes of every shard are the same whatever the
number of worker processes or of ``--num-shards`` splits. A process handles the
shards ``k`` with ``k % num_shards == shard_index`` (one SLURM array task each),
skips shards that are already complete (resume after a crash), and writes the
manifest when it finds every shard complete.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from metagen import store as st

# Environment for worker processes: one thread per process for every BLAS/OpenMP
# pool, set before the worker imports numpy or torch (results must not depend on
# thread counts, and the cores are shared between processes).
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# Imported once by the forkserver so that workers start warm (torch: every worker
# sets its thread count; normflows: the flow transforms). Missing modules are skipped.
FORKSERVER_PRELOAD = ("metagen.generate", "metagen.tasks", "zarr", "torch", "normflows")

_progress_queue: Any = None  # set in each worker by _init_worker


@dataclass
class GenerateResult:
    """What one ``generate`` call did."""

    out_dir: Path
    num_sets: int
    num_shards_total: int
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    sets_written: int = 0
    values_written: int = 0  # float32 values written (x and y together)
    seconds: float = 0.0  # wall clock of the whole call
    cpu_seconds: float = 0.0  # CPU time spent making shards, summed over processes
    manifest: Path | None = None  # set when all shards were complete at the end


def config_to_dict(config: Any) -> dict:
    """A JSON-able dict of a generator config (``metagen.config.config_to_dict``)."""
    if isinstance(config, dict):
        return dict(config)
    from metagen.config import config_to_dict as to_dict

    return to_dict(config)


def _config_int(config: Any, name: str) -> int | None:
    value = getattr(config, name, None)
    return None if value is None else int(value)


def make_plan(config: Any, *, num_sets: int | None, seed: int | None,
              command: Sequence[str] | None) -> dict:
    """The plan recorded in ``plan.json`` and the manifest.

    ``num_sets`` and ``seed`` default to ``config.num_sets`` and ``config.seed``;
    ``sets_per_shard`` comes from ``config.sets_per_shard``. The recorded config
    holds the effective ``num_sets`` and ``seed``.
    """
    from metagen.tasks import FAMILY_CODES, TRANSFORM_CODES

    if num_sets is None:
        num_sets = _config_int(config, "num_sets")
    if num_sets is None or num_sets < 1:
        raise ValueError(f"num_sets must be a positive integer, got {num_sets}")
    per = _config_int(config, "sets_per_shard")
    if per is None or per < 1:
        raise ValueError(f"config.sets_per_shard must be a positive integer, got {per}")
    if seed is None:
        seed = _config_int(config, "seed") or 0
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    config_dict = config_to_dict(config)
    config_dict.update(num_sets=int(num_sets), seed=seed)
    return {
        "config": config_dict,
        "seed": seed,
        "num_sets": int(num_sets),
        "sets_per_shard": per,
        "families": {str(k): int(v) for k, v in FAMILY_CODES.items()},
        "transforms": {str(k): int(v) for k, v in TRANSFORM_CODES.items()},
        "command": list(command) if command is not None else None,
    }


@contextlib.contextmanager
def _one_thread_env() -> Iterator[None]:
    """Temporarily set the thread-count environment (inherited by spawned workers)."""
    old = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update({k: "1" for k in _THREAD_ENV})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _torch_one_thread() -> Iterator[None]:
    """torch.set_num_threads(1) for the duration (no-op when torch is missing)."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_main_pid: int | None = None


def _main_alive() -> bool:
    """True while the process that started the pool lives (workers stop themselves
    otherwise: a killed `generate` must not leave workers writing shards)."""
    if _main_pid is None:
        return True
    try:
        os.kill(_main_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _init_worker(progress_queue: Any, main_pid: int | None = None) -> None:
    global _progress_queue, _main_pid
    _progress_queue = progress_queue
    _main_pid = main_pid
    if main_pid is not None:  # an idle worker blocks on the task queue: watch from a thread
        import threading

        def watch() -> None:
            while _main_alive():
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, name="main-watchdog", daemon=True).start()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def make_shard(config: Any, out_dir: str, index: int, start: int, stop: int, seed: int,
               stamp: dict) -> tuple[int, int, int, float]:
    """Draw sets ``[start, stop)``, write them as shard ``index``.

    Returns (index, number of sets, number of float32 values, CPU seconds). Reports
    each set to the progress queue when running inside a worker.
    """
    from metagen.tasks import draw_task

    cpu0 = time.process_time()
    sets = []
    num_values = 0
    for i in range(start, stop):
        if not _main_alive():
            os._exit(1)  # orphaned: the temporary shard directory is cleaned up on resume
        task = draw_task(config, seed, i)
        x, y = task.sample()
        sets.append((x, y, st.SetMeta(mi=float(task.mi), mi_stderr=float(task.mi_stderr),
                                      family=int(task.family_code),
                                      transform=int(task.transform_code), seed=int(task.seed))))
        num_values += x.size + y.size
        if _progress_queue is not None:
            _progress_queue.put(1)
    st.write_shard(out_dir, index, start, sets, stamp=stamp)
    return index, stop - start, num_values, time.process_time() - cpu0


class _BarQueue:
    """Stands in for the worker progress queue when generating in this process."""

    def __init__(self, bar: Any):
        self.bar = bar

    def put(self, count: int) -> None:
        self.bar.update(count)


@contextlib.contextmanager
def _in_process_progress(bar: Any) -> Iterator[None]:
    global _progress_queue
    old, _progress_queue = _progress_queue, _BarQueue(bar)
    try:
        yield
    finally:
        _progress_queue = old


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    # some pseudo-terminals report 0 columns, which makes tqdm print an empty bar
    try:
        ncols = None if os.get_terminal_size(sys.stderr.fileno()).columns > 0 else 100
    except (OSError, ValueError):
        ncols = None
    return tqdm(total=total, unit="sets", desc=desc, smoothing=0.05, ncols=ncols,
                nrows=None if ncols is None else 24,
                disable=not (enabled and sys.stderr.isatty()))


def _mp_context():
    """forkserver (preloading the generator's modules once) where available, else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        return ctx
    return mp.get_context("spawn")


def generate(
    config: Any,
    out_dir: str | os.PathLike,
    *,
    num_sets: int | None = None,
    seed: int | None = None,
    workers: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> GenerateResult:
    """Generate (or resume) this process's shards of a meta-dataset in ``out_dir``.

    config: a ``metagen.config.GeneratorConfig``; ``num_sets`` and ``seed`` override
    ``config.num_sets`` and ``config.seed``. The store has
    ceil(num_sets / config.sets_per_shard) shards; this call handles shards ``k`` with ``k % num_shards == shard_index``, skipping
    those already complete (their checksum is re-checked) and deleting stale
    temporary directories of its shards. ``workers`` processes (forkserver/spawn,
    one thread each) each generate whole shards; ``workers=1`` runs in this process
    (with torch limited to one thread). Writes ``manifest.json`` if all shards are
    complete at the end. ``command`` (e.g. ``sys.argv``) is recorded in the plan.
    Raises ValueError on bad arguments, StoreError if ``out_dir`` holds another plan.
    """
    t0 = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index} and {num_shards}")
    out = Path(out_dir)
    plan = make_plan(config, num_sets=num_sets, seed=seed, command=command)
    seed = plan["seed"]
    stamp = st.plan_stamp(plan)
    total_sets, per = plan["num_sets"], plan["sets_per_shard"]
    total_shards = st.num_shards_for(total_sets, per)
    st.write_plan(out, plan)

    mine = [k for k in range(total_shards) if k % num_shards == shard_index]
    st.remove_stale_tmp(out, mine)
    result = GenerateResult(out_dir=out, num_sets=total_sets, num_shards_total=total_shards)
    todo: list[tuple[int, int, int]] = []
    for k in mine:
        start, stop = st.shard_range(k, total_sets, per)
        if st.shard_complete(out, k, start, stop, stamp=stamp, check_data=True):
            result.shards_skipped.append(k)
        else:
            st.remove_shard(out, k)
            todo.append((k, start, stop))

    todo_sets = sum(stop - start for _, start, stop in todo)
    desc = f"metagen {shard_index}/{num_shards}" if num_shards > 1 else "metagen"
    with _progress_bar(todo_sets, progress, desc) as bar:
        if workers == 1 or len(todo) <= 1:
            with _torch_one_thread(), _in_process_progress(bar):
                for k, start, stop in todo:
                    _record(result, make_shard(config, str(out), k, start, stop, seed, stamp))
        else:
            _run_pool(config, out, todo, seed, stamp, min(workers, len(todo)), bar, result)

    result.manifest = st.write_manifest(out)
    result.seconds = time.perf_counter() - t0
    return result


def _record(result: GenerateResult, done: tuple[int, int, int, float]) -> None:
    k, count, num_values, cpu = done
    result.shards_written.append(k)
    result.sets_written += count
    result.values_written += num_values
    result.cpu_seconds += cpu


def _run_pool(config: Any, out: Path, todo: list[tuple[int, int, int]], seed: int, stamp: dict,
              workers: int, bar: Any, result: GenerateResult) -> None:
    """Generate the ``todo`` shards in ``workers`` processes, updating ``bar`` per set."""
    ctx = _mp_context()
    progress_queue = ctx.Queue()
    with _one_thread_env(), ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(progress_queue, os.getpid())
    ) as pool:
        pending: set[Future] = {
            pool.submit(make_shard, config, str(out), k, start, stop, seed, stamp)
            for k, start, stop in todo
        }
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                _drain(progress_queue, bar)
                for fut in done:
                    _record(result, fut.result())  # re-raises a worker's exception
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        _drain(progress_queue, bar)
    result.shards_written.sort()


def _drain(progress_queue: Any, bar: Any) -> None:
    count = 0
    with contextlib.suppress(queue_mod.Empty):
        while True:
            count += progress_queue.get_nowait()
    if count:
        bar.update(count)
