"""Reporting scripts: scripts/ablation_table.py on a hand-written metrics log."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation_table.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_ablation_table_reads_evaluations(tmp_path):
    run = tmp_path / "ablate-x"
    run.mkdir()
    lines = [
        {"kind": "train", "step": 100, "loss": 0.2, "elapsed_s": 600.0},
        {"kind": "eval", "step": 100, "val_id": {"pinball": 0.15, "mae": 2.5}, "val_ood": {"pinball": 0.17, "mae": 3.0}},
        {"kind": "train", "step": 200, "loss": 0.1, "elapsed_s": 1200.0},
        {"kind": "eval", "step": 200, "val_id": {"pinball": 0.125, "mae": 2.25}},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (run / "config.json").write_text(json.dumps({"train": {"batch_size": 16, "grad_accum": 2},
                                                 "model": {"cell_layers": 0, "use_knn": True}}))
    r = _run(str(run))
    assert r.returncode == 0, r.stderr
    body = [s for s in r.stdout.splitlines() if s.startswith("| ablate-x")]
    assert body == [
        "| ablate-x | cell_layers=0, use_knn=True | 100 | 3200 | 10 | 0.1500 | 2.50 | 0.1700 | 3.00 |",
        "| ablate-x | cell_layers=0, use_knn=True | 200 | 6400 | 20 | 0.1250 | 2.25 | - | - |",
    ]


def test_ablation_table_rejects_a_directory_without_metrics(tmp_path):
    r = _run(str(tmp_path))
    assert r.returncode == 2 and "has no metrics.jsonl" in r.stderr
