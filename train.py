"""Train the amortized MI estimator (nanoGPT-style custom loop on accelerate).

Launch recipes (copy and paste):

    # tiny demo / tests on one CPU process (seconds)
    python train.py --config configs/train/tiny.toml

    # the default checkpoint on 2 CPU cores (hours; builds stores under ~/.cache/amortized-mi)
    python train.py --config configs/train/cpu.toml

    # one GPU
    accelerate launch --config_file configs/accelerate/1gpu.yaml train.py --config configs/train/gpu.toml

    # eight GPUs on one node
    accelerate launch --config_file configs/accelerate/8gpu.yaml train.py --config configs/train/gpu.toml

    # two nodes x 8 GPUs: run on every node, with machine_rank 0 / 1 and main_process_ip set
    accelerate launch --config_file configs/accelerate/multinode.yaml --machine_rank 0 \
        --main_process_ip 10.0.0.1 train.py --config configs/train/gpu.toml

    # SLURM (N nodes, requeued on preemption, resumes from the latest state)
    sbatch --nodes 2 scripts/slurm_train.sh configs/train/gpu.toml

    # two CPU processes (DDP over gloo), e.g. to test the distributed path on a laptop.
    # (accelerate 1.x's `--cpu --num_processes 2` starts ONE process unless MPI is set
    # up; the torchrun launcher below works, train.py picks gloo when there is no GPU)
    accelerate launch --multi_gpu --num_processes 2 train.py --config configs/train/tiny.toml
    torchrun --nproc_per_node 2 train.py --config configs/train/tiny.toml

    # resume the run in out_dir from its latest saved state (same data order)
    python train.py --config configs/train/tiny.toml --resume

    # continue training the shipped model on new data
    python train.py --config configs/train/cpu.toml --init-from data/default.safetensors

Any config field can be overridden as ``--key value`` (model fields as ``--model.key
value``); unknown keys or wrong types exit with code 2 and a one-line message.

Outputs in ``out_dir``: ``metrics.jsonl`` (one JSON object per line, ``kind`` is
``"train"``: step, loss, lr, sets_per_s, n_mean, elapsed_s, cpu_s; ``"eval"``: step and, per
split ``val_id`` / ``val_ood``, the keys of ``training.evaluate.split_metrics``;
``"batch"`` with ``log_batch_hash``: step, micro, hash, loss), ``states/step-XXXXXXXX``
(accelerator.save_state plus train_state.json; the last ``keep_states`` are kept),
``best.safetensors`` (best val_id ``select_metric``), ``last.safetensors`` and, with
``keep_evals`` (default), ``evals/step-XXXXXXXX.safetensors`` for every validation (so a
checkpoint can be chosen afterwards by another rule, e.g. interval coverage on the
validation stores, or averaged: ``scripts/average_checkpoints.py``), all written with
``model.checkpoint.save_checkpoint`` (limits, calibration, info).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import ConfigError, TrainConfig, load_train_config

STATE_PREFIX = "step-"
STATE_FILE = "train_state.json"


# ----------------------------------------------------------------------------- schedule
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to min_lr."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse the command line into (TrainConfig, flags); ConfigError on bad config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--config", default=None, help="TOML file (configs/train/*.toml)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest state in out_dir")
    parser.add_argument("--init-from", default=None, help="start from the weights of a .safetensors checkpoint")
    parser.add_argument("--max-steps-this-run", type=int, default=None,
                        help="stop (saving state) after this many steps of this run")
    args, rest = parser.parse_known_args(argv)
    cfg = load_train_config(args.config, rest)
    if args.init_from is not None and not Path(args.init_from).is_file():
        raise ConfigError(f"--init-from: checkpoint {args.init_from!r} does not exist")
    return cfg, args


# ----------------------------------------------------------------------------- states
def list_states(out_dir: Path) -> list[Path]:
    """Complete saved states under out_dir/states, oldest first."""
    root = out_dir / "states"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir()
            if p.is_dir() and p.name.startswith(STATE_PREFIX) and p.name[len(STATE_PREFIX):].isdigit()
            and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(STATE_PREFIX):]))


def save_train_state(accelerator, out_dir: Path, step: int, extra: dict, keep: int) -> Path:
    """accelerator.save_state into states/step-XXXXXXXX (written as .tmp, renamed when complete)."""
    final = out_dir / "states" / f"{STATE_PREFIX}{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    tmp.mkdir(parents=True, exist_ok=True)
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **extra}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_states(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------- helpers
class StopFlag:
    """Set by SIGTERM / SIGINT (SLURM preemption, Ctrl-C); the loop saves state and exits.

    A second Ctrl-C interrupts at once.
    """

    def __init__(self) -> None:
        self.raised = False
        self.signal_name = ""

    def install(self) -> None:
        self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in getattr(self, "_old", {}).items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = True
        self.signal_name = signal.Signals(signum).name


def store_limits(dataset, cfg: TrainConfig) -> dict:
    """Exact limits of a zarr training store (all sets, all processes)."""
    return {"n_min": int(min(cfg.n_train_min, dataset.n.min())), "n_max": int(min(cfg.n_train_max, dataset.n.max())),
            "dx_max": int(dataset.dx.max()), "dy_max": int(dataset.dy.max()),
            "mi_min": float(dataset.mi.min()), "mi_max": float(dataset.mi.max())}


def stream_limits(gen, cfg: TrainConfig) -> dict:
    """Limits of streamed training: the ranges the metagen config ``gen`` draws from.

    (Not the extremes of the batches seen so far: a short run would record a small n_max,
    and inference subsamples larger inputs to n_max.)
    """
    s, d = gen.n, gen.dims                      # metagen.tasks._draw_n: n >= max(n.min, dx + dy + 2)
    n_lo = max(min(s.values) if s.values else s.min, 2 * d.min + 2)
    n_hi = max([s.max, 2 * d.max + 2, *s.values]
               + ([2 * (2 * d.max) + 2] if s.near_min_fraction > 0 else [])
               + ([s.tail_max] if s.tail_max and s.tail_fraction > 0 else []))
    mi_max = gen.mi.tail_max if gen.mi.tail_fraction > 0 else gen.mi.uniform_max
    return {"n_min": int(min(cfg.n_train_min, n_lo)), "n_max": int(min(cfg.n_train_max, n_hi)),
            "dx_max": int(d.max), "dy_max": int(d.max), "mi_min": 0.0, "mi_max": float(mi_max)}


class MetricsLog:
    """Appends JSON lines to out_dir/metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar, disabled off the main process, under CI and when stderr is not a TTY."""
    from tqdm.auto import tqdm

    disable = (not enabled) or bool(os.environ.get("CI")) or not sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=disable, dynamic_ncols=True, desc="train")


def build_dataset(cfg: TrainConfig, model_cfg, process_index: int, num_processes: int):
    """StoreBatches (train_store) or StreamBatches (stream_config)."""
    from training.data import StoreBatches, StreamBatches

    if cfg.train_store is not None:
        return StoreBatches(cfg.train_store, cfg, model_cfg, process_index, num_processes)
    return StreamBatches(cfg.stream_config, cfg, model_cfg, process_index, num_processes)


def build_val_splits(cfg: TrainConfig, model_cfg) -> dict[str, Any]:
    """{'calib': ValSplit, 'val_id': ValSplit, 'val_ood': ValSplit (if any)}.

    Without calib_store the first max_val_sets sets of val_id are split in fixed halves:
    even positions calibrate, odd positions are evaluated.
    """
    from training.evaluate import build_split, load_sets

    def split(name, path, select=None):
        sets, mi = load_sets(path, cfg.max_val_sets, select)
        return build_split(name, sets, mi, model_cfg, cfg.eval_batch_size, cfg.eval_max_cells)

    splits = {}
    if cfg.calib_store is not None:
        splits["calib"] = split("calib", cfg.calib_store)
        splits["val_id"] = split("val_id", cfg.val_id_store)
    else:
        splits["calib"] = split("calib", cfg.val_id_store, slice(0, None, 2))
        splits["val_id"] = split("val_id", cfg.val_id_store, slice(1, None, 2))
    if cfg.val_ood_store is not None:
        splits["val_ood"] = split("val_ood", cfg.val_ood_store)
    return splits


def evaluate(model, splits: dict, levels: np.ndarray, device, autocast) -> tuple[dict, np.ndarray]:
    """Fit calibration offsets on the calib split, then metrics of val_id / val_ood."""
    from model.quantiles import fit_calibration
    from training.evaluate import predict_split, split_metrics

    calib = splits["calib"]
    offsets = np.asarray(fit_calibration(predict_split(model, calib, device, autocast), calib.target_t, levels))
    metrics = {}
    for name in ("val_id", "val_ood"):
        if name in splits:
            s = splits[name]
            metrics[name] = split_metrics(predict_split(model, s, device, autocast), s.target_t, s.mi, levels, offsets)
    return metrics, offsets


def freeze_except(model: torch.nn.Module, train_only: str) -> None:
    """Freeze every parameter whose name starts with none of the comma-separated prefixes in
    `train_only` ("" trains all). E.g. "head." refits the head on new set statistics quickly at a
    high learning rate, the trunk unchanged. ConfigError when a prefix matches no parameter."""
    prefixes = tuple(p.strip() for p in train_only.split(",") if p.strip())
    if not prefixes:
        return
    names = [name for name, _ in model.named_parameters()]
    unused = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unused:
        raise ConfigError(f"train_only: no model parameter starts with {unused} (e.g. {names[0]!r}, {names[-1]!r})")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices (ndim >= 2), not biases, norms or embeddings vectors."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(cfg: TrainConfig, init_from: str | None):
    """(model, lineage): a fresh MIEstimator from cfg.model and None, or the weights and config
    of a checkpoint and its lineage (model.checkpoint.lineage). With a checkpoint, cfg.model
    may still change the input switches (model.network.INPUT_SWITCHES, e.g. turn the kNN
    statistics on: the new inputs start with zero weights) and add row layers (a larger
    ``row_layers``: the new layers start as the identity, model.network.add_row_layers) and
    cell layers (a larger ``cell_layers``, likewise, model.network.add_cell_layers), and turn
    on the per-column dependence features (``use_col_stats``: their embedding starts at zero,
    model.network.add_column_statistics) and the nonlinear-dependence statistics
    (``use_nonlinear_stats``: the head reads them with zero weights at first,
    model.network.add_nonlinear_statistics) and the raw values' Gaussian-MI statistics
    (``use_raw_stats``, likewise, model.network.add_raw_statistics), and widen it (a larger ``dim``, a multiple of the
    checkpoint's: the same function at first, model.network.widen); other fields are ignored."""
    from model.network import (INPUT_SWITCHES, MIEstimator, add_cell_layers, add_column_statistics, add_row_layers,
                               add_nonlinear_statistics, add_raw_statistics, switch_inputs, widen)

    if init_from is None:
        return MIEstimator(cfg.model_config()), None
    from model.checkpoint import lineage, load_checkpoint

    model, meta = load_checkpoint(init_from)
    differ = {k: v for k, v in cfg.model.items() if getattr(model.config, k, v) != v}
    switches = {k: v for k, v in differ.items() if k in INPUT_SWITCHES}
    deeper = differ.get("row_layers", 0) > model.config.row_layers
    more_cells = differ.get("cell_layers", 0) > model.config.cell_layers
    col_stats = bool(differ.get("use_col_stats", False))
    nonlinear = bool(differ.get("use_nonlinear_stats", False))
    raw = bool(differ.get("use_raw_stats", False))
    wider = differ.get("dim", 0) > model.config.dim
    grown = {k for k, more in (("row_layers", deeper), ("cell_layers", more_cells), ("use_col_stats", col_stats),
                               ("use_nonlinear_stats", nonlinear), ("strata", nonlinear), ("use_raw_stats", raw),
                               ("dim", wider)) if more}
    ignored = {k: v for k, v in differ.items() if k not in INPUT_SWITCHES and k not in grown}
    if ignored:
        print(f"train.py: note: --init-from keeps the checkpoint's architecture; ignoring {ignored}", file=sys.stderr)
    if switches:
        print(f"train.py: note: --init-from with other inputs: {switches}", file=sys.stderr)
        model = switch_inputs(model, **switches)
    if deeper:
        print(f"train.py: note: --init-from with {differ['row_layers']} row layers instead of "
              f"{model.config.row_layers}: the new ones start as the identity", file=sys.stderr)
        model = add_row_layers(model, int(differ["row_layers"]))
    if more_cells:
        print(f"train.py: note: --init-from with {differ['cell_layers']} cell layers instead of "
              f"{model.config.cell_layers}: the new ones start as the identity", file=sys.stderr)
        model = add_cell_layers(model, int(differ["cell_layers"]))
    if col_stats:
        print("train.py: note: --init-from with the per-column dependence features turned on "
              "(their embedding starts at zero)", file=sys.stderr)
        model = add_column_statistics(model)
    if nonlinear:
        print("train.py: note: --init-from with the nonlinear-dependence statistics turned on "
              "(the head reads them with zero weights at first)", file=sys.stderr)
        model = add_nonlinear_statistics(model, int(cfg.model.get("strata", model.config.strata)))
    if raw:
        print("train.py: note: --init-from with the raw values' Gaussian-MI statistics turned on "
              "(the head reads them with zero weights at first)", file=sys.stderr)
        model = add_raw_statistics(model)
    if wider:
        narrow = model.config.dim
        try:
            model = widen(model, int(differ["dim"]), seed=cfg.seed)
        except ValueError as exc:  # not a multiple of the checkpoint's dim
            raise ConfigError(f"--model.dim with --init-from: {exc}") from None
        print(f"train.py: note: --init-from with dim {differ['dim']} instead of {narrow}: "
              "widened, the same function at first", file=sys.stderr)
    model.train()
    return model, lineage(init_from, meta)


# ----------------------------------------------------------------------------- main loop
def train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    """Run (or resume) training; returns the exit code."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from model.checkpoint import save_checkpoint
    from model.quantiles import pinball_loss
    from training.data import make_loader

    torch.set_num_threads(cfg.threads)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),   # several CPU processes (torchrun) then use gloo
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
    )
    main = accelerator.is_main_process
    out_dir = Path(cfg.out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    torch.manual_seed(cfg.seed)
    model, init_lineage = build_model(cfg, args.init_from)
    freeze_except(model, cfg.train_only)
    model_cfg = model.config
    levels = np.asarray(model_cfg.quantile_levels, dtype=np.float64)
    levels_t = torch.as_tensor(levels, dtype=torch.float32, device=accelerator.device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    dataset = build_dataset(cfg, model_cfg, accelerator.process_index, accelerator.num_processes)
    # the trained range, recorded in every checkpoint (fixed by the data source, not by the batches seen)
    limits = store_limits(dataset, cfg) if cfg.train_store is not None else stream_limits(dataset.gen_config, cfg)
    splits = build_val_splits(cfg, model_cfg) if main else {}

    step, best = 0, math.inf
    best_metrics: dict = {}
    if args.resume:
        states = list_states(out_dir)
        if states:
            accelerator.load_state(str(states[-1]))
            saved = json.loads((states[-1] / STATE_FILE).read_text())
            step, best = int(saved["step"]), float(saved.get("best", math.inf))
            best_metrics = saved.get("best_metrics", {})
            init_lineage = saved.get("init_from", init_lineage)  # the run's origin, even if --init-from is not repeated
            accelerator.print(f"resumed from {states[-1]} at step {step}")
        else:
            accelerator.print(f"--resume: no saved state in {out_dir / 'states'}; starting at step 0")
    if main:
        (out_dir / "config.json").write_text(json.dumps({"train": cfg.to_dict(), "model": _jsonable(model_cfg)}, indent=1))

    log = MetricsLog(out_dir / "metrics.jsonl", main)
    stop = StopFlag()
    stop.install()
    stop_at = cfg.steps if args.max_steps_this_run is None else min(cfg.steps, step + args.max_steps_this_run)
    loader = make_loader(dataset, step * cfg.grad_accum, cfg.steps * cfg.grad_accum, cfg.num_workers)
    batches = iter(loader)
    bar = progress_bar(cfg.steps, step, main)
    sets_per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    t0 = time.perf_counter()
    window = {"loss": 0.0, "count": 0, "n": 0.0, "t": time.perf_counter()}
    offsets: np.ndarray | None = None
    model.train()

    def state_extra() -> dict:
        return {"best": best, "best_metrics": best_metrics, "limits": limits,
                "micro_batch": step * cfg.grad_accum, "init_from": init_lineage}

    def export(path: Path, metrics: dict) -> None:
        save_checkpoint(str(path), raw_model, limits=limits,
                        calibration=None if offsets is None else [float(v) for v in offsets],
                        info={"step": step, "config": cfg.to_dict(), "metrics": metrics,
                              **({"init_from": init_lineage} if init_lineage else {})})

    try:
        while step < stop_at:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            for k in range(cfg.grad_accum):
                tb = next(batches)
                with accelerator.accumulate(model):
                    pred = model(tb.batch.to(accelerator.device))
                    loss = pinball_loss(pred.float(), tb.target_t.to(accelerator.device), levels_t)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window["loss"] += float(loss.detach())
                window["count"] += 1
                window["n"] += tb.n
                if cfg.log_batch_hash:
                    log.write({"kind": "batch", "step": step, "micro": step * cfg.grad_accum + k,
                               "hash": tb.fingerprint, "loss": float(loss.detach())})
            step += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == stop_at:
                mean = torch.tensor([window["loss"] / max(1, window["count"])], device=accelerator.device)
                mean = float(accelerator.reduce(mean, "mean")) if accelerator.num_processes > 1 else float(mean)
                now = time.perf_counter()
                steps_done = window["count"] / cfg.grad_accum
                record = {"kind": "train", "step": step, "loss": mean, "lr": lr,
                          "sets_per_s": steps_done * sets_per_step / max(1e-9, now - window["t"]),
                          "n_mean": window["n"] / max(1, window["count"]), "elapsed_s": now - t0,
                          "cpu_s": time.process_time()}  # this process's CPU seconds (not the loader workers')
                log.write(record)
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
                window = {"loss": 0.0, "count": 0, "n": 0.0, "t": now}

            if accelerator.num_processes > 1:   # every process must agree to stop at the same step
                flag = torch.tensor([1.0 if stop.raised else 0.0], device=accelerator.device)
                stop.raised = float(accelerator.reduce(flag, "sum")) > 0

            if step % cfg.eval_every == 0 or step == cfg.steps:
                if main:
                    metrics, offsets = evaluate(raw_model, splits, levels, accelerator.device, accelerator.autocast)
                    log.write({"kind": "eval", "step": step, **metrics})
                    accelerator.print(f"step {step}: " + "; ".join(
                        f"{name} MAE {m['mae']:.3f} nats, 90% coverage {m['coverage_90']:.2f}"
                        for name, m in metrics.items() if isinstance(m, dict) and "mae" in m))
                    if cfg.keep_evals:
                        (out_dir / "evals").mkdir(exist_ok=True)
                        export(out_dir / "evals" / f"step-{step:08d}.safetensors", metrics)
                    score = metrics["val_id"][cfg.select_metric]
                    if score < best:
                        best, best_metrics = score, metrics
                        export(out_dir / "best.safetensors", metrics)
                    if step == cfg.steps:
                        export(out_dir / "last.safetensors", metrics)
                accelerator.wait_for_everyone()

            if step % cfg.save_every == 0 or stop.raised or step == stop_at:
                save_train_state(accelerator, out_dir, step, state_extra(), cfg.keep_states)
            if stop.raised:
                accelerator.print(f"received {stop.signal_name or 'stop signal'}: state saved at step {step}; "
                                  "rerun with --resume")
                break
    finally:
        stop.restore()
        bar.close()
    del batches, loader
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if main and not stop.raised:
        accelerator.print(f"finished at step {step}; best checkpoint: {out_dir / 'best.safetensors'}; "
                          f"metrics: {out_dir / 'metrics.jsonl'}")
    return 0


def _jsonable(obj: Any) -> Any:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj, default=str))


def main(argv: list[str] | None = None) -> int:
    """Entry point: configuration errors exit with code 2 and one line on stderr."""
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return train(cfg, args)
    except ConfigError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__name__ == "StoreError":     # unreadable / damaged zarr store
            print(f"train.py: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
