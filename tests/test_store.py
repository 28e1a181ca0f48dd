"""The zarr store: exact round trip, completeness rules, clear errors, damage detection.

These tests write shards from hand-made arrays (no task generator needed) and use a
small ``VALUES_CHUNK`` so that sets straddle chunk boundaries.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from metagen import store as st

SETS_PER_SHARD = 4


def make_sets(num: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, st.SetMeta]]:
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(num):
        n, dx, dy = int(rng.integers(3, 40)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
        x = rng.standard_normal((n, dx)).astype(np.float32)
        y = rng.standard_normal((n, dy)).astype(np.float32)
        meta = st.SetMeta(mi=float(rng.uniform(0, 5)), mi_stderr=float(rng.uniform(0, 0.01)),
                          family=int(rng.integers(0, 5)), transform=int(rng.integers(0, 7)),
                          seed=int(rng.integers(0, 2**62)))
        sets.append((x, y, meta))
    return sets


def plan_for(num_sets: int) -> dict:
    return {"config": {"name": "handmade", "seed": 0, "num_sets": num_sets,
                       "sets_per_shard": SETS_PER_SHARD},
            "seed": 0, "num_sets": num_sets, "sets_per_shard": SETS_PER_SHARD,
            "families": {f"fam{i}": i for i in range(5)},
            "transforms": {f"tr{i}": i for i in range(7)}, "command": None}


def write_store(path: Path, sets) -> dict:
    plan = plan_for(len(sets))
    st.write_plan(path, plan)
    stamp = st.plan_stamp(plan)
    for k in range(st.num_shards_for(len(sets), SETS_PER_SHARD)):
        start, stop = st.shard_range(k, len(sets), SETS_PER_SHARD)
        st.write_shard(path, k, start, sets[start:stop], stamp=stamp)
    assert st.write_manifest(path) == path / st.MANIFEST_NAME
    return plan


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(st, "VALUES_CHUNK", 64)


@pytest.fixture
def store_path(tmp_path) -> tuple[Path, list]:
    sets = make_sets(10)
    path = tmp_path / "store"
    write_store(path, sets)
    return path, sets


def test_round_trip_exact(store_path):
    path, sets = store_path
    store = st.open_store(path)
    assert len(store) == len(sets)
    assert len(store.manifest["shards"]) == 3
    for i in np.random.default_rng(1).permutation(len(sets)):  # random access order
        x, y = store.get(int(i))
        x0, y0, meta = sets[i]
        assert x.dtype == np.float32 and y.dtype == np.float32
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(y, y0)
        assert (store.n[i], store.dx[i], store.dy[i]) == (*x0.shape, y0.shape[1])
        assert store.mi[i] == meta.mi and store.mi_stderr[i] == meta.mi_stderr
        assert (store.family[i], store.transform[i], store.seed[i]) == (meta.family, meta.transform, meta.seed)
    assert store.family_names[3] == "fam3" and store.transform_names[6] == "tr6"
    assert st.verify_store(path) == []


def test_checksum_is_over_array_bytes(store_path):
    path, sets = store_path
    # independent recomputation: hashlib over the little-endian bytes in the documented order
    h = hashlib.sha256()
    part = sets[:SETS_PER_SHARD]
    values = np.concatenate([np.concatenate([x.ravel(), y.ravel()]) for x, y, _ in part]).astype("<f4")
    sizes = [x.shape[0] * (x.shape[1] + y.shape[1]) for x, y, _ in part]
    cols = {
        "values": values,
        "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype("<i8"),
        "n": np.array([x.shape[0] for x, _, _ in part], "<i4"),
        "dx": np.array([x.shape[1] for x, _, _ in part], "<i4"),
        "dy": np.array([y.shape[1] for _, y, _ in part], "<i4"),
        "mi": np.array([m.mi for *_, m in part], "<f8"),
        "mi_stderr": np.array([m.mi_stderr for *_, m in part], "<f8"),
        "family": np.array([m.family for *_, m in part], "<i2"),
        "transform": np.array([m.transform for *_, m in part], "<i2"),
        "seed": np.array([m.seed for *_, m in part], "<i8"),
    }
    for name in ("values", "offsets", "n", "dx", "dy", "mi", "mi_stderr", "family", "transform", "seed"):
        h.update(f"{name}:{cols[name].size};".encode())
        h.update(cols[name].tobytes())
    manifest = json.loads((path / st.MANIFEST_NAME).read_text())
    assert manifest["shards"][0]["sha256"] == h.hexdigest()
    assert json.loads(st.sidecar_path(path, 0).read_text())["sha256"] == h.hexdigest()


def test_store_pickles_and_reads_after(store_path):
    path, sets = store_path
    store = st.open_store(path)
    with pytest.raises(IndexError):
        store.get(len(sets))
    np.testing.assert_array_equal(store.get(-1)[0], sets[-1][0])
    store.get(0)  # opens a zarr array in the cache
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.get(9)[1], sets[9][1])


def test_temp_dir_and_group_without_sidecar_are_not_complete(tmp_path):
    sets = make_sets(4)
    path = tmp_path / "s"
    st.write_shard(path, 0, 0, sets)
    assert st.shard_complete(path, 0, 0, 4, check_data=True)
    # a crash between rename and sidecar: the group alone is not a shard
    st.sidecar_path(path, 0).unlink()
    assert not st.shard_complete(path, 0, 0, 4)
    # a leftover temporary directory is never a shard, and is cleaned up
    (path / st.shard_name(0)).rename(path / f"{st.tmp_prefix(1)}123-abcd")
    assert not st.shard_complete(path, 1, 4, 8)
    (path / ".tmp-shard-00001.json-123-abcd").write_text("{")
    assert len(st.remove_stale_tmp(path, [0])) == 0
    assert len(st.remove_stale_tmp(path, [1])) == 2 and not any(path.glob(".tmp-*"))
    # a sidecar with another set range or stamp does not match
    st.write_shard(path, 0, 0, sets, stamp={"seed": 1})
    assert not st.shard_complete(path, 0, 0, 3)
    assert not st.shard_complete(path, 0, 0, 4, stamp={"seed": 2})
    assert st.shard_complete(path, 0, 0, 4, stamp={"seed": 1})


def test_manifest_only_when_all_shards_complete(tmp_path):
    sets = make_sets(6)
    path = tmp_path / "s"
    plan = plan_for(6)
    st.write_plan(path, plan)
    st.write_shard(path, 0, 0, sets[:4], stamp=st.plan_stamp(plan))
    assert st.write_manifest(path) is None
    with pytest.raises(st.StoreError, match="1 of 2 shards"):
        st.open_store(path)
    st.write_shard(path, 1, 4, sets[4:], stamp=st.plan_stamp(plan))
    assert st.write_manifest(path) is not None
    assert len(st.open_store(path)) == 6


def test_plan_with_other_config_is_refused(tmp_path):
    path = tmp_path / "s"
    st.write_plan(path, plan_for(6))
    other = plan_for(6)
    other["seed"] = 5
    with pytest.raises(st.StoreError, match="another config"):
        st.write_plan(path, other)
    st.write_plan(path, plan_for(9))  # more sets with the same recipe: allowed


def test_open_errors(tmp_path, store_path):
    with pytest.raises(st.StoreError, match="does not exist"):
        st.open_store(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(st.StoreError, match="missing manifest.json"):
        st.open_store(tmp_path / "empty")
    path, _ = store_path
    manifest = json.loads((path / st.MANIFEST_NAME).read_text())
    manifest["version"] = 99
    (path / st.MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(st.StoreError, match="version 99"):
        st.open_store(path)


def test_open_incomplete_after_shard_removed(store_path):
    path, _ = store_path
    st.remove_shard(path, 1)
    with pytest.raises(st.StoreError, match="2 of 3 shards"):
        st.open_store(path)
    problems = st.verify_store(path)
    assert any("shard-00001" in p and "missing" in p for p in problems)


def _chunk_files(path: Path, shard: int) -> list[Path]:
    return sorted(p for p in (path / st.shard_name(shard) / "values").rglob("*")
                  if p.is_file() and p.name != "zarr.json")


def test_verify_detects_deleted_chunk(store_path):
    path, _ = store_path
    chunks = _chunk_files(path, 0)
    assert len(chunks) > 1  # small VALUES_CHUNK: several chunk files
    chunks[len(chunks) // 2].unlink()
    problems = st.verify_store(path)
    assert any(p.startswith("shard-00000") and "non-finite" in p for p in problems)
    assert any("checksum mismatch" in p for p in problems)


def test_verify_detects_truncated_chunk(store_path):
    path, _ = store_path
    chunk = _chunk_files(path, 1)[0]
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    problems = st.verify_store(path)
    assert problems and all(p.startswith("shard-00001") for p in problems)


def test_verify_detects_flipped_bytes(store_path):
    path, _ = store_path
    chunk = _chunk_files(path, 2)[0]
    data = bytearray(chunk.read_bytes())
    data[8:12] = bytes(b ^ 0x01 for b in data[8:12])  # a small change: values stay finite
    chunk.write_bytes(bytes(data))
    problems = st.verify_store(path)
    assert problems == ["shard-00002: checksum mismatch (data altered)"]


def test_verify_detects_bad_metadata(tmp_path):
    sets = make_sets(4)
    x, y, meta = sets[0]
    sets[0] = (x, y, st.SetMeta(mi=-0.5, mi_stderr=meta.mi_stderr, family=meta.family,
                                transform=meta.transform, seed=meta.seed))
    x, y, meta = sets[1]
    x[0, 0] = np.inf
    path = tmp_path / "s"
    write_store(path, sets)
    problems = st.verify_store(path)
    assert any("invalid mi" in p for p in problems)
    assert any("1 non-finite values" in p for p in problems)


def test_pack_rejects_mismatched_n():
    x, y = np.zeros((5, 2)), np.zeros((4, 1))
    with pytest.raises(ValueError, match="set 0"):
        st.pack_sets([(x, y, st.SetMeta(0.0, 0.0, 0, 0, 0))])
