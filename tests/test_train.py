"""Tests of train.py and training/: config, schedule, batching, end to end, resume, errors.

The end-to-end tests run train.py in subprocesses (as a user would) on tiny stores made
with metagen.generate in a temporary directory and a tiny model.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = ROOT / "configs" / "train" / "tiny.toml"
GEN_CONFIG = ROOT / "configs" / "metagen" / "tiny.toml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
EVAL_KEYS = {"num_sets", "mae", "rmse", "bias", "pinball", "pinball_cal", "coverage_50", "width_50",
             "coverage_80", "width_80", "coverage_90", "width_90"}

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """A small training store and a validation store (different seeds) from metagen."""
    from metagen.config import load_config
    from metagen.generate import generate

    root = tmp_path_factory.mktemp("stores")
    cfg = load_config(GEN_CONFIG)
    generate(cfg, root / "train", num_sets=192, seed=11, progress=False)
    generate(cfg, root / "val", num_sets=32, seed=12, progress=False)
    return {"train": root / "train", "val": root / "val"}


def run_train(out_dir: Path, stores: dict, *extra: str, launcher: list[str] | None = None,
              timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = (launcher or [PY]) + [str(ROOT / "train.py"), "--config", str(TINY), "--out_dir", str(out_dir),
                                "--train_store", str(stores["train"]), "--val_id_store", str(stores["val"]), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def train_here(out_dir: Path, stores: dict, *extra: str) -> int:
    """train.main in this process (saves ~10 s of imports per run); accelerate's singletons reset first."""
    import train
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return train.main(["--config", str(TINY), "--out_dir", str(out_dir), "--train_store", str(stores["train"]),
                       "--val_id_store", str(stores["val"]), *extra])


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"


def check_checkpoint(path: Path, stores: dict) -> None:
    """The checkpoint loads and predicts finite, non-decreasing, non-negative quantiles."""
    from metagen.store import open_store
    from model.checkpoint import load_checkpoint
    from model.preprocess import prepare_batch

    model, meta = load_checkpoint(path)
    assert set(meta["limits"]) >= {"n_min", "n_max", "dx_max", "dy_max", "mi_max"}
    assert meta["calibration"] is not None and len(meta["calibration"]) == len(model.config.quantile_levels)
    store = open_store(stores["val"])
    batch = prepare_batch([store.get(i) for i in range(4)], model.config, None)
    model.eval()
    with torch.no_grad():
        q = model(batch)
    assert q.shape == (4, len(model.config.quantile_levels))
    assert torch.isfinite(q).all()
    assert (q >= 0).all()
    assert (q[:, 1:] >= q[:, :-1]).all()


# ----------------------------------------------------------------------------- unit tests
def test_lr_schedule_matches_warmup_then_cosine():
    from train import lr_at
    from training.config import TrainConfig

    cfg = TrainConfig(steps=110, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = np.array([lr_at(s, cfg) for s in range(cfg.steps)])
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10)          # linear warmup
    mid = 10 + 50                                                                  # half way down the cosine
    assert lrs[mid] == pytest.approx((1e-3 + 1e-4) / 2, rel=1e-9)
    assert lr_at(cfg.steps, cfg) == pytest.approx(1e-4)
    assert np.all(np.diff(lrs[10:]) <= 0) and lrs.min() >= 1e-4


def test_config_overrides_are_typed(tmp_path):
    from training.config import ConfigError, load_train_config

    cfg = load_train_config(TINY, ["--steps", "7", "--lr=0.5", "--min_lr", "0", "--out_dir", "123",
                                   "--model.dim", "24", "--model.use_knn", "false",
                                   "--model.quantile_levels", "0.1,0.5,0.9", "--calib_store", "none"], check_paths=False)
    assert (cfg.steps, cfg.lr, cfg.out_dir, cfg.calib_store) == (7, 0.5, "123", None)
    mcfg = cfg.model_config()
    assert isinstance(cfg.lr, float) and (mcfg.dim, mcfg.use_knn, mcfg.quantile_levels) == (24, False, (0.1, 0.5, 0.9))
    assert mcfg.heads == 2                                       # from the [model] table of tiny.toml
    with pytest.raises(ConfigError, match="divisible"):          # ModelConfig's own checks, one line
        load_train_config(TINY, ["--model.dim", "5"], check_paths=False)
    with pytest.raises(ConfigError, match="steps"):
        load_train_config(TINY, ["--steps", "1.5"], check_paths=False)
    with pytest.raises(ConfigError, match="unknown"):
        load_train_config(TINY, ["--model.no_such_field", "1"], check_paths=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('steps = "ten"\n')
    with pytest.raises(ConfigError, match="steps"):
        load_train_config(bad, [], check_paths=False)


@pytest.mark.parametrize("extra, needle", [
    (["--no_such_key", "1"], "unknown config key"),
    (["--steps", "many"], "steps"),
    (["--model.no_such_field", "3"], "unknown model key"),
    (["--val_id_store", "/nonexistent/store"], "does not exist"),
    (["--train_store", "/nonexistent/store"], "does not exist; build stores with `python -m metagen generate`"),
    (["--init-from", "/nonexistent/model.safetensors"], "does not exist"),
])
def test_config_errors_return_2_with_one_line(stores, tmp_path, capsys, extra, needle):
    assert train_here(tmp_path / "run", stores, *extra) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "run").exists()                   # nothing started


def test_damaged_store_is_a_config_error(stores, tmp_path, capsys):
    fake = tmp_path / "not_a_store"
    fake.mkdir()
    assert train_here(tmp_path / "run", stores, "--val_id_store", str(fake)) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.py: error:" in lines[0], lines


