#!/usr/bin/env bash
# One GPU lease, one command: how fast the training step runs on the GPU, how fast the
# stream loader feeds it, and a bf16 continuation of the shipped checkpoint on fresh sets.
#
#   OUT=/some/folder bash scripts/gpu_run.sh          # on the GPU machine, in the repo root
#
# Writes to $OUT (8 files at most): env.txt (versions, timings, GPU use during training),
# bench.txt (training-step sets/s, fp32 vs bf16, batch 128, light and full model),
# loader.json (stream loader with $WORKERS workers), train.log, metrics.jsonl, config.json,
# best.safetensors and last.safetensors of the run (or the newest saved weights,
# state.safetensors, if the time limit stopped it).
# The run streams fresh sets from $STREAM_CONFIG (default configs/metagen/train_geometry.toml,
# the distribution the shipped checkpoint was last trained on; no 6 GB store to copy),
# validates on the first 300 / 200 sets of val-id / val-ood (same configs and seeds as the
# README's validation stores, generated here), and fits its step count to TRAIN_SECONDS
# from the measured loader rate. Wheels in .whl/ are installed first when normflows or
# zarr is missing (the GPU image lacks both). Settings (environment): TRAIN_SECONDS (360), WORKERS (CPUs - 1), BATCH (64),
# LR (2e-4), INIT (data/default.safetensors; INIT= for a network from scratch, e.g.
# INIT= LR=1e-3 TRAIN_ARGS="--model.dim 64"; with INIT set, TRAIN_ARGS="--model.dim 64" widens
# its weights first, same function, model.network.widen), STREAM_CONFIG, PY (python3), SKIP_BENCH (1: skip step 2),
# STEPS (set: skip step 3 and train this many steps), STREAM_POOL (the config's), TRAIN_ARGS
# (more train.py options); for a dry run on a CPU:
#   OUT=/tmp/o DEVICE=cpu TRAIN_SECONDS=30 WORKERS=1 BENCH_BATCH=8 BENCH_STEPS=1 bash scripts/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the results folder}"
PY=${PY:-python3}
TRAIN_SECONDS=${TRAIN_SECONDS:-360}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
BATCH=${BATCH:-64}
LR=${LR:-2e-4}
INIT=${INIT-data/default.safetensors}   # set but empty: from scratch
STREAM_CONFIG=${STREAM_CONFIG:-configs/metagen/train_geometry.toml}
WORK=${WORK:-/tmp/gpu_run}
DEVICE=${DEVICE:-cuda}
BENCH_BATCH=${BENCH_BATCH:-128}
BENCH_STEPS=${BENCH_STEPS:-10}
DEADLINE=${DEADLINE:-560}     # seconds: train.py is stopped (state saved) in time to copy its files out by then
mkdir -p "$OUT" "$WORK"
if compgen -G ".whl/*.whl" >/dev/null && ! "$PY" -c "import normflows, zarr" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export DEVICE PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
stamp() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$OUT/env.txt"; }

# 0. what is here; fail fast if an import or the GPU is missing
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; nproc; } >> "$OUT/env.txt"
"$PY" - <<'PY' | tee -a "$OUT/env.txt"
import accelerate, normflows, numpy, scipy, torch, zarr
import metagen.tasks, train, training.data  # noqa: F401  (the project imports)
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__,
      "scipy", scipy.__version__, "zarr", zarr.__version__, "accelerate", accelerate.__version__,
      "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
assert torch.cuda.is_available() or __import__("os").environ.get("DEVICE") == "cpu", "no GPU visible"
PY
stamp "imports ok; workers $WORKERS"

# 1. validation stores (prefixes of val-id / val-ood)
"$PY" -m metagen generate --config configs/metagen/test_id.toml --out "$WORK/val-id" --workers "$WORKERS" --seed 12 --num-sets 300 >/dev/null 2>&1
"$PY" -m metagen generate --config configs/metagen/test_ood.toml --out "$WORK/val-ood" --workers "$WORKERS" --seed 13 --num-sets 200 >/dev/null 2>&1
stamp "validation stores made"

