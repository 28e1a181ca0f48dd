"""model/checkpoint.py: safetensors round trip, metadata, and every documented refusal."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import open_zero_paths
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.network import MIEstimator, ModelConfig
from model.preprocess import prepare_batch

torch.set_num_threads(1)
LIMITS = {"n_min": 10, "n_max": 500, "dx_max": 16, "dy_max": 16, "mi_max": 35.0}
CFG = dict(dim=16, heads=2, cell_rows=16, inducing=4, knn_rows=32, head_hidden=16)


@pytest.fixture(params=[{}, dict(use_col_stats=True), dict(refine_hidden=8, refine_members=2)], ids=["plain", "col_stats", "refiner"])
def saved(tmp_path, request):
    torch.manual_seed(0)
    model = open_zero_paths(MIEstimator(ModelConfig(**CFG, **request.param)).eval())  # a lost weight would show
    path = tmp_path / "m.safetensors"
    cal = [0.01 * i for i in range(len(model.config.quantile_levels))]
    save_checkpoint(path, model, limits=LIMITS, calibration=cal, info={"steps": 3})
    return model, path, cal


def test_round_trip_gives_identical_outputs_and_metadata(saved):
    model, path, cal = saved
    loaded, meta = load_checkpoint(path)
    assert not loaded.training and loaded.config == model.config
    rng = np.random.default_rng(0)
    sets = [(rng.normal(size=(50, 2)), rng.normal(size=(50, 3))), (rng.normal(size=(80, 1)), rng.normal(size=(80, 1)))]
    batch = prepare_batch(sets, model.config)
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))
    assert meta["limits"] == LIMITS and meta["calibration"] == cal and meta["info"] == {"steps": 3}
    assert meta["config"] == model.config.to_dict() and meta["format_version"] == 1
    assert len(meta["fingerprint"]) == 64
    assert not list(path.parent.glob("*.tmp"))


def test_metadata_is_plain_json_strings(saved):
    _, path, _ = saved
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["config"])["dim"] == 16


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_text_file_is_refused(tmp_path):
    p = tmp_path / "notes.safetensors"
    p.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(p)


def test_torch_pickle_is_refused_without_unpickling(tmp_path, saved):
    model, _, _ = saved
    p = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict(), "config": model.config.to_dict()}, p)
    with pytest.raises(CheckpointError, match="pickles are not accepted"):
        load_checkpoint(p)


def _rewrite(path, out, tensors=None, **meta_changes):
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    save_file(tensors if tensors is not None else t, str(out), metadata=meta)
    return t


def test_tampered_weight_fails_the_fingerprint(tmp_path, saved):
    _, path, _ = saved
    out = tmp_path / "tampered.safetensors"
    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    name = sorted(t)[0]
    t[name] = t[name].clone()
    t[name].view(-1)[0] += 1e-3
    _rewrite(path, out, tensors=t)
    with pytest.raises(CheckpointError, match="fingerprint mismatch"):
        load_checkpoint(out)


def test_missing_or_incompatible_metadata(tmp_path, saved):
    _, path, _ = saved
    cases = {
        "no_format": (dict(format=None), "not an amortized-MI checkpoint"),
        "future": (dict(format_version="99"), "format version 99"),
        "bad_json": (dict(config="{oops"), "not valid JSON"),
        "unknown_key": (dict(config=json.dumps({**CFG, "colour": 1})), "incompatible"),
        "no_limits": (dict(limits=None), "no 'limits'"),
        "bad_limits": (dict(limits=json.dumps({"n_min": 1})), "limits must be"),
    }
    for name, (changes, msg) in cases.items():
        out = tmp_path / f"{name}.safetensors"
        _rewrite(path, out, **changes)
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(out)


def test_shape_mismatch_with_stored_config(tmp_path, saved):
    _, path, _ = saved
    out = tmp_path / "shape.safetensors"
    bigger = json.dumps(ModelConfig(**{**CFG, "dim": 32, "heads": 2}).to_dict())
    _rewrite(path, out, config=bigger)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(out)


def test_save_validates_its_arguments(tmp_path, saved):
    model, _, _ = saved
    with pytest.raises(ValueError, match="limits is missing"):
        save_checkpoint(tmp_path / "a.safetensors", model, limits={"n_min": 1})
    with pytest.raises(ValueError, match="calibration needs"):
        save_checkpoint(tmp_path / "b.safetensors", model, limits=LIMITS, calibration=[0.0])
    q = len(model.config.quantile_levels)
    with pytest.raises(ValueError, match="per n range"):
        save_checkpoint(tmp_path / "c.safetensors", model, limits=LIMITS, calibration=[[0.0] * q] * 3,
                        calibration_n_edges=[100])
    with pytest.raises(ValueError, match="without calibration"):
        save_checkpoint(tmp_path / "d.safetensors", model, limits=LIMITS, calibration_n_edges=[100])
    with pytest.raises(ValueError, match="strictly increasing"):
        save_checkpoint(tmp_path / "e.safetensors", model, limits=LIMITS, calibration=[[0.0] * q] * 3,
                        calibration_n_edges=[100, 50])


def test_calibration_per_n_range_round_trip_and_refusals(tmp_path, saved):
    model, path, _ = saved
    q = len(model.config.quantile_levels)
    rows = [[0.01 * i + r for i in range(q)] for r in range(3)]
    out = tmp_path / "by-n.safetensors"
    save_checkpoint(out, model, limits=LIMITS, calibration=rows, calibration_n_edges=[100, 1000])
    _, meta = load_checkpoint(out)
    assert meta["calibration"] == rows and meta["calibration_n_edges"] == [100, 1000]
    _, plain = load_checkpoint(path)
    assert plain["calibration_n_edges"] == []
    cases = {  # rows that do not match the edges, edges that are not increasing ints
        "rows_vs_edges": (dict(calibration_n_edges=json.dumps([100])), r"offsets of shape \(2, "),
        "flat_with_edges": (dict(calibration=json.dumps(rows[0])), r"offsets of shape \(3, "),
        "bad_edges": (dict(calibration_n_edges=json.dumps([1000, 100])), "calibration_n_edges"),
        "ragged": (dict(calibration=json.dumps([rows[0], rows[1][:-1], rows[2]])), "offsets of shape"),
    }
    for name, (changes, msg) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        _rewrite(out, bad, **changes)
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(bad)


# ------------------------------------------------------------ scripts/average_checkpoints.py
WIDE = {**LIMITS, "n_max": 5000, "dx_max": 64, "dy_max": 64}   # the model card predicts at up to 20 x 20 dims


def _script(*args: str, script: str = "average_checkpoints.py"):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "scripts" / script), *args],
                          capture_output=True, text=True, cwd=root, timeout=120)


def test_average_checkpoints_is_the_mean_of_the_weights_and_refuses_mixed_runs(tmp_path):
    paths, states = [], []
    store = tmp_path / "store"           # a training store's manifest names its metagen config
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"config": {"name": "train_geometry"}}))
    for seed, step in ((1, 500), (2, 1500), (3, 1000)):
        torch.manual_seed(seed)
        model = MIEstimator(ModelConfig(**CFG))
        paths.append(str(tmp_path / f"s{step}.safetensors"))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        save_checkpoint(paths[-1], model, limits=WIDE, calibration=[0.1] * len(model.config.quantile_levels),
                        info={"step": step, "init_from": {"path": "origin", "fingerprint": "f", "steps_before": 7},
                              "config": {"train_store": str(store), "n_weight_power": 0.5, "rotate_fraction": 0.0}})
    out = tmp_path / "avg.safetensors"
    r = _script("--out", str(out), *paths)
    assert r.returncode == 0, r.stderr
    avg, meta = load_checkpoint(out)
    for k, v in avg.state_dict().items():
        expected = (states[0][k].double() + states[1][k].double() + states[2][k].double()) / 3
        torch.testing.assert_close(v.double(), expected, rtol=0, atol=1e-6)
    assert meta["calibration"] is None and meta["limits"] == WIDE
    assert meta["info"]["step"] == 1500 and meta["info"]["init_from"]["steps_before"] == 7   # the latest one's lineage
    assert [a["path"] for a in meta["info"]["averaged_from"]] == paths
    assert [a["step"] for a in meta["info"]["averaged_from"]] == [500, 1500, 1000]
    card = tmp_path / "card.md"   # the model card says so
    r = _script("--checkpoint", str(out), "--results", str(tmp_path / "none"), "--out", str(card),
                 script="write_model_card.py")
    assert r.returncode == 0, r.stderr
    assert "the mean of 3 checkpoints of this run, steps 500, 1500, 1000" in card.read_text()
    assert "metagen `configs/metagen/train_geometry.toml`" in card.read_text()
    assert "- batch options: `n_weight_power` 0.5\n" in card.read_text()      # options left at 0 are not listed

    torch.manual_seed(4)
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, MIEstimator(ModelConfig(**{**CFG, "dim": 32})), limits=WIDE)
    r = _script("--out", str(tmp_path / "x.safetensors"), paths[0], str(other))
    assert r.returncode == 2 and "model config differs" in r.stderr
    save_checkpoint(other, MIEstimator(ModelConfig(**CFG)), limits={**WIDE, "n_max": 900})
    r = _script("--out", str(tmp_path / "x.safetensors"), paths[0], str(other))
    assert r.returncode == 2 and "trained limits" in r.stderr
    # a soup of runs on different stores: only the MI range differs, and the average covers both
    save_checkpoint(other, MIEstimator(ModelConfig(**CFG)), limits={**WIDE, "mi_max": WIDE["mi_max"] + 3})
    r = _script("--out", str(tmp_path / "soup.safetensors"), paths[0], str(other))
    assert r.returncode == 0, r.stderr
    lim = load_checkpoint(tmp_path / "soup.safetensors")[1]["limits"]
    assert lim == {**WIDE, "mi_max": WIDE["mi_max"] + 3}
    # "latest" counts the steps of what a checkpoint was started from: 900 + 2000 > 1500 + 7
    save_checkpoint(other, MIEstimator(ModelConfig(**CFG)), limits=WIDE,
                    info={"step": 900, "init_from": {"path": "p", "fingerprint": "g", "steps_before": 2000}})
    r = _script("--out", str(tmp_path / "soup2.safetensors"), paths[1], str(other))
    assert r.returncode == 0, r.stderr
    info = load_checkpoint(tmp_path / "soup2.safetensors")[1]["info"]
    assert info["step"] == 900 and info["init_from"]["steps_before"] == 2000
    r = _script("--out", str(tmp_path / "x.safetensors"), str(tmp_path / "missing.safetensors"))
    assert r.returncode == 2 and "no such checkpoint" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()
