"""metagen.tasks and metagen.config: determinism, holdouts, the MI target distribution,
bounds on dims and n, sample hygiene, and one-line ConfigErrors naming the field."""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from metagen.config import ConfigError, config_from_dict, config_to_dict, load_config, pair_matches
from metagen.families import FAMILY_CODES, FAMILY_NAMES
from metagen.tasks import TRANSFORM_CODES, Task, allowed_pairs, draw_task

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "metagen"
CHEAP_FAMILIES = {"gaussian_dense": 1.0, "gaussian_sparse": 1.0, "student_t": 1.0, "bimodal": 1.0,
                  "additive_uniform": 1.0, "staircase": 1.0, "gaussian_latent": 1.0}


def _raw(**over) -> dict:
    raw = {"name": "t", "num_sets": 100, "sets_per_shard": 10,
           "n": {"min": 10, "max": 200, "near_min_fraction": 0.1},
           "dims": {"min": 1, "max": 5},
           "mi": {"independent_fraction": 0.2, "uniform_max": 8.0, "tail_fraction": 0.1, "tail_max": 35.0},
           "families": dict(CHEAP_FAMILIES),
           "transforms": {"identity": 1.0, "asinh": 1.0, "linear": 1.0, "spiral": 1.0, "swiss_roll": 1.0}}
    for k, v in over.items():
        raw[k] = v
    return raw


@pytest.fixture(scope="module")
def tiny():
    return load_config(CONFIGS / "tiny.toml")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.toml")))
def test_shipped_configs_load_and_round_trip(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert cfg.name == name
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_draw_task_is_deterministic(tiny):
    for index in range(0, 40, 5):
        a, b = draw_task(tiny, 7, index), draw_task(tiny, 7, index)
        assert a == b                                         # every field but the sampler object
        xa, ya = a.sample()
        xb, yb = b.sample()
        assert xa.tobytes() == xb.tobytes() and ya.tobytes() == yb.tobytes()
        xc, _ = a.sample()
        assert xa.tobytes() == xc.tobytes()                   # sample() is repeatable


def test_draw_task_does_not_depend_on_order(tiny):
    forward = [draw_task(tiny, 3, i) for i in range(12)]
    backward = [draw_task(tiny, 3, i) for i in reversed(range(12))][::-1]
    assert forward == backward
    assert forward[5].sample()[0].tobytes() == backward[5].sample()[0].tobytes()


def test_different_indices_and_seeds_differ(tiny):
    tasks = [draw_task(tiny, 7, i) for i in range(30)]
    assert len({t.seed for t in tasks}) == 30
    assert len({(t.family, t.n, t.dx, t.dy, t.mi) for t in tasks}) > 25
    assert draw_task(tiny, 8, 0).seed != tasks[0].seed


def test_tasks_respect_bounds_and_samples_are_clean(tiny):
    fams, trs = set(), set()
    for i in range(100):
        t = draw_task(tiny, 11, i)
        assert tiny.dims.min <= t.dx <= tiny.dims.max and tiny.dims.min <= t.dy <= tiny.dims.max
        assert max(tiny.n.min, t.dx + t.dy + 2) <= t.n <= tiny.n.upper
        assert t.mi >= 0 and math.isfinite(t.mi) and 0 <= t.mi_stderr <= 0.0105
        assert FAMILY_CODES[t.family] == t.family_code and TRANSFORM_CODES[t.transform] == t.transform_code
        x, y = t.sample()
        assert x.dtype == np.float32 and y.dtype == np.float32
        assert x.shape == (t.n, t.dx) and y.shape == (t.n, t.dy)
        assert np.isfinite(x).all() and np.isfinite(y).all()
        fams.add(t.family)
        trs.add(t.transform)
    assert len(fams) >= 10 and len(trs) >= 12               # the tiny config exercises nearly everything


def test_near_min_n_is_drawn():
    cfg = config_from_dict(_raw(n={"min": 3, "max": 400, "near_min_fraction": 0.5}, dims={"min": 5, "max": 20}))
    ns = [(t.n, t.dx + t.dy) for t in (draw_task(cfg, 1, i) for i in range(60))]
    assert all(n >= d + 2 for n, d in ns)
    assert sum(n <= 2 * d + 2 for n, d in ns) >= 15


def test_n_tail_is_drawn():
    cfg = config_from_dict(_raw(n={"min": 10, "max": 50, "tail_max": 3000, "tail_fraction": 0.5}))
    ns = np.array([draw_task(cfg, 1, i).n for i in range(80)])
    assert ns.max() <= 3000 and (ns > 50).sum() >= 25


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("train*.toml")))  # every training config
def test_train_config_never_draws_held_out_pairs(name):
    train = load_config(CONFIGS / name)
    ood = load_config(CONFIGS / "test_ood.toml")
    assert train.exclude and set(train.exclude) == set(ood.only)
    for f, t in allowed_pairs(train):
        assert not any(pair_matches(p, f, t) for p in train.exclude)
    # the draw itself: train restricted to held-out families (cheap and decisive)
    raw = config_to_dict(train)
    raw["families"] = {"student_t": 1.0, "gaussian_sparse": 1.0, "bimodal": 1.0}
    raw["dims"] = {"min": 1, "max": 6}
    raw["n"] = {"min": 10, "max": 50}
    cfg = config_from_dict(raw)
    seen = set()
    for i in range(200):
        t = draw_task(cfg, 5, i)
        assert not any(pair_matches(p, t.family, t.transform) for p in train.exclude), (t.family, t.transform)
        seen.add(t.family)
    assert {"student_t", "gaussian_sparse", "bimodal"} <= seen


