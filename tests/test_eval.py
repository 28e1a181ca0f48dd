"""Evaluation: metrics on hand-built cases, set selection, the harness end to end (in-memory
sets and a tiny zarr store), the model adapter through a stand-in infer module, the CLI's
errors and the speed benchmark."""

from __future__ import annotations

import json
from pathlib import Path
import math
import sys
import types

import numpy as np
import pytest
import torch

from eval import metrics
from eval.baselines import BootstrapEstimator, GaussianCopulaEstimator, KSGEstimator
from eval.bench_speed import format_report, run_benchmark
from eval.estimators import ModelEstimator, ModelUnavailable, make_estimator, parse_estimator_names
from eval.harness import evaluate, main, select_sets
from eval.sources import ListSource, StoreSource

torch.set_num_threads(1)

# ---------------------------------------------------------------- metrics


def test_point_errors_hand_built():
    est = np.array([1.0, 2.0, 4.0, np.nan])
    truth = np.array([1.5, 2.0, 3.0, 9.0])
    out = metrics.point_errors(est, truth)
    # errors over the finite rows: -0.5, 0, +1
    assert out["count"] == 3
    assert out["mae"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert out["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert out["bias"] == pytest.approx((-0.5 + 0 + 1) / 3)


def test_interval_coverage_and_width_hand_built():
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    q = np.array([
        [0.0, 1.0, 2.0, 3.0, 4.0],   # truth 3.5: in 90% [0, 4], not in 50% [1, 3]
        [1.0, 1.5, 2.0, 2.5, 3.0],   # truth 1.0: on the 90% bound (closed), not in 50%
        [2.0, 2.0, 2.0, 2.0, 2.0],   # truth 2.0: zero-width, covered by both
        [5.0, 6.0, 7.0, 8.0, 9.0],   # truth 0.0: covered by neither
    ])
    truth = np.array([3.5, 1.0, 2.0, 0.0])
    cov90, width90 = metrics.interval_scores(levels, q, truth, 0.9)
    cov50, width50 = metrics.interval_scores(levels, q, truth, 0.5)
    assert cov90 == pytest.approx(3 / 4) and width90 == pytest.approx((4 + 2 + 0 + 4) / 4)
    assert cov50 == pytest.approx(1 / 4) and width50 == pytest.approx((2 + 1 + 0 + 2) / 4)
    # an 80% interval needs levels 0.1 / 0.9: linear interpolation between the grid points
    lo, hi = metrics.central_interval(levels, q, 0.8)
    np.testing.assert_allclose(lo, [np.interp(0.1, levels, r) for r in q])
    np.testing.assert_allclose(hi, [np.interp(0.9, levels, r) for r in q])


def test_summarise_hand_built():
    levels = list(metrics.DEFAULT_LEVELS)
    truth = np.array([0.0, 1.0, 2.0, 3.0])
    # interval estimator: quantile at level p is truth + (p - 0.5) * 4 + shift
    shifts = np.array([0.0, 0.5, -1.9, 3.0])
    q = truth[:, None] + shifts[:, None] + (np.array(levels)[None, :] - 0.5) * 4
    times = np.array([0.1, 0.2, 0.3, 0.4])
    s = metrics.summarise(levels, q, truth, times, has_interval=True)
    assert s["mae"] == pytest.approx(np.mean(np.abs(shifts)))
    assert s["bias"] == pytest.approx(np.mean(shifts))
    assert s["median_time_s"] == pytest.approx(0.25)
    # central c interval is truth + shift +- 2c: covered iff |shift| <= 2c
    for c in (0.5, 0.8, 0.9):
        assert s["coverage"][str(round(c * 100))] == pytest.approx(np.mean(np.abs(shifts) <= 2 * c + 1e-12))
        assert s["width"][str(round(c * 100))] == pytest.approx(4 * c)
    point = metrics.summarise(levels, np.repeat(truth[:, None], len(levels), 1), truth, times, has_interval=False)
    assert "coverage" not in point and point["mae"] == 0.0


def test_buckets_and_groups():
    assert [metrics.mi_bin(v) for v in (0.0, 1e-9, 1.0, 1.01, 3.0, 7.9, 8.5, 40.0)] == [
        "0", "(0,1]", "(0,1]", "(1,3]", "(1,3]", "(3,8]", "(8,35]", ">35"]
    assert [metrics.n_bucket(v) for v in (10, 50, 51, 700, 2000, 5000)] == [
        "<=50", "<=50", "51-200", "201-700", "701-2000", ">2000"]
    assert metrics.n_bucket(300, fixed_values=[100, 300]) == "300"
    assert [metrics.dims_bucket(*d) for d in ((1, 5), (6, 2), (25, 25), (3, 26))] == ["<=5", "6-25", "6-25", ">25"]
    # n / (dx + dy): 12 / 4 = 3 is still near-minimum, 13 / 4 is not; 100 / 10 = 10 is "3-10"
    assert [metrics.rows_per_dim_bucket(*t) for t in ((12, 2, 2), (13, 2, 2), (100, 5, 5), (101, 5, 5))] == [
        "<=3", "3-10", "3-10", ">10"]
    assert metrics.family_groups("student_t", "swiss_roll", 30, 2) == ["embeddings", "heavy_tails", "dims>25"]
    assert metrics.family_groups("gaussian", "flow_coupling", 2, 2) == ["flows"]
    assert metrics.family_groups("gaussian", "spiral", 2, 2) == ["spirals"]
    assert metrics.is_geometric("linear+flow+asinh") and metrics.is_geometric("helix")
    assert not metrics.is_geometric("half_cube+linear") and not metrics.is_geometric("identity")


def test_select_sets_reproducible_and_stratified():
    ns = np.array([20] * 50 + [300] * 30 + [1500] * 5 + [4000] * 2 + [100] * 13)
    a = select_sets(ns, 12, seed=1)
    assert np.array_equal(a, select_sets(ns, 12, seed=1))
    assert len(a) == 12 and len(set(a.tolist())) == 12 and np.all(np.diff(a) > 0)
    # five distinct n (<= 8) so the strata are the exact n values; round-robin takes every one
    assert set(ns[a].tolist()) == {20, 100, 300, 1500, 4000}
    assert not np.array_equal(a, select_sets(ns, 12, seed=2))
    assert np.array_equal(select_sets(ns, None), np.arange(len(ns)))


# ---------------------------------------------------------------- harness


def gaussian_sets(count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(count):
        n, d, rho = [40, 150, 400][i % 3], [1, 2, 30][i % 3 if i % 4 else 0], [0.0, 0.5, 0.9][i % 3]
        x = rng.standard_normal((n, d))
        y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, d))
        transform = ["none", "swiss_roll", "flow"][i % 3]
        sets.append((x, np.exp(y), {"mi": -0.5 * d * math.log(1 - rho**2), "family": "gaussian" if i % 2 else "student_t",
                                    "transform": transform, "seed": i}))
    return sets


class Failing:
    name = "failing"
    has_interval = True

    def estimate_quantiles(self, x, y, levels):
        if x.shape[0] > 100:
            raise RuntimeError("too many rows")
        return np.linspace(0.0, 1.0, len(levels))


def test_harness_end_to_end_in_memory(tmp_path):
    source = ListSource(gaussian_sets(9))
    ests = [KSGEstimator(), BootstrapEstimator(GaussianCopulaEstimator(), n_boot=10)]
    res = evaluate(source, ests, tmp_path / "out", seed=0, progress=False)
    out = tmp_path / "out"
    for f in ("results.json", "results.md", "ksg.png", "gaussian_boot.png", "comparison.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    data = json.loads((out / "results.json").read_text())
    assert data["num_sets"] == 9 and len(data["sets"]) == 9 and res["num_sets"] == 9
    assert len(data["sets"][0]["predictions"]["gaussian_boot"]["quantiles"]) == len(metrics.DEFAULT_LEVELS)
    # the reported MAE / bias equal an independent computation from the per-set predictions
    truth = np.array([s["mi"] for s in data["sets"]])
    point = np.array([s["predictions"]["ksg"]["point"] for s in data["sets"]])
    np.testing.assert_allclose(point, [KSGEstimator().estimate(*source.get(s["index"])) for s in data["sets"]])
    assert data["estimators"]["ksg"]["overall"]["mae"] == pytest.approx(np.mean(np.abs(point - truth)))
    assert data["estimators"]["ksg"]["overall"]["bias"] == pytest.approx(np.mean(point - truth))
    assert "coverage" not in data["estimators"]["ksg"]["overall"]
    boot = data["estimators"]["gaussian_boot"]["overall"]
    assert set(boot["coverage"]) == {"50", "80", "90"} and len(boot["calibration"]) == 9
    q = np.array([s["predictions"]["gaussian_boot"]["quantiles"] for s in data["sets"]])
    lo, hi = q[:, 0], q[:, -1]  # levels 0.05 and 0.95
    assert boot["coverage"]["90"] == pytest.approx(np.mean((lo <= truth) & (truth <= hi)))
    # groups: exact n values (3 distinct), family groups
    groups = data["estimators"]["ksg"]["groups"]
    assert list(groups["n"]) == ["40", "150", "400"]
    assert groups["n"]["40"]["count"] == 3
    assert set(groups["family_group"]) == {"embeddings", "flows", "heavy_tails", "dims>25"}
    md = (out / "results.md").read_text()
    assert "## Overall" in md and "| gaussian_boot |" in md and "Bias per true-MI bin" in md


def test_harness_counts_failures_and_goes_on(tmp_path):
    res = evaluate(ListSource(gaussian_sets(9)), [Failing(), GaussianCopulaEstimator()], tmp_path, progress=False,
                   plots=False)
    fail = res["estimators"]["failing"]["overall"]
    assert fail["failures"] == 6 and fail["count"] == 3
    assert "too many rows" in res["sets"][1]["predictions"]["failing"]["error"]
    assert res["estimators"]["gaussian"]["overall"]["count"] == 9
    with pytest.raises(ValueError, match="unique"):
        evaluate(ListSource(gaussian_sets(2)), [KSGEstimator(), KSGEstimator()], tmp_path, progress=False)


def test_harness_max_sets(tmp_path):
    res = evaluate(ListSource(gaussian_sets(12)), [GaussianCopulaEstimator()], tmp_path, max_sets=6, seed=3,
                   progress=False, plots=False)
    assert res["num_sets"] == 6
    assert sorted({s["n"] for s in res["sets"]}) == [40, 150, 400]  # stratified by n: 2 of each
    assert not (tmp_path / "gaussian.png").exists()


def write_tiny_store(path, count: int = 6):
    st = pytest.importorskip("metagen.store")
    rng = np.random.default_rng(0)
    sets, truths = [], []
    for i in range(count):
        n, rho = [60, 200][i % 2], [0.0, 0.8, 0.95][i % 3]
        x = rng.standard_normal((n, 2))
        y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, 2))
        mi = -math.log(1 - rho**2)
        truths.append(mi)
        sets.append((x.astype(np.float32), y.astype(np.float32),
                     st.SetMeta(mi=mi, mi_stderr=0.0, family=i % 2, transform=0, seed=i)))
    plan = {"config": {"name": "eval-test", "seed": 0, "num_sets": count, "sets_per_shard": 4}, "seed": 0,
            "num_sets": count, "sets_per_shard": 4, "families": {"gaussian": 0, "student_t": 1},
            "transforms": {"none": 0}, "command": None}
    st.write_plan(path, plan)
    stamp = st.plan_stamp(plan)
    for k in range(st.num_shards_for(count, 4)):
        lo, hi = st.shard_range(k, count, 4)
        st.write_shard(path, k, lo, sets[lo:hi], stamp=stamp)
    st.write_manifest(path)
    return truths


