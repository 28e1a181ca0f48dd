"""metagen generate / inspect / verify / sample: determinism, resume after SIGKILL,
damage detection and one-line CLI errors. Uses a tiny config derived from
configs/metagen/tiny.toml (every family and transform, small n and dims)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from metagen import store as st
from metagen.cli import main
from metagen.config import config_to_dict, load_config
from metagen.generate import generate
from metagen.tasks import draw_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "metagen" / "tiny.toml"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(e) for e in v) + "]"
    return repr(v)


def to_toml(d: dict) -> str:
    """Minimal TOML writer for a config dict (scalars and lists first, then tables)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for name, table in d.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, **overrides) -> Path:
    d = config_to_dict(load_config(TINY))
    d.update(name="test", num_sets=24, sets_per_shard=3)
    d["n"].update(min=10, max=40, near_min_fraction=0.1)
    d["dims"].update(max=3)
    for key, value in overrides.items():
        if isinstance(value, dict):
            d[key].update(value)
        else:
            d[key] = value
    path.write_text(to_toml(d))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metagen_cli")


@pytest.fixture(scope="module")
def config_path(work) -> Path:
    return write_config(work / "test.toml")


@pytest.fixture(scope="module")
def reference(work, config_path) -> Path:
    """An uninterrupted single-process run: 24 sets in 8 shards."""
    out = work / "ref"
    res = generate(load_config(config_path), out, workers=1, progress=False)
    assert res.manifest is not None and res.shards_written == list(range(8))
    return out


def shard_list(path: Path) -> list[dict]:
    return json.loads((path / "manifest.json").read_text())["shards"]


def test_store_matches_draw_task(reference, config_path):
    """The stored bytes are exactly what draw_task(config, seed, i).sample() gives."""
    config = load_config(config_path)
    store = st.open_store(reference)
    assert len(store) == 24 and st.verify_store(reference) == []
    for i in range(len(store)):
        task = draw_task(config, config.seed, i)
        x, y = task.sample()
        sx, sy = store.get(i)
        np.testing.assert_array_equal(sx, x)
        np.testing.assert_array_equal(sy, y)
        assert store.mi[i] == task.mi and store.family[i] == task.family_code
        assert store.transform_names[int(store.transform[i])] == task.transform
    # the determinism tests below must cover torch-based (flow) transforms
    assert any("flow" in store.transform_names[int(c)] for c in store.transform)


def test_same_bytes_whatever_workers_and_shards(work, config_path, reference):
    config = load_config(config_path)
    two = generate(config, work / "two_workers", workers=2, progress=False)
    assert two.manifest is not None
    assert shard_list(work / "two_workers") == shard_list(reference)

    split = work / "split"
    first = generate(config, split, shard_index=0, num_shards=2, progress=False)
    assert first.shards_written == list(range(0, 8, 2)) and first.manifest is None
    second = generate(config, split, shard_index=1, num_shards=2, progress=False)
    assert second.shards_written == list(range(1, 8, 2)) and second.manifest is not None
    assert shard_list(split) == shard_list(reference)
    # rerunning skips every complete shard and rewrites the same manifest
    again = generate(config, split, progress=False)
    assert again.shards_written == [] and again.shards_skipped == list(range(8))
    assert shard_list(split) == shard_list(reference)


def test_resume_after_sigkill(work, config_path, reference, capsys):
    """SIGKILL a running `python -m metagen generate` after its first shard, rerun, compare."""
    out = work / "killed"
    argv = ["generate", "--config", str(config_path), "--out", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "metagen", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not st.sidecar_path(out, 0).exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared within 120 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "manifest.json").exists(), "generation finished before the kill; test is void"
    with pytest.raises(st.StoreError, match="incomplete store"):
        st.open_store(out)
    # a leftover temporary directory must never count as a shard, and is removed on resume
    fake_tmp = out / f"{st.tmp_prefix(7)}99999-dead"
    shutil.copytree(out / st.shard_name(0), fake_tmp)
    st.remove_shard(out, 7)
    assert st.write_manifest(out) is None

    assert main(argv) == 0  # the rerun (in this process: same code path as the CLI)
    assert "manifest written" in capsys.readouterr().out
    assert not fake_tmp.exists() and not list(out.glob(".tmp-*"))
    assert shard_list(out) == shard_list(reference)
    assert st.verify_store(out) == []


def _damaged_copy(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest)
    return dest


def _values_chunk(path: Path, shard: int) -> Path:
    chunks = [p for p in (path / st.shard_name(shard) / "values").rglob("*")
              if p.is_file() and p.name != "zarr.json"]
    assert chunks
    return chunks[0]