def _assert_draws_only(config, pairs, seed: int) -> None:
    """40 small draws of `config` (without the slow Monte Carlo mixture family) all match one of `pairs`."""
    raw = config_to_dict(config)
    raw["families"].pop("mixture")                 # Monte Carlo MI: slower, covered elsewhere
    raw["dims"], raw["n"] = {"min": 1, "max": 8}, {"min": 10, "max": 60}
    cfg = config_from_dict(raw)
    for i in range(40):
        t = draw_task(cfg, seed, i)
        assert any(pair_matches(p, t.family, t.transform) for p in pairs), (t.family, t.transform)


def test_ood_config_draws_only_held_out_pairs():
    ood = load_config(CONFIGS / "test_ood.toml")
    _assert_draws_only(ood, ood.only, seed=9)


def test_diagnostic_configs_hold_what_they_say():
    """diag_all_pairs.toml is train_geometry.toml with the held-out pairs allowed; diag_heldout_pairs.toml
    draws only them (both are for measuring the shift, never for a shipped model: named diag_*, not train*)."""
    ood = load_config(CONFIGS / "test_ood.toml")
    base = config_to_dict(load_config(CONFIGS / "train_geometry.toml"))
    every = config_to_dict(load_config(CONFIGS / "diag_all_pairs.toml"))
    assert every["exclude"] == [] and every["only"] == []
    assert {k: v for k, v in every.items() if k not in ("name", "seed", "num_sets", "exclude")} == \
        {k: v for k, v in base.items() if k not in ("name", "seed", "num_sets", "exclude")}
    held = load_config(CONFIGS / "diag_heldout_pairs.toml")
    assert set(held.only) == set(ood.only) and not held.exclude
    assert all(any(pair_matches(p, f, t) for p in ood.only) for f, t in allowed_pairs(held))
    _assert_draws_only(held, ood.only, seed=11)


def test_independent_fraction_is_honoured():
    cfg = config_from_dict(_raw(mi={"independent_fraction": 0.3, "uniform_max": 8.0}))
    tasks = [draw_task(cfg, 2, i) for i in range(300)]
    zero = np.array([t.mi == 0.0 for t in tasks])
    ind = np.array([t.family == "independent" for t in tasks])
    assert (zero == ind).all()
    se = math.sqrt(0.3 * 0.7 / 300)
    assert abs(ind.mean() - 0.3) < 4 * se