def test_harness_cli_on_tiny_store(tmp_path, capsys):
    truths = write_tiny_store(tmp_path / "store")
    src = StoreSource(tmp_path / "store")
    assert len(src) == 6 and src.info(1).family == "student_t" and src.info(1).mi == pytest.approx(truths[1])
    rc = main(["--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--estimators", "ksg,gaussian",
               "--no-progress", "--no-plots"])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["num_sets"] == 6 and set(data["estimators"]) == {"ksg", "gaussian"}
    assert [s["mi"] for s in data["sets"]] == pytest.approx(truths)
    assert "| ksg |" in capsys.readouterr().out


def test_harness_reuse_copies_baselines_and_recomputes_the_rest(tmp_path, capsys, monkeypatch):
    write_tiny_store(tmp_path / "store")
    base = ["--store", str(tmp_path / "store"), "--estimators", "ksg,gaussian", "--no-progress", "--no-plots"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert first["config"]["reused"] == []
    calls = []
    real = KSGEstimator.estimate_quantiles
    monkeypatch.setattr(KSGEstimator, "estimate_quantiles", lambda self, x, y, lv: calls.append(1) or real(self, x, y, lv))
    assert main(base + ["--out", str(tmp_path / "b"), "--reuse", str(tmp_path / "a" / "results.json")]) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert calls == [] and second["config"]["reused"] == ["gaussian", "ksg"]
    for a, b in zip(first["sets"], second["sets"]):
        assert all(b["predictions"][k].pop("reused") for k in ("ksg", "gaussian"))
        assert a["predictions"] == b["predictions"]
    assert second["estimators"]["ksg"]["overall"]["mae"] == first["estimators"]["ksg"]["overall"]["mae"]
    # another seed, or an old file whose true MIs differ from the store's: nothing is copied
    assert main(base + ["--out", str(tmp_path / "c"), "--seed", "1", "--reuse", str(tmp_path / "a" / "results.json")]) == 0
    assert len(calls) == 6
    doctored = dict(first, sets=[dict(r, mi=r["mi"] + 1.0) for r in first["sets"]])
    (tmp_path / "bad.json").write_text(json.dumps(doctored))
    assert main(base + ["--out", str(tmp_path / "d"), "--reuse", str(tmp_path / "bad.json")]) == 0
    assert len(calls) == 12 and json.loads((tmp_path / "d" / "results.json").read_text())["config"]["reused"] == []
    # an old file with another level grid is not reused (and does not crash)
    other_levels = dict(first, levels=first["levels"][:-1])
    (tmp_path / "levels.json").write_text(json.dumps(other_levels))
    assert main(base + ["--out", str(tmp_path / "f"), "--reuse", str(tmp_path / "levels.json")]) == 0
    assert len(calls) == 18 and json.loads((tmp_path / "f" / "results.json").read_text())["config"]["reused"] == []
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "e"), "--reuse", str(tmp_path / "missing.json")]) == 2
    assert "--reuse: cannot read" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert main(["--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--estimators", "ksg"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "--out", str(tmp_path / "o"), "--estimators", "ksg,mine"]) == 2
    assert "unknown estimator(s) mine" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "--out", str(tmp_path / "o"), "--estimators", "ksg"]) == 2
    assert "cannot open test store" in capsys.readouterr().err
    with pytest.raises(ValueError, match="twice"):
        parse_estimator_names("ksg,ksg")