def test_verify_cli(work, reference, capsys):
    assert main(["verify", str(reference)]) == 0
    assert capsys.readouterr().out.startswith("OK ")

    truncated = _damaged_copy(reference, work / "truncated")
    chunk = _values_chunk(truncated, 1)
    chunk.write_bytes(chunk.read_bytes()[:-8])
    flipped = _damaged_copy(reference, work / "flipped")
    chunk = _values_chunk(flipped, 2)
    data = bytearray(chunk.read_bytes())
    data[4] ^= 0x01
    chunk.write_bytes(bytes(data))
    missing = _damaged_copy(reference, work / "missing")
    shutil.rmtree(missing / st.shard_name(3))
    deleted = _damaged_copy(reference, work / "deleted_chunk")
    _values_chunk(deleted, 0).unlink()

    for path, shard, words in ((truncated, 1, ""), (flipped, 2, "checksum mismatch"),
                               (missing, 3, "missing"), (deleted, 0, "")):
        assert main(["verify", str(path)]) == 1
        out = capsys.readouterr().out
        assert out.startswith("DAMAGED") and f"shard-{shard:05d}" in out and words in out
        other = [line for line in out.splitlines()[1:] if f"shard-{shard:05d}" not in line]
        assert other == []  # only the damaged shard is reported


def test_inspect_and_sample(work, reference, config_path, capsys):
    assert main(["inspect", str(reference)]) == 0
    out = capsys.readouterr().out
    store = st.open_store(reference)
    assert f"{len(store)} sets in 8 shards" in out
    for code in np.unique(store.family):
        assert store.family_names[int(code)] in out

    npz = work / "sample.npz"
    assert main(["sample", "--config", str(config_path), "--index", "7", "--out", str(npz)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "MI=" in line
    with np.load(npz) as f:
        x, y = store.get(7)
        np.testing.assert_array_equal(f["x"], x)
        np.testing.assert_array_equal(f["y"], y)
        assert float(f["mi"]) == store.mi[7]
        assert str(f["family"]) == store.family_names[int(store.family[7])]
        assert str(f["transform"]) == store.transform_names[int(store.transform[7])]


@pytest.mark.parametrize("case", ["missing", "malformed", "unknown_field", "negative_num_sets",
                                  "shard_index", "bad_store", "no_command"])
def test_cli_errors_are_one_line(case, work, config_path, capsys):
    bad = work / f"bad_{case}.toml"
    if case == "malformed":
        bad.write_text("name = 'x'\nnum_sets = [1,\n")
    elif case == "unknown_field":
        bad.write_text(config_path.read_text().replace('"name" =', 'colour = "red"\n"name" =', 1))
    argv = {
        "missing": ["generate", "--config", str(work / "nope.toml"), "--out", str(work / "o")],
        "malformed": ["generate", "--config", str(bad), "--out", str(work / "o")],
        "unknown_field": ["generate", "--config", str(bad), "--out", str(work / "o")],
        "negative_num_sets": ["generate", "--config", str(config_path), "--out", str(work / "o"),
                              "--num-sets", "-3"],
        "shard_index": ["generate", "--config", str(config_path), "--out", str(work / "o"),
                        "--shard-index", "2", "--num-shards", "2"],
        "bad_store": ["inspect", str(work / "not_a_store")],
        "no_command": [],
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("metagen: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert not (work / "o").exists()
    if case == "unknown_field":
        assert "colour" in err


def test_module_entry_point_error(work):
    """`python -m metagen` with a bad argument: exit 2, one line, no traceback."""
    res = subprocess.run([sys.executable, "-m", "metagen", "generate", "--config", str(work / "x.toml"),
                          "--out", str(work / "o"), "--workers", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr and "--workers" in res.stderr


def _processes_with_marker(marker: str) -> list[int]:
    pids = []
    for env_file in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker.encode() in env_file.read_bytes():
                pids.append(int(env_file.parent.name))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_generate_leaves_no_workers(work, config_path):
    """SIGKILL of a multi-worker generate: its workers notice and exit (no orphan writing shards)."""
    out = work / "orphans"
    marker = f"AMI_TEST_MARK_{os.getpid()}_{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), marker: "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metagen", "generate", "--config", str(config_path),
                             "--out", str(out), "--workers", "2", "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_processes_with_marker(marker)) < 3:  # the CLI and at least its two workers
        assert proc.poll() is None, "generate ended before its workers started; test is void"
        assert time.monotonic() < deadline, "workers did not start within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while _processes_with_marker(marker):
        assert time.monotonic() < deadline, f"orphaned workers still running: {_processes_with_marker(marker)}"
        time.sleep(0.2)