def test_mi_distribution_is_honoured():
    # dims fixed at 8 x 8 so no family clips the target (capacity 48 nats): the MI of
    # dependent sets must follow 0.8 U[0, 8] + 0.2 logU[8, 35] (Kolmogorov-Smirnov).
    cfg = config_from_dict(_raw(dims={"min": 8, "max": 8}, families={"gaussian_dense": 1.0, "student_t": 1.0,
                                                                       "gaussian_random": 1.0},
                                mi={"independent_fraction": 0.0, "uniform_max": 8.0, "tail_fraction": 0.2,
                                    "tail_max": 35.0}))
    mi = np.array([draw_task(cfg, 4, i).mi for i in range(300)])

    def cdf(v):
        v = np.asarray(v, dtype=float)
        body = np.clip(v / 8.0, 0, 1)
        tail = np.clip(np.log(np.maximum(v, 8.0) / 8.0) / np.log(35.0 / 8.0), 0, 1)
        return 0.8 * body + 0.2 * tail

    assert stats.kstest(mi, cdf).pvalue > 1e-3
    assert mi.max() > 20                                     # the tail is reached


BAD = [
    ({"num_sets": 0}, "num_sets"),
    ({"num_sets": "many"}, "num_sets"),
    ({"sets_per_shard": -1}, "sets_per_shard"),
    ({"n": {"min": 10, "max": 5}}, "n.max"),
    ({"n": {"min": 10, "max": 11}}, "n.max"),               # below 2 * dims.max + 2
    ({"n": {"min": 10, "max": 100, "tail_fraction": 1.5}}, "n.tail_fraction"),
    ({"n": {"min": 10, "max": 100, "bogus": 1}}, "n.bogus"),
    ({"dims": {"min": 0, "max": 4}}, "dims.min"),
    ({"mi": {"independent_fraction": -0.1}}, "mi.independent_fraction"),
    ({"mi": {"uniform_max": 10.0, "tail_max": 5.0}}, "mi.tail_max"),
    ({"families": {"gaussian_dense": 1.0, "no_such": 1.0}}, "families.no_such"),
    ({"families": {"gaussian_dense": 0.0}}, "families"),
    ({"transforms": {"identity": -1.0}}, "transforms.identity"),
    ({"exclude": [["gaussian_dense"]]}, "exclude[0]"),
    ({"exclude": [["gaussian_dense", "no_such"]]}, "exclude[0]"),
    ({"only": [["gaussian_dense", "flow"]]}, "only"),      # nothing left to draw (flow weight 0)
    ({"name": 3}, "name"),
]


@pytest.mark.parametrize("over,field", BAD)
def test_bad_config_raises_one_line_config_error(over, field):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_raw(**over))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(field), msg


def test_missing_field_and_bad_toml(tmp_path):
    raw = _raw()
    del raw["name"]
    with pytest.raises(ConfigError, match=r"^name: missing"):
        config_from_dict(raw)
    p = tmp_path / "bad.toml"
    p.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"^config: invalid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^config: file not found"):
        load_config(tmp_path / "missing.toml")


def test_base_config_is_merged_table_by_table(tmp_path):
    """`base = ...`: tables merged key by key, other values replaced; the result equals the
    flat config written out in full, so stores (fingerprints of the resolved config) agree."""
    (tmp_path / "parent.toml").write_text((CONFIGS / "tiny.toml").read_text())
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.toml"
    child.write_text('base = "../parent.toml"\nname = "child"\nexclude = [["*", "spiral"]]\n'
                     '[mi]\ntail_fraction = 0.4\n[transforms]\nspiral = 2.0\nidentity = 0\n')
    got = load_config(child)
    flat = config_to_dict(load_config(CONFIGS / "tiny.toml"))
    flat["name"] = "child"
    flat["exclude"] = [["*", "spiral"]]
    flat["mi"]["tail_fraction"] = 0.4
    flat["transforms"] = {k: v for k, v in {**flat["transforms"], "spiral": 2.0}.items() if k != "identity"}
    assert got == config_from_dict(flat)
    grandchild = tmp_path / "grandchild.toml"   # a chain of bases
    grandchild.write_text('base = "sub/child.toml"\nseed = 9\n')
    assert load_config(grandchild) == dataclasses.replace(got, seed=9)