# 2. training-step throughput on the GPU, fp32 vs bf16: the shipped light model and the full one
[ "${SKIP_BENCH:-0}" = 1 ] || {
"$PY" scripts/bench_model.py --device "$DEVICE" --threads 1 --batch "$BENCH_BATCH" --steps "$BENCH_STEPS" --sizes 500x16,2000x16,500x64 \
    --precision fp32,bf16 --set cell_layers=0 >> "$OUT/bench.txt" 2>&1 || stamp "bench light failed"
"$PY" scripts/bench_model.py --device "$DEVICE" --threads 1 --batch "$BENCH_BATCH" --steps "$BENCH_STEPS" --sizes 500x16,2000x16,500x64 \
    --precision fp32,bf16 >> "$OUT/bench.txt" 2>&1 || stamp "bench full failed"
stamp "step benchmarks done"; }

# 3. stream loader rate with all workers (two windows of workers x pool micro-batches)
POOL_ARGS=${STREAM_POOL:+--stream_pool $STREAM_POOL}
if [ -z "${STEPS:-}" ]; then
"$PY" scripts/bench_train_data.py --config configs/train/gpu.toml --stream-config "$STREAM_CONFIG" \
    --workers "$WORKERS" --batches $(( 2 * WORKERS * ${STREAM_POOL:-32} )) --loader-only --batch_size "$BATCH" $POOL_ARGS \
    --out "$OUT/loader.json" > /dev/null 2>> "$OUT/env.txt"
RATE=$("$PY" -c "import json; print(json.load(open('$OUT/loader.json'))['sources']['stream']['loader'][0]['batches_per_s_with_start'])")
STEPS=$("$PY" -c "print(max(200, int(0.9 * $RATE * $TRAIN_SECONDS) // 100 * 100))")
stamp "loader $RATE batches/s of $BATCH -> $STEPS steps"
fi

# 4. bf16 continuation of the shipped checkpoint (or a network from scratch) on streamed sets
RUN="$WORK/run"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 10 > "$WORK/gpu_use.csv" 2>/dev/null &
MONITOR=$!
set +e
LIMIT=$(( TRAIN_SECONDS + 90 < DEADLINE - SECONDS - 40 ? TRAIN_SECONDS + 90 : DEADLINE - SECONDS - 40 ))
stamp "train.py limited to $LIMIT s"
timeout -s TERM -k 20 "$LIMIT" "$PY" train.py --config configs/train/gpu.toml \
    --train_store none --stream_config "$STREAM_CONFIG" \
    --val_id_store "$WORK/val-id" --val_ood_store "$WORK/val-ood" --max_val_sets 300 \
    ${INIT:+--init-from "$INIT"} --out_dir "$RUN" --steps "$STEPS" --batch_size "$BATCH" --lr "$LR" --min_lr 1e-5 \
    --warmup_steps 100 --n_train_full_fraction 0.8 --eval_every $(( STEPS / 4 )) --save_every 500 \
    --log_every 50 --num_workers "$WORKERS" --threads 1 --mixed_precision bf16 $POOL_ARGS ${TRAIN_ARGS:-} > "$OUT/train.log" 2>&1
stamp "train.py exit $?"
set -e
kill "$MONITOR" 2>/dev/null || true
{ echo "GPU use during training (every 10 s):"; cat "$WORK/gpu_use.csv"; } >> "$OUT/env.txt" 2>/dev/null || true
cp "$RUN"/metrics.jsonl "$RUN"/config.json "$OUT"/ 2>/dev/null || true
for f in best last; do [ -f "$RUN/$f.safetensors" ] && cp "$RUN/$f.safetensors" "$OUT/"; done
newest=$(ls -d "$RUN"/states/step-* 2>/dev/null | tail -1 || true)
if [ ! -f "$RUN/last.safetensors" ] && [ -n "$newest" ] && [ -f "$newest/model.safetensors" ]; then
    cp "$newest/model.safetensors" "$OUT/state.safetensors"
fi
stamp "done"
