#!/usr/bin/env bash
# Accuracy per CPU time of model variants: each trains from scratch on the 50k-set store
# with the same short schedule, one after the other (same machine conditions), then
#   python scripts/ablation_table.py runs/ablate-*      # validation pinball / MAE vs time
# Variants: base (default ModelConfig: one cell layer, kNN statistics), nocell (no 2D cell layer),
# noknn (no kNN statistics); each sets both switches, so cpu.toml's [model] does not leak in.
#   STEPS=1200 bash scripts/ablate.sh [base nocell noknn]
set -euo pipefail
cd "$(dirname "$0")/.."
S=${STORES:-$HOME/.cache/amortized-mi/stores}
STEPS=${STEPS:-1200}
common=(--config configs/train/cpu.toml --train_store "$S/train50k" --steps "$STEPS" --warmup_steps $((STEPS / 10))
        --lr 1e-3 --min_lr 5e-5 --eval_every $((STEPS / 3)) --save_every $((STEPS / 3)) --n_train_full_fraction 0.5 --n_train_max 500
        --num_workers 0 --max_val_sets 500)
declare -A extra=([base]="--model.cell_layers 1 --model.use_knn true" [nocell]="--model.cell_layers 0 --model.use_knn true"
               [noknn]="--model.cell_layers 1 --model.use_knn false")
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base nocell noknn)
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
for v in "${variants[@]}"; do
    [ -n "${extra[$v]+set}" ] || { echo "ablate.sh: unknown variant $v (base, nocell, noknn)"; exit 2; }
    # shellcheck disable=SC2086
    .venv/bin/python train.py "${common[@]}" --out_dir "runs/ablate-$v" ${extra[$v]} > "runs/ablate-$v.log" 2>&1
done
