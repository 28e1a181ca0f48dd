"""model.novelty: the novelty score, its bins, the calibration per bin, and their path through
checkpoints, inference and scripts/ship_checkpoint.py."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import infer
from model.checkpoint import NOVELTY_POINTS, CheckpointError, load_checkpoint, save_checkpoint
from model.network import MIEstimator, ModelConfig
from model.novelty import (
    NoveltyReference,
    apply_calibration_by_novelty,
    fit_calibration_by_novelty,
    fit_novelty_reference,
    novelty_bins,
    novelty_percentiles,
    novelty_scores,
)
from model.preprocess import prepare_batch, stats_dim
from model.quantiles import apply_calibration, fit_calibration_by_n, interpolate_quantiles
from model.validation import OutOfRangeWarning

torch.set_num_threads(1)
LIMITS = {"n_min": 10, "n_max": 500, "dx_max": 16, "dy_max": 16, "mi_max": 35.0}
CFG = dict(dim=16, heads=2, cell_rows=16, inducing=4, knn_rows=32, head_hidden=16)


def _reference(rng, m=300, s=5, edges=(1.0, 2.0), k=4):
    return NoveltyReference(mean=rng.normal(size=s), scale=rng.uniform(0.5, 2.0, size=s),
                            points=rng.normal(size=(m, s)).astype(np.float32), k=k, edges=edges)


def test_novelty_score_is_the_mean_distance_to_the_k_nearest_reference_sets():
    rng = np.random.default_rng(0)
    ref = _reference(rng)
    stats = rng.normal(size=(600, 5)) * 3  # more than one scoring chunk
    z = (stats - ref.mean) / ref.scale
    want = np.array([np.sort(np.linalg.norm(ref.points.astype(np.float64) - zi, axis=1))[: ref.k].mean() for zi in z])
    np.testing.assert_allclose(novelty_scores(ref, stats), want, rtol=1e-9, atol=1e-9)
    # a reference point itself scores the mean distance to its k - 1 nearest others (and 0 for itself)
    own = ref.mean + ref.scale * ref.points[:1].astype(np.float64)
    d = np.sort(np.linalg.norm(ref.points.astype(np.float64) - ref.points[0], axis=1))[: ref.k]
    assert novelty_scores(ref, own)[0] == pytest.approx(d.mean(), abs=1e-5)
    bins = novelty_bins(ref, stats)
    np.testing.assert_array_equal(bins, (want > 1.0).astype(int) + (want > 2.0))
    with pytest.raises(ValueError, match=r"stats must be \(B, 5\)"):
        novelty_scores(ref, stats[:, :4])


def test_reference_validates_its_fields():
    rng = np.random.default_rng(1)
    good = dict(mean=np.zeros(3), scale=np.ones(3), points=rng.normal(size=(10, 3)), k=2, edges=(1.0,))
    NoveltyReference(**good)
    for change, msg in [(dict(points=rng.normal(size=(10, 4))), "need mean"), (dict(scale=np.zeros(3)), "positive"),
                        (dict(k=11), "k must"), (dict(edges=(2.0, 1.0)), "edges"), (dict(edges=()), "edges"),
                        (dict(train_scores=(1.0, 0.0)), "train_scores"),
                        (dict(train_scores=tuple(np.linspace(1.0, 0.0, 101))), "train_scores")]:
        with pytest.raises(ValueError, match=msg):
            NoveltyReference(**{**good, **change})
    with pytest.raises(ValueError, match="needs k, edges"):
        NoveltyReference.from_json({"k": 2}, good["points"])


def test_fitted_edges_split_training_sets_at_the_requested_quantiles_and_far_sets_score_high():
    rng = np.random.default_rng(2)
    train = rng.normal(size=(9000, 6)) * [1, 2, 3, 1, 1, 0]  # a constant statistic must not break it
    ref = fit_novelty_reference(train, [0.5, 0.9], size=4000, k=5)
    fresh = rng.normal(size=(4000, 6)) * [1, 2, 3, 1, 1, 0]
    share = np.bincount(novelty_bins(ref, fresh), minlength=3) / len(fresh)
    np.testing.assert_allclose(share, [0.5, 0.4, 0.1], atol=0.03)
    far = fresh[:100] + [6, 0, 0, 0, 0, 0]
    assert np.all(novelty_bins(ref, far) == 2)
    # percentiles: fresh training-distribution sets spread evenly over 0-100, far ones at the top
    pct = novelty_percentiles(ref, fresh)
    assert len(ref.train_scores) == 101 and abs(pct.mean() - 50) < 2 and abs(np.mean(pct > 90) - 0.1) < 0.02
    far_pct = novelty_percentiles(ref, far)
    assert np.all(far_pct > 90) and np.median(far_pct) == 100.0
    np.testing.assert_allclose(ref.percentile_of(np.array(ref.train_scores[:1]) - 1), [0.0])
    tied = NoveltyReference(mean=ref.mean, scale=ref.scale, points=ref.points, k=ref.k, edges=ref.edges,
                            train_scores=(0.0,) * 50 + tuple(np.linspace(0.0, 1.0, 51)))  # ties take the top percentile
    np.testing.assert_allclose(tied.percentile_of(np.array([0.0, 0.5, 2.0])), [50.0, 75.0, 100.0])
    assert np.isnan(NoveltyReference(mean=ref.mean, scale=ref.scale, points=ref.points, k=ref.k,
                                     edges=ref.edges).percentile_of(np.array([1.0]))[0])
    with pytest.raises(ValueError, match="quantiles"):
        fit_novelty_reference(train, [0.9, 0.5])
    with pytest.raises(ValueError, match="N > size"):
        fit_novelty_reference(train[:100], [0.5], size=200)


def test_calibration_by_novelty_covers_each_bin_where_one_pooled_fit_does_not():
    """Sets of bin 1 are noisier than the grid says: per-bin offsets give both bins nominal coverage,
    the pooled fit under-covers bin 1 and over-covers bin 0."""
    rng = np.random.default_rng(3)
    levels = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    def draw(size):
        n = rng.choice([100, 500], size=size)
        b = (rng.random(size) < 0.3).astype(int)
        t = rng.uniform(0.5, 2.0, size)
        noise = rng.normal(size=size) * np.where(b == 1, 0.6, 0.1)
        grid = (t + noise)[:, None] + 0.1 * np.array([-1.6, -0.7, 0.0, 0.7, 1.6])
        return grid, t, n, b
    grid, t, n, b = draw(6000)
    offs = fit_calibration_by_novelty(grid, t, levels, n, [300], b, 2, [1.0, 1.0])
    assert offs.shape == (2, 2, levels.size)
    for r in range(2):  # each bin's offsets are fit_calibration_by_n on its own sets
        np.testing.assert_allclose(offs[r], fit_calibration_by_n(grid[b == r], t[b == r], levels, n[b == r], [300]))
    grid2, t2, n2, b2 = draw(6000)
    by_bin = apply_calibration_by_novelty(grid2, offs, b2, n=n2, n_edges=[300])
    pooled = apply_calibration(grid2, fit_calibration_by_n(grid, t, levels, n, [300]), n=n2, n_edges=[300])
    for g, lo_ok in [(by_bin, True), (pooled, False)]:
        inside = (t2 >= g[:, 0]) & (t2 <= g[:, -1])
        cov = [inside[b2 == r].mean() for r in range(2)]
        if lo_ok:
            np.testing.assert_allclose(cov, [0.9, 0.9], atol=0.03)
        else:
            assert cov[1] < 0.85 and cov[0] > 0.95
    with pytest.raises(ValueError, match="novelty bin 1"):
        fit_calibration_by_novelty(grid[:300], t[:300], levels, n[:300], [300], b[:300], 2, 1.0)
    with pytest.raises(ValueError, match="bins must be"):
        apply_calibration_by_novelty(grid2, offs, np.full(len(t2), 2), n=n2, n_edges=[300])


def _model():
    torch.manual_seed(0)
    return MIEstimator(ModelConfig(**CFG)).eval()


def _novelty_for(model, rng, edges=(1.0,)):
    s = stats_dim(model.config)
    return NoveltyReference(mean=np.zeros(s), scale=np.ones(s), points=rng.normal(size=(50, s)).astype(np.float32),
                            k=3, edges=edges, train_scores=tuple(np.linspace(0.5, 3.0, 101)))


def test_checkpoint_round_trip_with_novelty_and_refusals(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = _model()
    rng = np.random.default_rng(4)
    ref = _novelty_for(model, rng)
    q = len(model.config.quantile_levels)
    cal = rng.normal(size=(2, 2, q)) * 0.1
    path = tmp_path / "nov.safetensors"
    save_checkpoint(path, model, limits=LIMITS, calibration=cal, calibration_n_edges=[200], calibration_novelty=ref)
    back, meta = load_checkpoint(path)
    got = meta["calibration_novelty"]
    np.testing.assert_array_equal(got.points, ref.points)
    assert got.edges == ref.edges and got.k == ref.k and got.train_scores == ref.train_scores
    np.testing.assert_allclose(meta["calibration"], cal)
    assert NOVELTY_POINTS not in back.state_dict()
    with pytest.raises(ValueError, match=r"shape \(2, 2, "):
        save_checkpoint(path, model, limits=LIMITS, calibration=cal[0], calibration_n_edges=[200], calibration_novelty=ref)
    with pytest.raises(ValueError, match="without calibration"):
        save_checkpoint(path, model, limits=LIMITS, calibration_novelty=ref)

    with safe_open(str(path), framework="pt") as f:
        meta_raw, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    cases = {
        "no_points": ({k: v for k, v in tensors.items() if k != NOVELTY_POINTS}, {}, "must come together"),
        "no_json": (tensors, {"calibration_novelty": "null"}, "must come together"),
        "bad_json": (tensors, {"calibration_novelty": json.dumps({"k": 3})}, "calibration_novelty"),
        "wrong_stats": (tensors, {"calibration_novelty": json.dumps({**ref.to_json(), "mean": [0.0] * 3,
                                                                    "scale": [1.0] * 3})}, "calibration_novelty"),
        "tampered": ({**tensors, NOVELTY_POINTS: tensors[NOVELTY_POINTS] + 1}, {}, "fingerprint"),
    }
    for name, (t, changes, msg) in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        save_file(t, str(bad), metadata={**meta_raw, **changes})
        with pytest.raises(CheckpointError, match=msg):
            load_checkpoint(bad)


def test_inference_takes_the_offsets_of_each_sets_novelty_bin(tmp_path):
    """One checkpoint, two bins with very different offsets: a typical set and one whose statistics
    lie far from every reference set each get their own bin's offsets, alone and in a batch."""
    model = _model()
    rng = np.random.default_rng(5)
    x0, y0 = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    x1 = rng.normal(size=(300, 3))
    y1 = x1 + 0.01 * rng.normal(size=(300, 3))
    stats = [prepare_batch([p], model.config).stats[0].double().numpy() for p in ((x0, y0), (x1, y1))]
    s = stats_dim(model.config)
    # reference points around the first set: it is typical (bin 0), the second is far (bin 1)
    pts = (stats[0] + 0.01 * rng.normal(size=(40, s))).astype(np.float32)
    ref = NoveltyReference(mean=np.zeros(s), scale=np.ones(s), points=pts, k=3, edges=(0.5,),
                           train_scores=tuple(np.linspace(0.0, 1.0, 101)))  # percentile = 100 x score, capped
    np.testing.assert_array_equal(novelty_bins(ref, np.stack(stats)), [0, 1])
    levels = np.asarray(model.config.quantile_levels)
    cal = np.stack([np.zeros((2, levels.size)), np.full((2, levels.size), 0.7)])  # (K=2, R=2, Q)
    plain, by_bin = tmp_path / "plain.safetensors", tmp_path / "by-bin.safetensors"
    save_checkpoint(plain, model, limits=LIMITS)
    save_checkpoint(by_bin, model, limits=LIMITS, calibration=cal, calibration_n_edges=[250], calibration_novelty=ref)
    q = (0.05, 0.5, 0.95)
    pairs = [(x0, y0), (x1, y1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        raw = infer.predict_mi_quantiles_batch(pairs, list(levels), checkpoint=plain)
        batch = infer.predict_mi_quantiles_batch(pairs, q, checkpoint=by_bin)
        single = np.stack([infer.predict_mi_quantiles(x, y, q, checkpoint=by_bin) for x, y in pairs])
    for i, shift in enumerate([0.0, 0.7]):
        want = np.maximum(np.expm1(interpolate_quantiles(levels, np.log1p(raw[i]) + shift, q)), 0.0)
        np.testing.assert_allclose(batch[i], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(single[i], want, rtol=1e-4, atol=1e-5)
    # the sample's novelty percentile comes with estimate_with_info and the CLI's --json (NaN / null without a reference)
    want = np.minimum(100 * novelty_scores(ref, np.stack(stats)), 100)
    est = infer.AmortizedMIEstimator(by_bin, on_out_of_range="ignore")
    got = [est.estimate_with_info(x, y).additional_information["novelty_percentile"] for x, y in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[1] == 100.0 and got[0] < 10
    assert np.isnan(infer.AmortizedMIEstimator(plain).estimate_with_info(x0, y0).additional_information["novelty_percentile"])
    npz = tmp_path / "pair.npz"
    np.savez(npz, x=x1, y=y1)
    import contextlib
    import io
    for ckpt, expect in ((by_bin, 100.0), (plain, None)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert infer.main([str(npz), "--checkpoint", str(ckpt), "--json", "--on-out-of-range", "ignore"]) == 0
        assert json.loads(buf.getvalue())["novelty_percentile"] == expect
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert infer.main([str(npz), "--checkpoint", str(by_bin), "--on-out-of-range", "ignore"]) == 0
    assert "novelty: percentile 100 of the training sets (unlike most training data" in buf.getvalue()