def test_cli_exit_code_2_without_traceback(stores, tmp_path):
    proc = run_train(tmp_path / "run", stores, "--no_such_key", "1", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_draw_rows_bounds_and_log_uniform():
    from training.data import draw_rows

    rng = np.random.default_rng(0)
    draws = np.array([draw_rows(rng, 1000, 10, 1000) for _ in range(4000)])
    assert draws.min() >= 10 and draws.max() <= 1000
    # log-uniform: about half of the draws below the geometric midpoint sqrt(10 * 1000) = 100
    assert abs(np.mean(draws < 100) - 0.5) < 0.04
    assert draw_rows(rng, 7, 10, 1000) == 7            # smallest set below n_train_min: use all its rows
    assert all(draw_rows(rng, 50, 10, 1000) <= 50 for _ in range(100))


def test_store_batches_are_bucketed_disjoint_and_pure(stores):
    from metagen.store import open_store
    from model.network import ModelConfig
    from training.config import TrainConfig
    from training.data import StoreBatches

    store = open_store(stores["train"])
    cfg = TrainConfig(batch_size=8, bucket_sets=32, n_train_min=8, n_train_max=64, seed=3)
    mcfg = ModelConfig()
    parts = [StoreBatches(str(stores["train"]), cfg, mcfg, p, 2) for p in range(2)]
    seen = [set(), set()]
    for p, ds in enumerate(parts):
        epoch = [ds.indices(m) for m in range(ds.batches_per_epoch)]
        flat = np.concatenate(epoch)
        assert len(set(flat.tolist())) == len(flat)                 # each set at most once per epoch
        assert np.all(flat % 2 == p)                                # process p owns sets p, p+2, ...
        seen[p] = set(flat.tolist())
        d = store.dx + store.dy
        bucket_of = {int(i): b for b, bucket in enumerate(ds.buckets) for i in bucket}
        assert all(len({bucket_of[int(i)] for i in batch}) == 1 for batch in epoch)   # one dx+dy bucket
        spread = [int(d[b].max() - d[b].min()) for b in epoch]
        assert np.mean(spread) <= max(1, int(d.max() - d.min()))
        assert not np.array_equal(ds.indices(0), ds.indices(ds.batches_per_epoch))   # reshuffled per epoch
    assert not seen[0] & seen[1]
    a, b = parts[0][5], StoreBatches(str(stores["train"]), cfg, mcfg, 0, 2)[5]      # pure in (seed, m, p)
    assert a.n == b.n and np.array_equal(a.mi, b.mi) and torch.equal(a.target_t, b.target_t)
    assert torch.equal(a.batch.rows, b.batch.rows)
    idx = parts[0].indices(5)
    assert np.allclose(a.mi, store.mi[idx]) and np.allclose(a.target_t.numpy(), np.log1p(store.mi[idx]), atol=1e-6)
    assert 8 <= a.n <= min(64, int(store.n[idx].min())) or a.n == int(store.n[idx].min())
    assert int(a.batch.n.max()) == a.n and int(a.batch.n.min()) == a.n       # one shared n' per batch


def test_rotate_block_is_an_invertible_map_with_the_same_mi():
    """rotate_block: normal scores times an orthogonal matrix (Haar: a fresh one per call), so
    the rotated block maps back to the normal scores exactly; a KSG-free check of the MI claim:
    for a Gaussian pair the canonical correlations (which fix the MI) are unchanged."""
    from model.preprocess import canonical_correlations, normal_scores
    from training.data import rotate_block

    rng = np.random.default_rng(0)
    n, dx, dy = 4000, 3, 2
    x = rng.normal(size=(n, dx))
    y = 0.8 * x[:, :dy] + 0.6 * rng.normal(size=(n, dy))
    r1, r2 = rotate_block(x, np.random.default_rng(5)), rotate_block(x, np.random.default_rng(5))
    np.testing.assert_array_equal(r1, r2)                               # pure in its generator
    z = normal_scores(x)
    q = np.linalg.lstsq(z, r1, rcond=None)[0]                           # r1 = z @ q exactly
    np.testing.assert_allclose(z @ q, r1, atol=1e-9)
    np.testing.assert_allclose(q.T @ q, np.eye(dx), atol=1e-9)          # orthogonal
    assert not np.allclose(q, np.eye(dx), atol=0.1)                     # and not the identity
    ry = rotate_block(y, rng)
    np.testing.assert_allclose(np.sort(canonical_correlations(r1, ry)), np.sort(canonical_correlations(z, normal_scores(y))),
                               atol=1e-8)
    one = rng.normal(size=(50, 1))
    assert rotate_block(one, rng) is one                                # 1 column: unchanged


def test_augmentations_change_only_the_inputs_and_are_pure(stores):
    """rotate_fraction and col_stats_dropout: targets untouched, the chosen share of sets changed,
    and the same batch again for the same (seed, m)."""
    from model.network import ModelConfig
    from training.config import ConfigError, TrainConfig
    from training.data import StoreBatches

    mcfg = ModelConfig(use_col_stats=True)
    base = dict(batch_size=32, n_train_min=8, n_train_max=64, seed=3)
    plain = StoreBatches(str(stores["train"]), TrainConfig(**base), mcfg)
    rot = StoreBatches(str(stores["train"]), TrainConfig(**base, rotate_fraction=1.0), mcfg)
    drop = StoreBatches(str(stores["train"]), TrainConfig(**base, col_stats_dropout=0.5), mcfg)
    for m in (0, 3):
        a, r, d = plain[m], rot[m], drop[m]
        assert torch.equal(a.target_t, r.target_t) and torch.equal(a.target_t, d.target_t)
        assert torch.equal(a.batch.rows, d.batch.rows)                  # dropout leaves the rows alone
        multi = (a.dx > 1) | (a.dy > 1)
        assert multi.any()
        assert not torch.equal(a.batch.rows, r.batch.rows)              # rotated sets look different
        zeroed = (d.batch.cols.abs().sum(dim=(1, 2)) == 0).numpy()
        kept = (a.batch.cols.abs().sum(dim=(1, 2)) > 0).numpy()
        assert 0 < (zeroed & kept).sum() < kept.sum()                   # some, not all, sets lose their features
        assert torch.equal(d.batch.cols[~torch.from_numpy(zeroed)], a.batch.cols[~torch.from_numpy(zeroed)])
        again = StoreBatches(str(stores["train"]), TrainConfig(**base, rotate_fraction=1.0), mcfg)[m]
        assert torch.equal(again.batch.rows, r.batch.rows)              # pure in (seed, m)
    for name in ("rotate_fraction", "col_stats_dropout"):
        with pytest.raises(ConfigError, match=name):
            TrainConfig(**{name: 1.5}, train_store=str(stores["train"]), val_id_store=str(stores["val"])).validate()


def test_n_weight_power_repeats_large_n_sets(stores):
    """n_weight_power p: every set comes max(1, round((n / 100) ** p)) times per epoch (counted
    from the epoch's batches, not from n_repeats), each batch still one dims bucket; 0: once."""
    from model.network import ModelConfig
    from training.config import ConfigError, TrainConfig
    from training.data import StoreBatches

    base = dict(batch_size=4, bucket_sets=100_000, n_train_min=8, n_train_max=64, seed=5)   # one bucket
    plain = StoreBatches(str(stores["train"]), TrainConfig(**base), ModelConfig())
    heavy = StoreBatches(str(stores["train"]), TrainConfig(**base, n_weight_power=1.0), ModelConfig())
    n = plain.n
    assert n.min() < 150 and n.max() > 250                      # the tiny store spans several repeat counts
    seen_plain = np.bincount(np.concatenate(plain.epoch_batches(0)), minlength=len(n))
    seen = np.bincount(np.concatenate(heavy.epoch_batches(0)), minlength=len(n))
    assert seen_plain.max() == 1 and seen_plain.sum() > len(n) - 4   # < batch_size sets left over
    expect = np.maximum(1, np.floor(n / 100 + 0.5)).astype(int)
    clear = n % 100 != 50                                       # away from a rounding tie
    assert np.abs(seen - expect)[clear].sum() <= 3 and seen.sum() > expect.sum() - 4
    assert seen[n >= 250].min() >= 2 and seen[n < 150].max() == 1
    for cfg in (dict(n_weight_power=-0.5), dict(n_weight_power=3.0)):
        with pytest.raises(ConfigError, match="n_weight_power"):
            TrainConfig(**cfg, train_store=str(stores["train"]), val_id_store=str(stores["val"])).validate()
    with pytest.raises(ConfigError, match="n_weight_power"):
        TrainConfig(n_weight_power=0.5, stream_config=str(GEN_CONFIG), val_id_store=str(stores["val"])).validate()


def test_stream_batches_are_fresh_and_pure():
    from model.network import ModelConfig
    from training.config import TrainConfig
    from training.data import StreamBatches

    cfg = TrainConfig(batch_size=4, stream_pool=3, n_train_min=8, n_train_max=32, seed=1)
    ds = StreamBatches(str(GEN_CONFIG), cfg, ModelConfig(), 0, 2)
    other = StreamBatches(str(GEN_CONFIG), cfg, ModelConfig(), 1, 2)
    seeds = [{t.seed for t in ds.tasks(m)} for m in range(6)] + [{t.seed for t in other.tasks(m)} for m in range(3)]
    assert all(len(s) == 4 for s in seeds)
    assert len(set().union(*seeds)) == 36                          # every batch of every process is fresh
    group = ds.group_tasks(0)                                      # micro-batches 0..2: one group
    assert sorted(t.index for t in group) == sorted(t.index for m in range(3) for t in ds.tasks(m))
    assert sorted(s for m in range(3) for s in [t.seed for t in ds.tasks(m)]) == sorted(t.seed for t in group)
    a, b = ds[2], StreamBatches(str(GEN_CONFIG), cfg, ModelConfig(), 0, 2)[2]
    assert a.n == b.n and torch.equal(a.batch.rows, b.batch.rows)
    assert np.allclose(a.mi, [t.mi for t in ds.tasks(2)])


def test_stream_groups_are_bucketed_by_dims_then_by_n():
    """A streamed group is cut like a store's epoch: buckets of bucket_sets by dx + dy,
    each sorted by log n + a jitter in [0, 0.5), so a batch's n' (its smallest n) stays
    close to its sets' own n instead of the smallest of B random draws."""
    from model.network import ModelConfig
    from training.config import TrainConfig
    from training.data import StreamBatches

    cfg = TrainConfig(batch_size=4, stream_pool=6, bucket_sets=12, n_train_min=8, n_train_max=300, seed=2,
                      n_train_full_fraction=1.0)
    ds = StreamBatches(str(GEN_CONFIG), cfg, ModelConfig(), 0, 1)
    group = ds.group_tasks(0)
    batches = [group[i:i + 4] for i in range(0, 24, 4)]
    buckets = [batches[:3], batches[3:]]                            # 12 sets = 3 batches per bucket
    assert max(t.dx + t.dy for b in buckets[0] for t in b) <= min(t.dx + t.dy for b in buckets[1] for t in b)
    for bucket in buckets:
        for lower, upper in zip(bucket, bucket[1:]):
            assert min(math.log(t.n) for t in upper) >= max(math.log(t.n) for t in lower) - 0.5
    # against the same tasks batched by dims alone (the old cut): larger n' per batch
    by_dims = sorted(group, key=lambda t: t.dx + t.dy)
    old_n = np.mean([min(t.n for t in by_dims[i:i + 4]) for i in range(0, 24, 4)])
    new_n = np.mean([min(t.n for t in b) for b in batches])
    assert new_n > old_n
    served = [ds[m].n for m in range(6)]                            # full_fraction 1: n' = the batch's smallest n
    assert sorted(served) == sorted(min(300, min(t.n for t in b)) for b in batches)


def test_stream_limits_cover_every_drawn_task():
    """A streamed run's checkpoint limits come from the metagen config, not from the
    batches seen (a short run saw n' <= 492 of a config reaching 2,000, and inference
    subsamples inputs to n_max): every drawn task must lie inside them, and n_max must be
    reached by the config's own range."""
    from metagen.config import load_config
    from metagen.tasks import draw_task
    from train import stream_limits
    from training.config import TrainConfig

    gen = load_config(str(GEN_CONFIG))
    for n_train_max in (100, 10_000):
        lim = stream_limits(gen, TrainConfig(n_train_min=8, n_train_max=n_train_max))
        tasks = [draw_task(gen, 5, i) for i in range(300)]
        assert all(lim["n_min"] <= min(t.n, n_train_max) for t in tasks)
        assert lim["n_max"] == min(n_train_max, max(gen.n.max, gen.n.tail_max or 0))
        assert max(t.dx for t in tasks) <= lim["dx_max"] and max(t.dy for t in tasks) <= lim["dy_max"]
        assert lim["mi_min"] == 0.0 and max(t.mi for t in tasks) <= lim["mi_max"] + 1e-9
        assert max(t.n for t in tasks) > 0.8 * gen.n.max           # the range is reached, not invented


def test_streamed_run_end_to_end_with_two_workers(stores, tmp_path):
    """train.py on fresh streamed sets (2 loader workers, worker_order): it finishes,
    exports a loadable checkpoint, and records the config's range as its limits."""
    from model.checkpoint import load_checkpoint

    out = tmp_path / "stream"
    assert train_here(out, stores, "--train_store", "none", "--stream_config", str(GEN_CONFIG), "--steps", "6",
                      "--eval_every", "6", "--save_every", "6", "--num_workers", "2", "--stream_pool", "3",
                      "--batch_size", "4") == 0
    _, meta = load_checkpoint(str(out / "last.safetensors"))
    assert meta["limits"]["n_max"] == 128 and meta["limits"]["dx_max"] == 6   # tiny.toml: n <= 300, dims <= 6
    assert [r["step"] for r in read_metrics(out) if r["kind"] == "eval"] == [6]
    check_checkpoint(out / "last.safetensors", stores)
    # a streamed checkpoint from before the fix (limits = the batches' extremes) is repaired when shipped
    from model.checkpoint import save_checkpoint
    model, meta = load_checkpoint(str(out / "last.safetensors"))
    old = tmp_path / "old.safetensors"
    save_checkpoint(str(old), model, limits={**meta["limits"], "n_max": 40}, calibration=None, info=meta["info"])
    shipped = tmp_path / "shipped.safetensors"
    r = subprocess.run([PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(old), "--out", str(shipped)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(str(shipped))[1]["limits"]["n_max"] == 128 and "its config's range" in r.stderr


@pytest.mark.parametrize("workers,group", [(1, 8), (3, 1), (3, 4), (4, 3)])
def test_worker_order_is_a_permutation_that_keeps_groups_on_one_worker(workers, group):
    from training.data import worker_order

    window = max(1, workers) * group
    for start in (0, 5, 2 * window):                 # a resumed loader starts anywhere
        served = [worker_order(p, workers, group) for p in range(start, start + 3 * window)]
        whole = range(start - start % window, start - start % window + 3 * window)
        assert len(set(served)) == len(served) and set(served) <= set(range(whole.start, whole.stop + window))
        if start % window == 0:
            assert sorted(served) == list(whole)     # whole windows: exactly these batches
        for w in range(workers):                     # what loader worker w serves (k % workers == w)
            mine = served[w::workers]
            per_window = {}
            for m in mine:
                per_window.setdefault((m // window), set()).add(m // group)
            assert all(len(groups) == 1 for groups in per_window.values())   # one drawing group each
    if workers == 1 or group == 1:
        assert [worker_order(p, workers, group) for p in range(20)] == list(range(20))


def test_stream_loader_with_workers_draws_each_group_once(monkeypatch):
    """Two workers, pool 3: the loader serves micro-batches 0..11 once each, and each
    worker's dataset copy draws each of its groups once (counted in the batches it returns)."""
    from model.network import ModelConfig
    from training.config import TrainConfig
    from training.data import StreamBatches, make_loader

    class Counting(StreamBatches):
        def __getitem__(self, m):
            fresh = self._group_cache is None or self._group_cache[0] != int(m) // self.pool
            tb = super().__getitem__(m)
            tb.fingerprint = f"{m}:{int(fresh)}"
            return tb

    cfg = TrainConfig(batch_size=2, stream_pool=3, n_train_min=8, n_train_max=16, seed=3)
    ds = Counting(str(GEN_CONFIG), cfg, ModelConfig(), 0, 1)
    got = [tb.fingerprint.split(":") for tb in make_loader(ds, 0, 12, 2)]
    served = [int(m) for m, _ in got]
    assert sorted(served) == list(range(12)) and served != list(range(12))
    assert sum(int(fresh) for _, fresh in got) == 12 // 3                  # 4 groups, 4 draws
    ref = StreamBatches(str(GEN_CONFIG), cfg, ModelConfig(), 0, 1)
    assert [np.allclose(tb.mi, ref[int(m)].mi) for tb, (m, _) in zip(make_loader(ds, 0, 12, 2), got)] == [True] * 12


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_loss_falls_and_checkpoint_loads(stores, tmp_path):
    out = tmp_path / "run"
    assert train_here(out, stores, "--steps", "40", "--log_every", "1", "--eval_every", "20", "--save_every", "20",
                      "--val_ood_store", str(stores["val"])) == 0
    records = read_metrics(out)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40]
    for r in evals:
        assert set(r["val_id"]) >= EVAL_KEYS
        assert 0.0 <= r["val_id"]["coverage_90"] <= 1.0 and r["val_id"]["width_90"] >= r["val_id"]["width_50"] >= 0
        assert r["val_id"]["num_sets"] == 16                        # the odd half of 32 validation sets
        assert set(r["val_ood"]) >= EVAL_KEYS and r["val_ood"]["num_sets"] == 32
    for name in ("best.safetensors", "last.safetensors", "evals/step-00000020.safetensors",
                 "evals/step-00000040.safetensors"):
        check_checkpoint(out / name, stores)
    assert sorted(p.name for p in (out / "evals").iterdir()) == ["step-00000020.safetensors", "step-00000040.safetensors"]
    from model.checkpoint import load_checkpoint

    assert [load_checkpoint(out / "evals" / f"step-{s:08d}.safetensors")[1]["info"]["step"] for s in (20, 40)] == [20, 40]

    best, meta = load_checkpoint(out / "best.safetensors")
    assert meta["info"]["step"] in (20, 40) and meta["limits"]["n_max"] <= 128
    # --init-from: continue from those weights (the checkpoint's model config wins over --model.*)
    again = tmp_path / "again"
    assert train_here(again, stores, "--init-from", str(out / "best.safetensors"), "--steps", "2",
                      "--eval_every", "2", "--model.inducing", str(best.config.inducing + 2)) == 0
    cont, cont_meta = load_checkpoint(again / "last.safetensors")
    assert cont.config == best.config
    assert not all(torch.equal(a, b) for a, b in zip(best.state_dict().values(), cont.state_dict().values()))
    # the lineage counts the earlier run's steps, and a chain of continued runs adds up
    assert cont_meta["info"]["init_from"] == {"path": str(out / "best.safetensors"), "fingerprint": meta["fingerprint"],
                                              "steps_before": meta["info"]["step"]}
    third = tmp_path / "third"
    # ... and may change the input switches (here: drop the kNN statistics), add row and
    # cell layers and the nonlinear-dependence and raw-value statistics, nothing else of the architecture
    assert train_here(third, stores, "--init-from", str(again / "last.safetensors"), "--steps", "1",
                      "--eval_every", "1", "--model.use_knn", "false",
                      "--model.row_layers", str(best.config.row_layers + 1),
                      "--model.cell_layers", str(best.config.cell_layers + 1), "--model.use_nonlinear_stats", "true",
                      "--model.use_raw_stats", "true") == 0
    third_model, third_meta = load_checkpoint(third / "last.safetensors")
    assert third_meta["info"]["init_from"]["steps_before"] == meta["info"]["step"] + 2
    assert not third_model.config.use_knn and third_model.config.dim == best.config.dim
    assert third_model.config.row_layers == best.config.row_layers + 1
    assert third_model.config.cell_layers == best.config.cell_layers + 1
    assert third_model.config.use_nonlinear_stats and not best.config.use_nonlinear_stats
    assert third_model.config.use_raw_stats and not best.config.use_raw_stats
    # ... and widen it (a multiple of its dim: model.network.widen); any other dim is an error
    wide = tmp_path / "wide"
    assert train_here(wide, stores, "--init-from", str(out / "best.safetensors"), "--steps", "1",
                      "--eval_every", "1", "--model.dim", str(2 * best.config.dim)) == 0
    wide_model, _ = load_checkpoint(wide / "last.safetensors")
    assert wide_model.config == dataclasses.replace(best.config, dim=2 * best.config.dim)
    assert train_here(tmp_path / "odd", stores, "--init-from", str(out / "best.safetensors"), "--steps", "1",
                      "--model.dim", str(best.config.dim + 2)) == 2
    # --train_only: only the named parameters move (here the head, refit on the nonlinear statistics)
    head = tmp_path / "head"
    assert train_here(head, stores, "--init-from", str(out / "best.safetensors"), "--steps", "2", "--eval_every", "2",
                      "--lr", "1e-2", "--train_only", "head.", "--model.use_nonlinear_stats", "true") == 0
    refit, _ = load_checkpoint(head / "last.safetensors")
    assert refit.config.use_nonlinear_stats
    before, after = best.state_dict(), refit.state_dict()
    moved = {k for k in after if after[k].shape != before[k].shape or not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith("head.") for k in moved), moved
    assert train_here(tmp_path / "nohead", stores, "--init-from", str(out / "best.safetensors"), "--steps", "1",
                      "--train_only", "heads.") == 2


def test_ship_checkpoint_calibrates_and_switches_knn_rows(stores, tmp_path):
    """scripts/ship_checkpoint.py on a briefly trained run: conformal offsets refit on a store,
    n_max widened, kNN reference rows changed; the result is what infer then uses."""
    import infer
    from metagen.store import open_store
    from model.checkpoint import load_checkpoint

    assert train_here(tmp_path / "run", stores, "--steps", "4", "--eval_every", "4") == 0
    src = tmp_path / "run" / "best.safetensors"
    out = tmp_path / "shipped.safetensors"
    r = subprocess.run([PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(src), "--out", str(out),
                        "--calib-store", str(stores["train"]), "--max-sets", "64", "--n-max", "3000", "--knn-rows", "64"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    model, meta = load_checkpoint(out)
    trained, trained_meta = load_checkpoint(src)
    assert model.config.knn_rows == 64 and meta["info"]["knn_rows_trained"] == trained.config.knn_rows == 128
    assert meta["limits"]["n_max"] == 3000 and meta["limits"]["n_max_trained"] == trained_meta["limits"]["n_max"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    # on the calibration sets (not the run's own validation store), each level above the median now
    # covers at least that fraction of the truths and each level below at most (+ 1/N): every central
    # interval covers at least its nominal share
    store = open_store(stores["train"])
    levels = np.asarray(model.config.quantile_levels)
    sets = [store.get(i) for i in range(64)]
    q = infer.predict_mi_quantiles_batch(sets, list(levels), checkpoint=out, on_out_of_range="ignore")  # (N, Q) nats
    covered = (store.mi[:64, None] <= q + 1e-9).mean(axis=0)
    below = (store.mi[:64, None] < q - 1e-9).mean(axis=0)   # strict: MI = 0 sets tie with a bound clipped at 0
    assert np.all(covered[levels > 0.5] >= levels[levels > 0.5] - 1e-9), covered
    assert np.all(below[levels < 0.5] <= levels[levels < 0.5] + 1 / 64 + 1e-9), below
    assert meta["info"]["calibration_store"]["groups"] == "dims"
    # robust over transform kinds too: a superset of groups, so every central interval is at least as wide
    geo = tmp_path / "shipped-geo.safetensors"
    r = subprocess.run([PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(src), "--out", str(geo),
                        "--calib-store", str(stores["train"]), "--max-sets", "64", "--n-max", "3000", "--knn-rows", "64",
                        "--calib-groups", "dims+geometry"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "transform geometric" in r.stdout or "transform     other" in r.stdout
    _, geo_meta = load_checkpoint(geo)
    wide, narrow = np.asarray(geo_meta["calibration"]), np.asarray(meta["calibration"])
    assert geo_meta["info"]["calibration_store"]["groups"] == "dims+geometry"
    assert np.all(wide[levels > 0.5] >= narrow[levels > 0.5]) and np.all(wide[levels < 0.5] <= narrow[levels < 0.5])
    # --knn-quantize switches the kNN distances to int16-rounded scores; the weights stay, the switch is recorded
    quant = tmp_path / "shipped-quant.safetensors"
    r = subprocess.run([PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(out), "--out", str(quant),
                        "--knn-quantize", "true"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    qmodel, qmeta = load_checkpoint(quant)
    assert qmodel.config.knn_quantize and not model.config.knn_quantize
    assert qmeta["info"]["knn_quantize_trained"] is False
    assert all(torch.equal(a, b) for a, b in zip(qmodel.state_dict().values(), model.state_dict().values()))


def test_ship_checkpoint_fits_offsets_per_n_range_on_pooled_stores(stores, tmp_path):
    """--calib-n-edges: one row of offsets per n range, each fitted on that range's sets of the
    pooled --calib-store's; infer picks the row by n, so every range is covered at least nominally."""
    import infer
    from metagen.store import open_store
    from model.checkpoint import load_checkpoint

    assert train_here(tmp_path / "run", stores, "--steps", "4", "--eval_every", "4") == 0
    src, out = tmp_path / "run" / "best.safetensors", tmp_path / "by-n.safetensors"
    pool = [open_store(stores["train"]), open_store(stores["val"])]
    sets = [st.get(i) for st in pool for i in range(len(st))]
    mi = np.concatenate([st.mi[: len(st)] for st in pool])
    n = np.array([x.shape[0] for x, _ in sets])  # <= n_max 3000: no subsampling
    edge = int(np.median(n))
    assert min((n <= edge).sum(), (n > edge).sum()) >= 100  # the fixture stores allow two ranges
    ship = [PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(src), "--n-max", "3000",
            "--calib-store", str(stores["train"]), "--calib-store", str(stores["val"])]
    r = subprocess.run(ship + ["--out", str(out), "--calib-n-edges", str(edge)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert f"n > {edge}: {(n > edge).sum():5d} sets" in r.stdout   # ranges printed by their bounds
    _, meta = load_checkpoint(out)
    levels = np.asarray(meta["config"]["quantile_levels"])
    assert np.asarray(meta["calibration"]).shape == (2, levels.size) and meta["calibration_n_edges"] == [edge]
    used = meta["info"]["calibration_store"]
    assert used["n_edges"] == [edge] and [u["sets"] for u in used["stores"]] == [len(st) for st in pool]
    q = infer.predict_mi_quantiles_batch(sets, list(levels), checkpoint=out, on_out_of_range="ignore")  # (N, Q)
    for sel in (n <= edge, n > edge):
        covered = (mi[sel, None] <= q[sel] + 1e-9).mean(axis=0)
        assert np.all(covered[levels > 0.5] >= levels[levels > 0.5] - 1e-9), covered
    # documented errors: a range with too few calibration sets, edges that do not increase
    r = subprocess.run(ship + ["--out", str(tmp_path / "x.safetensors"), "--calib-n-edges", str(int(n.max()) - 1)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and "need at least 100" in r.stderr
    r = subprocess.run(ship + ["--out", str(tmp_path / "x.safetensors"), "--calib-n-edges", "500,100"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and "strictly increasing" in r.stderr
    # --calib-upper-tail / --calib-central-robust: recorded, and above the edge the upper levels
    # cover at least 1 - K (1 - tau) of the calibration sets
    tailed = tmp_path / "tailed.safetensors"
    r = subprocess.run(ship + ["--out", str(tailed), "--calib-n-edges", str(edge), "--calib-upper-tail", "0.7",
                               "--calib-central-robust", "0.5", "--calib-tail-robust", "0.5"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    _, tmeta = load_checkpoint(tailed)
    assert tmeta["info"]["calibration_store"]["upper_tail"] == 0.7
    assert tmeta["info"]["calibration_store"]["central_robust"] == 0.5
    assert tmeta["info"]["calibration_store"]["tail_robust"] == 0.5
    q = infer.predict_mi_quantiles_batch(sets, list(levels), checkpoint=tailed, on_out_of_range="ignore")
    covered = (mi[n > edge, None] <= q[n > edge] + 1e-9).mean(axis=0)
    tail = levels >= 0.9
    assert np.all(covered[tail] >= 1 - 0.7 * (1 - levels[tail]) - 1e-9), covered
    # scripts/calibration_study.py fits the same scheme in numpy: its coverage of the val store is
    # what the shipped checkpoint's intervals, made by infer, cover there
    from eval.metrics import interval_scores
    study = tmp_path / "study.json"
    r = subprocess.run([PY, str(ROOT / "scripts" / "calibration_study.py"), "--checkpoint", str(src),
                        "--calib-store", str(stores["train"]), "--calib-store", str(stores["val"]),
                        "--val", str(stores["val"]), "--n-edges", str(edge), "--central-robust", "1,0.5",
                        "--tail-robust", "1,0.5", "--upper-tail", "0.7", "--work", str(tmp_path / "study"), "--out", str(study)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    schemes = json.loads(study.read_text())
    assert len(schemes) == 4 and [s["outside"] for s in schemes] == sorted(s["outside"] for s in schemes)
    mine = next(s for s in schemes if s["central_robust"] == 0.5 and s["tail_robust"] == 0.5)
    mine = mine["stores"][Path(stores["val"]).name]
    val = np.arange(len(pool[0]), len(sets))  # the val store's sets, after the train store's
    for cov in (0.5, 0.9):
        inside, width = interval_scores(levels, q[val], mi[val], cov)
        assert abs(mine[str(int(cov * 100))] - inside) < 1e-9
    assert abs(mine["width90"] - width) < 1e-3 * max(1.0, width)  # float32 network outputs, batched differently
    # its per-family MAE and per-MI-bin bias are those of infer's medians (to 0.01 nats: float32
    # outputs batched differently, and offsets stored in the checkpoint)
    from eval.metrics import mi_bin
    from metagen.store import open_store
    vs = open_store(stores["val"])
    fam = np.array([vs.family_names[int(c)] for c in vs.family])
    err = q[val, list(levels).index(0.5)] - mi[val]
    assert sum(c["sets"] for c in mine["per_family"].values()) == len(val)
    for f, c in mine["per_family"].items():
        assert abs(c["mae"] - np.abs(err[fam == f]).mean()) < 0.01, f
    bins = np.array([mi_bin(float(v)) for v in mi[val]])
    assert set(mine["bias_by_mi"]) == set(bins)
    for b, c in mine["bias_by_mi"].items():
        assert c["sets"] == (bins == b).sum() and abs(c["bias"] - err[bins == b].mean()) < 0.01, b
    for bad, msg in ((["--calib-upper-tail", "0.7"], "needs --calib-n-edges"),
                     (["--calib-n-edges", str(edge), "--calib-upper-tail", "0"], "must lie in (0, 1]"),
                     (["--calib-central-robust", "2"], "must lie in [0, 1]"),
                     (["--calib-tail-robust", "-0.5"], "--calib-tail-robust must lie in [0, 1]")):
        r = subprocess.run(ship + ["--out", str(tmp_path / "x.safetensors")] + bad,
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
        assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_select_checkpoint_ships_and_scores_every_candidate(stores, tmp_path):
    """scripts/select_checkpoint.py on a briefly trained run's validated checkpoints: each is
    calibrated as ship_checkpoint would, scored by the harness on the validation store, and the
    table's numbers are those of the harness run on the prepared checkpoint (candidates scored
    in two processes: each result lands under its own candidate)."""
    assert train_here(tmp_path / "run", stores, "--steps", "4", "--eval_every", "2") == 0
    cands = [str(tmp_path / "run" / "evals" / f"step-{s:08d}.safetensors") for s in (2, 4)]
    work = tmp_path / "select"
    r = subprocess.run([PY, str(ROOT / "scripts" / "select_checkpoint.py"), *cands, "--calib-store", str(stores["train"]),
                        "--val", str(stores["val"]), "--work", str(work), "--ship-args", "--max-sets 48", "--jobs", "2"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sel = json.loads((work / "selection.json").read_text())
    assert sorted(sel["order"]) == sorted(cands) and f"chosen: {sel['order'][0]}" in r.stdout
    for i, c in enumerate(cands):
        res = json.loads((work / f"candidate-{i}" / stores["val"].name / "results.json").read_text())
        overall = res["estimators"]["model"]["overall"]
        assert sel["scores"][c][stores["val"].name]["mae"] == overall["mae"] and res["num_sets"] == overall["count"]
        assert f"{overall['mae']:.3f}" in [line for line in r.stdout.splitlines() if line.startswith(f"| {c} ")][0]
        from model.checkpoint import load_checkpoint
        _, meta = load_checkpoint(work / f"candidate-{i}.safetensors")
        assert meta["calibration"] is not None and meta["info"]["calibration_store"]["sets"] == 48


def test_resume_continues_with_the_same_batches(stores, tmp_path):
    common = ("--steps", "12", "--save_every", "4", "--eval_every", "100", "--log_every", "1", "--log_batch_hash", "true")
    full, part = tmp_path / "full", tmp_path / "part"
    assert train_here(full, stores, *common) == 0
    assert train_here(part, stores, *common, "--max-steps-this-run", "6") == 0
    states = sorted(p.name for p in (part / "states").iterdir())
    assert states == ["step-00000004", "step-00000006"]
    # pretend the run was killed after step 6 but before its state at 6 was written
    import shutil
    shutil.rmtree(part / "states" / "step-00000006")
    assert train_here(part, stores, *common, "--resume") == 0
    ref = {r["micro"]: r for r in read_metrics(full) if r["kind"] == "batch"}
    got = [r for r in read_metrics(part) if r["kind"] == "batch"]
    first, resumed = got[:6], got[6:]
    assert [r["micro"] for r in resumed] == list(range(4, 12))    # continued from the saved step 4
    for r in first + resumed:
        assert r["hash"] == ref[r["micro"]]["hash"]                  # same data order as uninterrupted
        assert r["loss"] == pytest.approx(ref[r["micro"]]["loss"], rel=1e-5, abs=1e-6)
    assert (part / "last.safetensors").is_file()


def test_sigterm_saves_state_and_exits(stores, tmp_path):
    """SIGTERM (SLURM preemption) mid-run: the step finishes, its state is saved, main returns 0."""
    out = tmp_path / "run"
    sent = threading.Event()

    def send_when_running():
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "metrics.jsonl").is_file() and len(read_metrics(out)) >= 3:
                os.kill(os.getpid(), signal.SIGTERM)
                sent.set()
                return
            time.sleep(0.05)

    previous = signal.getsignal(signal.SIGTERM)
    watcher = threading.Thread(target=send_when_running, daemon=True)
    watcher.start()
    rc = train_here(out, stores, "--steps", "100000", "--save_every", "100000", "--eval_every", "100000",
                    "--log_every", "1")
    watcher.join()
    assert sent.is_set() and rc == 0
    assert signal.getsignal(signal.SIGTERM) is previous          # handlers restored
    logged = max(r["step"] for r in read_metrics(out) if r["kind"] == "train")
    states = [p.name for p in (out / "states").iterdir()]
    assert states == [f"step-{logged:08d}"], (states, logged)
    assert json.loads((out / "states" / states[0] / "train_state.json").read_text())["step"] == logged


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate_launch(stores, tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.x: `--cpu --num_processes 2` starts one process (it wants mpirun); the torchrun
    # launcher (--multi_gpu) starts two, and train.py uses gloo on a machine without GPU
    launcher = [str(Path(PY).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = run_train(out, stores, "--steps", "8", "--eval_every", "8", "--save_every", "4", launcher=launcher,
                     timeout=300)
    check_ok(proc)
    check_checkpoint(out / "best.safetensors", stores)
    check_checkpoint(out / "last.safetensors", stores)
    assert [p.name for p in sorted((out / "states").iterdir())] == ["step-00000004", "step-00000008"]
    state = out / "states" / "step-00000008"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    records = read_metrics(out)                                  # only the main process writes
    assert [r["step"] for r in records if r["kind"] == "eval"] == [8]
    proc = run_train(out, stores, "--steps", "12", "--eval_every", "12", "--save_every", "4", "--resume",
                     launcher=launcher, timeout=300)
    check_ok(proc)
    evals = [r["step"] for r in read_metrics(out) if r["kind"] == "eval"]
    assert evals == [8, 12]                                      # resumed at 8, not from scratch


def test_draw_rows_full_fraction_keeps_all_rows():
    from training.data import draw_rows

    rng = np.random.default_rng(1)
    draws = np.array([draw_rows(rng, 300, 10, 1000, full_fraction=0.5) for _ in range(4000)])
    assert draws.min() >= 10 and draws.max() <= 300
    # half the batches keep every row; the rest are log-uniform below 300 (rarely exactly 300)
    assert abs(np.mean(draws == 300) - 0.5) < 0.04
    assert np.all(np.array([draw_rows(rng, 2000, 10, 500, full_fraction=1.0) for _ in range(50)]) == 500)


def test_ship_checkpoint_fits_offsets_per_novelty_bin(stores, tmp_path):
    """--calib-novelty-store: a novelty reference from a store's set statistics, offsets fitted per
    novelty bin and stored with it; infer picks each set's bin, so each bin of the calibration
    sets is covered at least nominally; the reference reproduces from the same store."""
    import infer
    from metagen.config import load_config
    from metagen.generate import generate
    from metagen.store import open_store
    from model.checkpoint import load_checkpoint
    from model.novelty import novelty_bins
    from model.preprocess import prepare_batch

    calib = tmp_path / "calib"
    generate(load_config(GEN_CONFIG), calib, num_sets=900, seed=13, progress=False)
    st = open_store(calib)
    sets = [st.get(i) for i in range(len(st))]
    mi = st.mi[: len(st)]
    n = np.array([x.shape[0] for x, _ in sets])  # <= n_max 3000: no subsampling
    edge = int(np.median(n))
    assert train_here(tmp_path / "run", stores, "--steps", "2", "--eval_every", "2") == 0
    src, out = tmp_path / "run" / "best.safetensors", tmp_path / "novel.safetensors"
    ship = [PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(src), "--n-max", "3000",
            "--calib-store", str(calib), "--calib-novelty-store", str(stores["train"]),
            "--calib-novelty-reference", "120", "--calib-novelty-quantiles", "0.5", "--calib-n-edges", str(edge),
            "--calib-upper-tail", "1,0.7"]
    r = subprocess.run(ship + ["--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "novelty bin" in r.stdout
    model, meta = load_checkpoint(out)
    ref = meta["calibration_novelty"]
    levels = np.asarray(model.config.quantile_levels)
    assert ref.points.shape[0] == 120 and len(ref.edges) == 1
    assert np.asarray(meta["calibration"]).shape == (2, 2, levels.size)
    assert meta["info"]["calibration_store"]["novelty"]["quantiles"] == [0.5]
    assert meta["info"]["calibration_store"]["upper_tail"] == [1.0, 0.7]
    stats = np.stack([prepare_batch([s], model.config).stats[0].double().numpy() for s in sets])
    bins = novelty_bins(ref, stats)
    q = infer.predict_mi_quantiles_batch(sets, list(levels), checkpoint=out, on_out_of_range="ignore")
    for b in range(2):  # every (bin, n range) cell covered at least nominally above the median
        for sel in ((bins == b) & (n <= edge), (bins == b) & (n > edge)):
            covered = (mi[sel, None] <= q[sel] + 1e-9).mean(axis=0)
            assert np.all(covered[levels > 0.5] >= levels[levels > 0.5] - 1e-9), (b, covered)
    # scripts/calibration_study.py fits the same scheme from its cached statistics: its coverage of a store is
    # what the shipped checkpoint's intervals, made by infer, cover there
    from eval.metrics import interval_scores
    study = tmp_path / "study.json"
    r = subprocess.run([PY, str(ROOT / "scripts" / "calibration_study.py"), "--checkpoint", str(out),  # its n_max
                        "--calib-store", str(calib), "--val", str(calib), "--n-edges", str(edge),
                        "--novelty-store", str(stores["train"]), "--novelty-reference", "120",
                        "--novelty-quantiles", "0.5", "--novelty-upper-tails", "1,0.7", "--work", str(tmp_path / "study"),
                        "--out", str(study)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    report = json.loads(study.read_text())
    mine = next(s for s in report["schemes"] if s["novelty_quantiles"] == [0.5])
    misses = report["raw_misses_by_novelty"]["calib"]  # per bin: sets, and raw 90% misses by n range
    assert [m["sets"] for m in misses] == np.bincount(bins, minlength=2).tolist()
    residuals = report["raw_residuals_by_novelty"]["calib"]  # per bin: cells by predicted median
    assert [sum(c["sets"] for c in cells.values()) for cells in residuals] == np.bincount(bins, minlength=2).tolist()
    assert mine["upper_tail"] == [1.0, 0.7]
    for cov in (0.5, 0.9):  # scored on its own calibration sets, one set sits on each level's edge by construction:
        inside, _ = interval_scores(levels, q, mi, cov)  # float32 outputs batched differently may flip it
        assert abs(mine["stores"]["calib"][str(int(cov * 100))] - inside) <= 2 / len(sets) + 1e-9
    again = tmp_path / "again.safetensors"
    r = subprocess.run(ship + ["--out", str(again)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(load_checkpoint(again)[1]["calibration_novelty"].points, ref.points)
    # shipping again without --calib-store keeps the novelty calibration
    kept = tmp_path / "kept.safetensors"
    r = subprocess.run([PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(out), "--out", str(kept)],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    kmeta = load_checkpoint(kept)[1]
    assert kmeta["calibration_novelty"].edges == ref.edges and kmeta["calibration"] == meta["calibration"]
    for bad, msg in ((["--calib-upper-tail", "1,1,1"], "one per novelty bin"),
                     (["--calib-novelty-reference", "500"], "N > size")):
        r = subprocess.run(ship + ["--out", str(tmp_path / "x.safetensors")] + bad,
                           cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
    r = subprocess.run([PY, str(ROOT / "scripts" / "ship_checkpoint.py"), "--src", str(src), "--out",
                        str(tmp_path / "x.safetensors"), "--calib-novelty-store", str(stores["train"])],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 2 and "needs --calib-store" in r.stderr
