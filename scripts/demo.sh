#!/usr/bin/env bash
# The main job end to end, on a fresh machine:
#   1. set up .venv (first run only),
#   2. generate a small meta-dataset with metagen, inspect and verify it,
#   3. train a tiny model on it for a few seconds,
#   4. predict MI quantiles for a held-out sample with the tiny model and with
#      the shipped default checkpoint (data/default.safetensors).
# Everything it writes goes under $DEMO_DIR (default ~/.cache/amortized-mi/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DEMO_DIR=${DEMO_DIR:-$HOME/.cache/amortized-mi/demo}
mkdir -p "$DEMO_DIR"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}

echo "== 1. generate a tiny meta-dataset (resumes if already there)"
$PY -m metagen generate --config configs/metagen/tiny.toml --out "$DEMO_DIR/train" --seed 1 --workers 2 --no-progress
$PY -m metagen generate --config configs/metagen/tiny.toml --out "$DEMO_DIR/val" --seed 2 --num-sets 64 --no-progress
$PY -m metagen inspect "$DEMO_DIR/train"
$PY -m metagen verify "$DEMO_DIR/train"

echo "== 2. train a tiny model briefly"
$PY train.py --config configs/train/tiny.toml --out_dir "$DEMO_DIR/run" \
    --train_store "$DEMO_DIR/train" --val_id_store "$DEMO_DIR/val" --val_ood_store "$DEMO_DIR/val"

echo "== 3. draw a held-out task and predict its MI"
$PY -m metagen sample --config configs/metagen/test_ood.toml --seed 7 --index 0 --out "$DEMO_DIR/sample.npz"
echo "-- tiny model trained just now:"
$PY infer.py "$DEMO_DIR/sample.npz" --checkpoint "$DEMO_DIR/run/best.safetensors" --on-out-of-range warn
echo "-- shipped default checkpoint:"
$PY infer.py "$DEMO_DIR/sample.npz" --on-out-of-range warn