# ---------------------------------------------------------------- model adapter, speed benchmark


@pytest.fixture
def fake_infer(monkeypatch):
    """A stand-in infer module: quantiles = gaussian-copula MI * (0.5 + level)."""
    calls = {}

    def predict(x, y, quantiles=(0.05, 0.5, 0.95), *, checkpoint=None, unit="nats", device=None, **kw):
        calls["single"] = (tuple(quantiles), checkpoint, kw)
        return GaussianCopulaEstimator().estimate(x, y) * (0.5 + np.asarray(quantiles))

    def predict_batch(pairs, quantiles=(0.05, 0.5, 0.95), *, checkpoint=None, unit="nats", device=None, **kw):
        return np.stack([predict(x, y, quantiles, checkpoint=checkpoint, **kw) for x, y in pairs])

    mod = types.SimpleNamespace(predict_mi_quantiles=predict, predict_mi_quantiles_batch=predict_batch)
    monkeypatch.setitem(sys.modules, "infer", mod)
    return calls


def test_model_adapter_in_harness(tmp_path, fake_infer):
    model = make_estimator("model", checkpoint="ck.safetensors", on_out_of_range="ignore")
    assert isinstance(model, ModelEstimator) and model.has_interval
    model.check_available()
    res = evaluate(ListSource(gaussian_sets(3)), [model], tmp_path, progress=False, plots=False)
    levels, ck, kw = fake_infer["single"]
    assert levels == pytest.approx(metrics.DEFAULT_LEVELS) and ck == "ck.safetensors" and kw == {"on_out_of_range": "ignore"}
    s = res["sets"][1]
    x, y = gaussian_sets(3)[1][:2]
    assert s["predictions"]["model"]["point"] == pytest.approx(GaussianCopulaEstimator().estimate(x, y))
    assert res["estimators"]["model"]["overall"]["coverage"]["90"] is not None
    pairs = [gaussian_sets(3)[k][:2] for k in range(3)]
    assert model.estimate_quantiles_batch(pairs, (0.5,)).shape == (3, 1)