def test_derived_shipped_configs_differ_from_their_base_only_where_they_say():
    base = config_to_dict(load_config(CONFIGS / "train_geometry.toml"))
    compose = config_to_dict(load_config(CONFIGS / "train_compose.toml"))
    hi_mi = config_to_dict(load_config(CONFIGS / "train_geometry_hi_mi.toml"))
    assert {k for k in base if base[k] != compose[k]} == {"name", "seed", "num_sets", "transforms"}
    assert set(compose["transforms"]) > set(base["transforms"])
    assert all(compose["transforms"][k] == w for k, w in base["transforms"].items())
    assert {k for k in base if base[k] != hi_mi[k]} == {"name", "mi"}
    assert hi_mi["mi"] == {**base["mi"], "tail_fraction": 0.30}


def test_base_config_errors(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('base = "b.toml"\n')
    b.write_text('base = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"^base: configs inherit from each other in a cycle \(a.toml -> b.toml -> a.toml\)"):
        load_config(a)
    a.write_text('base = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match=r"^base: file not found: .*nowhere.toml"):
        load_config(a)
    a.write_text("base = 3\n")
    with pytest.raises(ConfigError, match=r"^base: must be the path of another config file, got 3"):
        load_config(a)
    b.write_text("name = \n")
    a.write_text('base = "b.toml"\n')
    with pytest.raises(ConfigError, match=r"^base: invalid TOML"):
        load_config(a)


def test_family_and_transform_codes_are_stable():
    # appended-only tables: the first entries must never move
    assert list(FAMILY_CODES)[:3] == ["independent", "gaussian_dense", "gaussian_sparse"]
    assert FAMILY_CODES == {n: i for i, n in enumerate(FAMILY_NAMES)}
    assert list(TRANSFORM_CODES)[:3] == ["identity", "half_cube", "asinh"]


def test_task_mi_matches_sample_for_gaussian_identity():
    # end to end: a Gaussian set with identity transform; the Gaussian MLE MI of a large
    # sample agrees with the task's MI (independent of the family code path).
    cfg = config_from_dict(_raw(dims={"min": 3, "max": 3}, n={"min": 20000, "max": 20000},
                                families={"gaussian_random": 1.0}, transforms={"identity": 1.0},
                                mi={"independent_fraction": 0.0, "uniform_max": 3.0}))
    for i in range(3):
        t = draw_task(cfg, 1, i)
        x, y = t.sample()
        c = np.cov(np.c_[x, y].astype(np.float64).T)
        est = 0.5 * (np.linalg.slogdet(c[:3, :3])[1] + np.linalg.slogdet(c[3:, 3:])[1] - np.linalg.slogdet(c)[1])
        assert abs(est - t.mi) < 0.03 + 0.01 * t.mi, (est, t.mi)


def test_fixed_n_values_are_honoured(tmp_path):
    from metagen.config import load_config
    from metagen.tasks import draw_task

    text = (CONFIGS / "tiny.toml").read_text()
    assert "[n]\nmin = 10\nmax = 300\n" in text
    text = text.replace("[n]\nmin = 10\nmax = 300\n", "[n]\nmin = 10\nmax = 300\nvalues = [20, 100]\n")
    p = tmp_path / "fixed.toml"
    p.write_text(text)
    cfg = load_config(p)
    ns = {draw_task(cfg, 0, i).n for i in range(60)}
    assert ns <= {20, 100} and 100 in ns
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("values = [20, 100]", "values = [2, 100]"))
    with pytest.raises(ConfigError, match="n.values"):
        load_config(bad)
