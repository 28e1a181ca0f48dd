#!/usr/bin/env bash
# Reproduce the README's results: build the benchmark stores (if missing), score the
# shipped checkpoint against the baselines with the eval harness, score it on the same
# tasks at n = 100, 500 and 1,000 (eval.paired_n), time them, and rewrite the model card and the README's tables.
#   bash scripts/make_results.sh                 # all of it (~1-1.5 h on 2 cores; KSG at n = 5,000 is most of the test stores)
#                                                # the bench and test stores run side by side (JOBS=1: one after the other);
#                                                # session 24, stores already built: about 16 minutes
#                                                # session 26, stores built, no earlier results to reuse: 14 minutes
#   CHECKPOINT=runs/x/best.safetensors RESULTS_DIR=/tmp/r bash scripts/make_results.sh
#   REUSE=1 bash scripts/make_results.sh         # new checkpoint: copy the baselines' per-set results
#                                                # from the previous run's results.json (minutes, not an hour)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
S=${STORES:-$HOME/.cache/amortized-mi/stores}
OUT=${RESULTS_DIR:-results}
CKPT=${CHECKPOINT:-data/default.safetensors}
TRAIN_STORE=${TRAIN_STORE:-$S/train50k}
LIMIT=${MAX_SETS:+--max-sets $MAX_SETS}     # MAX_SETS=12 for a quick dry run
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$OUT"

for b in bench_id bench_ood; do   # n fixed to 100 / 500 / 1,000: the per-n comparisons
    $PY -m metagen generate --config configs/metagen/$b.toml --out "$S/${b/_/-}" --no-progress
done
for b in test_id test_ood; do     # n from 10 to 5,000, a quarter barely above dx + dy: what users meet
    $PY -m metagen generate --config configs/metagen/$b.toml --out "$S/${b/_/-}" --num-sets 2000 --no-progress
done
# plain correlated Gaussians (no transform, 1-5 dims per block, n 300-2,000): the simplest data users meet
$PY -m metagen generate --config configs/metagen/gaussian_check.toml --out "$S/gaussian-check" --no-progress
[ -d "$TRAIN_STORE" ] || { echo "make_results.sh: the train_mean floor needs the training store $TRAIN_STORE (README, 'Rebuilding')"; exit 2; }

reuse() {  # --reuse OLD_RESULTS when REUSE=1 and an earlier run left one
    if [ "${REUSE:-0}" = 1 ] && [ -f "$1/results.json" ]; then
        cp "$1/results.json" "$1/results.previous.json"
        echo "--reuse $1/results.previous.json"
    fi
}
bench_lane() {  # the bench stores, then the paired runs
    for b in bench-id bench-ood; do
        # every set: the model, KSG (k=3), the Gaussian-copula baseline and the training-mean floor
        $PY -m eval.harness --store "$S/$b" --out "$OUT/$b" --checkpoint "$CKPT" \
            --estimators model,ksg,gaussian,train_mean --train-store "$TRAIN_STORE" --threads 1 --no-progress $LIMIT $(reuse "$OUT/$b") > /dev/null
        # slow estimators on a stratified subset: bootstrap intervals for KSG and InfoNCE at its default budget
        $PY -m eval.harness --store "$S/$b" --out "$OUT/$b-subset" --checkpoint "$CKPT" \
            --estimators model,ksg_boot,infonce --max-sets ${MAX_SETS:-30} --n-boot 30 --threads 1 --no-progress $(reuse "$OUT/$b-subset") > /dev/null
    done
    for b in id:34 ood:35; do  # the same 300 tasks (new seeds) at n = 100, 500 and 1,000: paired width and error vs n
        $PY -m eval.paired_n --config "configs/metagen/bench_${b%%:*}.toml" --seed "${b##*:}" --num-tasks "${MAX_SETS:-300}" \
            --n 100,500,1000 --out "$OUT/paired-n-${b%%:*}" --checkpoint "$CKPT" --threads 1 --no-progress > /dev/null
    done
}
test_lane() {
    for b in test-id test-ood; do
        $PY -m eval.harness --store "$S/$b" --out "$OUT/$b" --checkpoint "$CKPT" \
            --estimators model,ksg,gaussian,train_mean --train-store "$TRAIN_STORE" --threads 1 --no-progress $LIMIT $(reuse "$OUT/$b") > /dev/null
    done
    $PY -m eval.harness --store "$S/gaussian-check" --out "$OUT/gaussian-check" --checkpoint "$CKPT" \
        --estimators model,ksg,gaussian --threads 1 --no-progress $LIMIT $(reuse "$OUT/gaussian-check") > /dev/null
}
# two lanes, one core each (JOBS=1: one after the other); every step is single-threaded
if [ "${JOBS:-2}" -ge 2 ]; then
    bench_lane & bench_pid=$!
    test_lane & test_pid=$!
    wait "$bench_pid" || { echo "make_results.sh: the bench lane failed" >&2; kill "$test_pid" 2>/dev/null; exit 1; }
    wait "$test_pid" || { echo "make_results.sh: the test lane failed" >&2; exit 1; }
else
    bench_lane
    test_lane
fi
# timed alone, after both lanes: a benchmark beside other work measures the other work
$PY -m eval.bench_speed --threads 1 --rounds 3 --checkpoint "$CKPT" | tee "$OUT/speed.txt"
$PY scripts/results_tables.py "$OUT" > "$OUT/SUMMARY.md"
$PY scripts/write_model_card.py --checkpoint "$CKPT" --results "$OUT" --out "${MODEL_CARD:-data/MODEL_CARD.md}"
[ "$OUT" = results ] && $PY scripts/sync_readme_results.py --results "$OUT"   # the README's tables (its results markers)
echo "results in $OUT/"