def test_model_unavailable_is_clear(monkeypatch):
    def broken(*a, **k):
        raise FileNotFoundError("no checkpoint")

    monkeypatch.setitem(sys.modules, "infer", types.SimpleNamespace(predict_mi_quantiles=broken))
    with pytest.raises(ModelUnavailable, match="no checkpoint"):
        ModelEstimator().check_available()


def test_bench_speed_runs_with_and_without_model(fake_infer, monkeypatch):
    times = run_benchmark(n=200, dim=2, repeats=1, batch=2, threads=1, infonce=False)
    assert {"model (single call)", "model (batch of 2, per set)", "ksg (k-d tree, k=3)", "gaussian copula"} <= set(times)
    assert all(t > 0 for t in times.values())
    report = format_report(times, 200, 2, 1)
    assert "torch threads = 1" in report and "x model" in report

    def broken(*a, **k):
        raise FileNotFoundError("no checkpoint")

    monkeypatch.setitem(sys.modules, "infer", types.SimpleNamespace(predict_mi_quantiles=broken))
    times = run_benchmark(n=200, dim=2, repeats=1, batch=2, threads=1, infonce=False)
    assert "no checkpoint" in times["model_error"] and "ksg (k-d tree, k=3)" in times
    assert "model not available" in format_report(times, 200, 2, 1)


