"""eval.paired_n: the same tasks at several n, paired width changes, CLI and its errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from eval import metrics
from eval.paired_n import draw_paired_tasks, main, paired_summary, parse_sizes, sets_at
from metagen.config import load_config
from metagen.tasks import draw_task

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "metagen" / "tiny.toml"
LEVELS = metrics.DEFAULT_LEVELS


@pytest.mark.parametrize("spec", ["", "100", "500,100", "100,100", "2,10", "a,b"])
def test_parse_sizes_rejects(spec):
    with pytest.raises(ValueError, match="--n"):
        parse_sizes(spec)


def test_parse_sizes_accepts_increasing():
    assert parse_sizes("100, 500,1000") == [100, 500, 1000]


def test_draw_paired_tasks_keeps_the_tasks_that_fit_in_index_order():
    cfg = load_config(TINY)
    tasks, skipped = draw_paired_tasks(cfg, 3, 12, min_n=10)
    last = tasks[-1].index
    fits = [i for i in range(last + 1) if (lambda t: t.dx + t.dy + 2 <= 10)(draw_task(cfg, 3, i))]
    assert [t.index for t in tasks] == fits
    assert skipped == last + 1 - len(fits)
    assert skipped > 0  # tiny.toml has dims up to 6 + 6, so some need more than 10 rows
    with pytest.raises(ValueError, match="num-tasks"):
        draw_paired_tasks(cfg, 3, 0, min_n=10)
    with pytest.raises(ValueError, match="fit n = 3"):
        draw_paired_tasks(cfg, 3, 5, min_n=3)  # dx + dy + 2 >= 4 for every task


def test_sets_at_samples_the_same_task_at_each_n():
    cfg = load_config(TINY)
    tasks, _ = draw_paired_tasks(cfg, 5, 4, min_n=20)
    small, large, again = sets_at(tasks, 20), sets_at(tasks, 60), sets_at(tasks, 60)
    for i, t in enumerate(tasks):
        assert small.info(i).mi == large.info(i).mi == t.mi
        xs, ys = small.get(i)
        xl, yl = large.get(i)
        assert xs.shape == (20, t.dx) and ys.shape == (20, t.dy)
        assert xl.shape == (60, t.dx) and yl.shape == (60, t.dy)
        np.testing.assert_array_equal(xl, again.get(i)[0])  # deterministic: the task's own seed


def _record(mi: float, center: float, width90: float, group: str = "flows") -> dict:
    """A harness record whose model quantiles are linear in the level: the 90% interval is width90 wide."""
    q = [center + width90 * (lv - 0.5) / 0.9 for lv in LEVELS]
    return {"mi": mi, "groups": {"family_group": [group]},
            "predictions": {"model": {"quantiles": q, "time_s": 0.001}, "ksg": {"quantiles": [center - 1.0] * len(LEVELS), "time_s": 0.01}}}


def test_paired_summary_hand_built():
    # two tasks; 90% widths 4 -> 2 and 3 -> 3.5 between n = 10 and n = 20
    recs = {10: [_record(1.0, 1.0, 4.0), _record(5.0, 4.0, 3.0, "spirals")],
            20: [_record(1.0, 1.5, 2.0), _record(5.0, 5.0, 3.5, "spirals")]}
    s = paired_summary(recs, LEVELS, ["model", "ksg"], "model")
    assert s["tasks"] == 2 and s["n"] == [10, 20]
    (c50, c90) = s["width_change"]
    assert c90["coverage"] == 0.9 and c50["coverage"] == 0.5
    assert c90["mean_from"] == pytest.approx(3.5) and c90["mean_to"] == pytest.approx(2.75)
    assert c90["mean_change"] == pytest.approx(-0.75)
    assert c90["se_change"] == pytest.approx(math.sqrt(((-2 + 0.75) ** 2 + (0.5 + 0.75) ** 2) / 1) / math.sqrt(2))
    assert c90["ratio_geomean"] == pytest.approx(math.sqrt(0.5 * 3.5 / 3.0))
    assert c90["share_narrower"] == pytest.approx(0.5)
    assert c50["mean_change"] == pytest.approx(-0.75 * 0.5 / 0.9)  # linear quantiles: width scales with coverage
    # MAE: |1 - 1| and |4 - 5| at n = 10; ksg reads center - 1
    assert s["per_n"][10]["model"]["mae"] == pytest.approx(0.5)
    assert s["per_n"][20]["ksg"]["mae"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["per_n"][10]["model"]["coverage"]["90"] == pytest.approx(1.0)
    assert s["width90_by_mi"]["(0,1]"] == {10: pytest.approx(4.0), 20: pytest.approx(2.0)}
    assert s["width90_by_mi"]["(3,8]"] == {10: pytest.approx(3.0), 20: pytest.approx(3.5)}
    assert s["by_group"]["spirals"][20]["bias"] == pytest.approx(0.0)
    assert s["by_group"]["flows"][20]["bias"] == pytest.approx(0.5)


def test_paired_summary_refuses_unpaired_records():
    recs = {10: [_record(1.0, 1.0, 4.0)], 20: [_record(2.0, 1.0, 4.0)]}
    with pytest.raises(ValueError, match="same order"):
        paired_summary(recs, LEVELS, ["model"], "model")


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "paired"
    rc = main(["--config", str(TINY), "--seed", "7", "--num-tasks", "3", "--n", "20,40", "--out", str(out),
               "--estimators", "model,gaussian", "--threads", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    data = json.loads((out / "paired.json").read_text())
    mis = {n: [r["mi"] for r in recs] for n, recs in data["records"].items()}
    assert list(mis) == ["20", "40"] and mis["20"] == mis["40"] and len(mis["20"]) == 3
    assert [r["n"] for r in data["records"]["40"]] == [40, 40, 40]
    assert data["config"]["num_tasks"] == 3 and data["config"]["n"] == [20, 40]
    md = (out / "paired.md").read_text()
    assert "| 90% | 20 -> 40 | 3 |" in md


@pytest.mark.parametrize("args, message", [
    (["--n", "100"], "at least two"),
    (["--num-tasks", "0"], "num-tasks"),
    (["--estimators", "model,nope"], "unknown estimator"),
    (["--config", "/nonexistent/x.toml"], "not found"),
    (["--estimators", "train_mean"], "needs --train-store"),
])
def test_cli_errors(tmp_path, capsys, args, message):
    base = {"--config": str(TINY), "--out": str(tmp_path / "o"), "--estimators": "gaussian", "--num-tasks": "2",
            "--n": "20,40"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = [a for kv in base.items() for a in kv] + ["--no-progress"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
