#!/bin/bash
# Train on N nodes x 8 GPUs under SLURM, requeued on preemption, resuming from the latest state.
#
#   sbatch --nodes 2 scripts/slurm_train.sh configs/train/gpu.toml [--key value ...]
#
# How preemption works: SLURM sends SIGTERM to every task (and, with --signal, ahead of
# the time limit); train.py saves its state at the end of the current step and exits;
# this script then requeues the job, and the rerun starts with --resume. At most
# save_every steps are lost only if a node dies without a signal.
#SBATCH --job-name=amortized-mi
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:TERM@300
#SBATCH --output=logs/%x-%j.out

set -euo pipefail
CONFIG=${1:-configs/train/gpu.toml}
shift || true
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MAIN_PORT=${MAIN_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
mkdir -p logs

requeue() {
    echo "$(date) caught SIGTERM: forwarding to train.py, then requeueing ${SLURM_JOB_ID}"
    kill -TERM "$SRUN_PID" 2>/dev/null || true
    wait "$SRUN_PID" || true
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
trap requeue TERM

# One accelerate launcher per node; each starts GPUS_PER_NODE processes.
# --resume is harmless on the first run (it starts at step 0 when no state exists).
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file configs/accelerate/multinode.yaml \
    --num_machines $SLURM_NNODES --num_processes $NUM_PROCESSES \
    --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_IP --main_process_port $MAIN_PORT \
    train.py --config $CONFIG --resume $*" &
SRUN_PID=$!
wait "$SRUN_PID"