def test_bench_speed_passes_max_rows_to_the_model(fake_infer):
    run_benchmark(n=200, dim=2, repeats=1, batch=2, threads=1, infonce=False, max_rows=50)
    assert fake_infer["single"][2] == {"max_rows": 50}
    run_benchmark(n=200, dim=2, repeats=1, batch=2, threads=1, infonce=False)
    assert fake_infer["single"][2] == {}                     # "auto": infer's own default


def test_alternating_ratios_compare_under_the_same_conditions():
    import time as _time

    from eval.bench_speed import alternating_ratios, format_rounds

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1
        _time.sleep(0.002)

    def slow():
        calls["slow"] += 1
        _time.sleep(0.03)

    rounds = alternating_ratios(fast, slow, rounds=3, repeats=4)
    assert len(rounds) == 3 and calls == {"fast": 1 + 12, "slow": 1 + 3}  # one warm-up each
    assert all(3 < o / m < 40 for m, o in rounds)  # ~15x; generous bounds for a busy machine
    text = format_rounds(rounds, "slow thing")
    assert text.count("round ") == 3 and "slow thing" in text
    ratios = sorted(o / m for m, o in rounds)
    assert f"median ratio {ratios[1]:.3g}" in text and f"minimum ratio {ratios[0]:.3g}" in text
    calls.update(fast=0, slow=0)
    alternating_ratios(fast, slow, rounds=2, repeats=3, slow_repeats=2)
    assert calls == {"fast": 1 + 6, "slow": 1 + 4}
    with pytest.raises(ValueError, match=">= 1"):
        alternating_ratios(fast, slow, rounds=0, repeats=1)
    with pytest.raises(ValueError, match=">= 1"):
        alternating_ratios(fast, slow, rounds=1, repeats=1, slow_repeats=0)


def test_train_mean_estimator_predicts_the_store_mean(tmp_path):
    from metagen.config import load_config
    from metagen.generate import generate
    from metagen.store import open_store

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "metagen" / "tiny.toml")
    generate(cfg, tmp_path / "s", num_sets=12, seed=3, progress=False)
    est = make_estimator("train_mean", train_store=str(tmp_path / "s"))
    truth = float(np.mean(open_store(tmp_path / "s").mi))
    x = np.zeros((5, 1))
    assert est.estimate(x, x) == pytest.approx(truth)
    assert np.all(est.estimate_quantiles(x, x, (0.1, 0.9)) == pytest.approx(truth))
    with pytest.raises(ValueError, match="--train-store"):
        make_estimator("train_mean")
