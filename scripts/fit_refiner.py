"""Fit the refiner of a trained checkpoint: a small MLP stacked on the network's own answer.

    python scripts/fit_refiner.py --checkpoint data/default.safetensors \
        --store ~/.cache/amortized-mi/stores/train-geometry-fresh30k-e --out runs/refine/refined.safetensors

The network is frozen. For every set of the fitting stores (training-distribution sets the
network has not seen; never a validation, calibration or test store) the script computes,
exactly as ``infer`` does (same subsampling, no calibration), the head's pre-softplus outputs
(Q,) and what the refiner reads besides them (``--inputs stats``: the set statistics; ``head``: the
head's whole input, pooled row tokens and column-context summaries too; ``MIEstimator.refiner_context``), cached under
``--work``. It then fits a `model.network.Refiner` on them by the training loss (pinball on
log1p(MI) at every quantile level, each set weighted as ``train.py --n_weight_power`` repeats
it), full batch with AdamW and a cosine learning rate, keeps the step with the least loss on a
held-out share of the sets, and writes the checkpoint with the refiner (uncalibrated: refit the
conformal offsets with ``scripts/ship_checkpoint.py``, compare with
``scripts/calibration_study.py``; ``--score STORE`` prints the uncalibrated median's MAE on a
validation store with and without the refiner, from the same cached inputs). Each member is saved as soon as
it is fitted (under ``--state-dir``, by default OUT.members, which goes once OUT is written), so the same
command rerun after a stop refits only the members still missing. Why: a corrector of this form, fitted on 8,000
training-distribution sets, was 10-12% better than the network in distribution
(``scripts/screen_features.py``, session 25), while refitting the head inside training gained a
fifth of that; precomputed inputs make thousands of full passes cost seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import infer  # noqa: E402
from metagen.store import open_store  # noqa: E402
from model.checkpoint import lineage, load_checkpoint, save_checkpoint  # noqa: E402
from model.preprocess import SHAPE_FEATURES, marginal_shape_statistics  # noqa: E402
from model.network import REFINE_INPUTS, MIEstimator, Refiner, add_refiner  # noqa: E402
from model.quantiles import pinball_loss  # noqa: E402
from scripts.calibration_study import raw_grid  # noqa: E402
from tqdm import tqdm  # noqa: E402
from training.data import n_repeats  # noqa: E402


def head_and_context(inputs: str):
    """outputs(model, batch) -> (B, Q + C): the head's pre-softplus outputs, then what a refiner reading `inputs`
    sees (``MIEstimator.refiner_context``: the set statistics, or the head's whole input)."""
    def outputs(model: MIEstimator, batch) -> torch.Tensor:
        head_in = model.head_input(batch)
        return torch.cat([model.head(head_in), model.refiner_context(head_in, inputs, batch.shape)], dim=-1)
    return outputs


def refiner_inputs(checkpoint: Path, store_path: str, work: Path, inputs: str = "stats") -> dict[str, np.ndarray]:
    """Per set of a store: {"raw" (N, Q), "context" (N, C) (`head_and_context`), "t" (N,) log1p of the true MI
    (nats), "n" (N,) rows the network saw}, computed as ``infer`` would, cached under `work` per checkpoint
    content, store and `inputs`."""
    if inputs == "stats+shape":  # the shape statistics need no network: the "stats" table's context, then them
        table = refiner_inputs(checkpoint, store_path, work, "stats")
        table["context"] = np.concatenate([table["context"], shape_statistics(checkpoint, store_path, work)], axis=1)
        return table
    q = len(load_checkpoint(checkpoint)[0].config.quantile_levels)
    start = time.perf_counter()
    pred = raw_grid(checkpoint, store_path, work, outputs=head_and_context(inputs), tag=f"refiner-inputs-{inputs}-")
    print(f"fit_refiner: {len(pred['t'])} sets of {store_path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return {"raw": pred["grid"][:, :q], "context": pred["grid"][:, q:], "t": pred["t"], "n": pred["n"]}


def shape_statistics(checkpoint: Path, store_path: str, work: Path) -> np.ndarray:
    """`marginal_shape_statistics` (N, SHAPE_FEATURES) of every set of a store, from the rows ``infer`` would
    feed `checkpoint`'s network (its subsampling rule), cached under `work` per checkpoint content and store."""
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()[:12]
    cache = Path(work) / f"shape-{digest}-{Path(store_path).name}.npy"
    if cache.is_file():
        return np.load(cache)
    limits = dict(load_checkpoint(checkpoint)[1]["limits"])
    store = open_store(store_path)
    out = np.empty((len(store), SHAPE_FEATURES))
    for i in tqdm(range(len(store)), desc=f"shape statistics {Path(store_path).name}", unit="set", disable=None):
        x, y = store.get(i)
        out[i] = marginal_shape_statistics(*infer._check_range(x.astype(np.float64), y.astype(np.float64),
                                                               limits, "ignore", "auto"))
    Path(work).mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(cache)
    return out


def fit_refiner(raw: np.ndarray, context: np.ndarray, t: np.ndarray, weight: np.ndarray, levels, *, hidden: int = 64,
                members: int = 1, steps: int = 3000, lr: float = 3e-3, weight_decay: float = 1e-3,
                holdout: float = 0.1, seed: int = 0, eval_every: int = 50, progress: bool = False,
                state_dir: Path | None = None) -> tuple[Refiner, dict]:
    """A `Refiner` of `members` MLPs fitted on head outputs raw (N, Q), what it reads besides them (N, C) and truth
    t = log1p(MI) (N,), each set's loss weighted by `weight` (N,), `levels` (Q,) the quantile levels.

    A share `holdout` of the sets (drawn with `seed`) is kept out of the fit. Each member starts from its own
    seed and is kept at the evaluated step with the least weighted pinball loss on the held-out sets; the
    refiner averages the members' corrections. Returns it with a report: held-out loss without the refiner,
    of each member and of the ensemble, the members' kept steps, and the median's MAE in nats there.

    With `state_dir`, each member is saved there as soon as it is fitted (`save_member`), and a member saved
    by an earlier call on the same data and settings is loaded instead of refitted (listed in the report's
    "resumed"), so a fit stopped part-way loses at most the member in progress.
    """
    n = len(t)
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if raw.shape[0] != n or context.shape[0] != n or weight.shape != (n,):
        raise ValueError(f"raw {raw.shape}, context {context.shape}, weight {weight.shape} do not match t ({n},)")
    n_hold = max(1, int(round(holdout * n)))
    if n - n_hold < 2:
        raise ValueError(f"need at least 2 sets to fit after holding out {n_hold} of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    parts = {"fit": perm[n_hold:], "hold": perm[:n_hold]}
    fit, hold = ({name: torch.tensor(a[idx], dtype=torch.float32) for name, a in
                  (("raw", raw), ("context", context), ("t", t), ("w", weight))} for idx in parts.values())
    levels = torch.tensor(np.asarray(levels, dtype=np.float64), dtype=torch.float32)
    refiner = Refiner(raw.shape[1] + context.shape[1], hidden, raw.shape[1], members)
    with torch.no_grad():  # standardize the inputs on the fitting sets
        z = torch.cat([torch.cumsum(torch.nn.functional.softplus(fit["raw"]), -1), fit["context"]], -1)
        refiner.shift.copy_(z.mean(0))
        std = z.std(0)
        refiner.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def loss_of(part: dict, module: Refiner | None) -> torch.Tensor:
        out = part["raw"] if module is None else module(part["raw"], part["context"])
        pred = torch.cumsum(torch.nn.functional.softplus(out), -1)  # (N, Q) quantiles of log1p(MI)
        return pinball_loss(pred, part["t"], levels, weight=part["w"])

    with torch.no_grad():
        base = float(loss_of(hold, None))
    report = {"holdout_sets": n_hold, "holdout_loss_before": base, "member_losses": [], "best_steps": [],
              "resumed": []}
    key = fit_key(raw, context, t, weight, levels.numpy(), hidden=hidden, steps=steps, lr=lr,
                  weight_decay=weight_decay, holdout=holdout, seed=seed, eval_every=eval_every)
    for i in range(members):
        saved = load_member(state_dir, i, key) if state_dir is not None else None
        if saved is not None:
            refiner.nets[i].load_state_dict(saved[2])
            report["member_losses"].append(saved[0])
            report["best_steps"].append(saved[1])
            report["resumed"].append(i)
            if progress:
                print(f"fit_refiner: member {i + 1}/{members}: loaded from {state_dir} (held-out loss {saved[0]:.5f})",
                      file=sys.stderr, flush=True)
            continue
        torch.manual_seed(seed * 1000 + i)
        member = Refiner(refiner.shift.numel(), hidden, raw.shape[1])
        member.load_state_dict({"shift": refiner.shift, "scale": refiner.scale}, strict=False)
        opt = torch.optim.AdamW(member.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 10)
        best = (base, 0, {k: v.clone() for k, v in member.nets[0].state_dict().items()})
        for step in range(1, steps + 1):
            loss = loss_of(fit, member)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % eval_every == 0 or step == steps:
                with torch.no_grad():
                    held = float(loss_of(hold, member))
                if held < best[0]:
                    best = (held, step, {k: v.clone() for k, v in member.nets[0].state_dict().items()})
        refiner.nets[i].load_state_dict(best[2])
        if state_dir is not None:
            save_member(state_dir, i, key, best)
        report["member_losses"].append(best[0])
        report["best_steps"].append(best[1])
        if progress:
            print(f"fit_refiner: member {i + 1}/{members}: held-out loss {base:.5f} -> {best[0]:.5f} at step {best[1]}",
                  file=sys.stderr, flush=True)
    refiner.eval()
    with torch.no_grad():
        report["holdout_loss_after"] = float(loss_of(hold, refiner))
    held_out = {"raw": raw[parts["hold"]], "context": context[parts["hold"]], "t": t[parts["hold"]]}
    report["holdout_mae_before"] = float(median_errors(None, held_out, levels.numpy()).mean())
    report["holdout_mae_after"] = float(median_errors(refiner, held_out, levels.numpy()).mean())
    return refiner, report


def fit_key(*arrays: np.ndarray, **settings) -> str:
    """Fingerprint (hex) of a fit's data `arrays` and `settings`: a saved member is reused only under the same."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_member(state_dir: Path, i: int, key: str, best: tuple[float, int, dict]) -> None:
    """Write member `i` (held-out loss, kept step, state dict) under `state_dir`: weights as a plain tensor file
    (read back weights-only), its loss, step and the fit's `key` as JSON written after them."""
    state_dir.mkdir(parents=True, exist_ok=True)
    partial = state_dir / f"member-{i}.pt.partial"
    torch.save(best[2], partial)
    partial.replace(state_dir / f"member-{i}.pt")
    (state_dir / f"member-{i}.json").write_text(json.dumps({"key": key, "loss": best[0], "step": best[1]}))


def clear_members(state_dir: Path) -> None:
    """Remove what `save_member` wrote under `state_dir`, and the folder if nothing else is left in it."""
    for f in state_dir.glob("member-*"):
        f.unlink()
    if state_dir.is_dir() and not any(state_dir.iterdir()):
        state_dir.rmdir()


def load_member(state_dir: Path, i: int, key: str) -> tuple[float, int, dict] | None:
    """Member `i` as `save_member` wrote it, or None if absent or saved for another fit (another `key`)."""
    meta_path, weights = state_dir / f"member-{i}.json", state_dir / f"member-{i}.pt"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        return None
    return float(meta["loss"]), int(meta["step"]), torch.load(weights, weights_only=True)


def median_errors(refiner: Refiner | None, table: dict[str, np.ndarray], levels) -> np.ndarray:
    """Absolute errors (N,) in nats of the uncalibrated median on a `refiner_inputs` table, with `refiner`
    (None: the head's own)."""
    raw = torch.tensor(table["raw"], dtype=torch.float32)
    with torch.no_grad():
        out = raw if refiner is None else refiner(raw, torch.tensor(table["context"], dtype=torch.float32))
        q = torch.cumsum(torch.nn.functional.softplus(out), -1).double().numpy()
    mid = int(np.argmin(np.abs(np.asarray(levels) - 0.5)))
    return np.abs(np.expm1(q[:, mid]) - np.expm1(table["t"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="trained checkpoint (its calibration is not used)")
    p.add_argument("--store", action="append", required=True, help="fitting store (training distribution); repeatable")
    p.add_argument("--out", required=True, help="checkpoint to write (uncalibrated; ship_checkpoint refits)")
    p.add_argument("--work", default="/tmp/fit_refiner", help="cache of the precomputed inputs")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--inputs", choices=REFINE_INPUTS, default="stats",
                   help="what the refiner reads besides the head's quantiles (ModelConfig.refine_inputs)")
    p.add_argument("--members", type=int, default=5, help="MLPs fitted from different seeds, corrections averaged")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--n-weight-power", type=float, default=1.0, help="as train.py: a set weighs max(1, round((n/100)^p))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state-dir", default=None,
                   help="where each fitted member is saved at once, and found again when the same fit is rerun after a "
                        "stop (default: OUT's name with .members appended, removed once OUT is written; a folder given "
                        "here is kept, so a checkpoint of a running fit's first K members can be written from it)")
    p.add_argument("--score", action="append", default=[],
                   help="validation store: report the uncalibrated median's MAE there with and without the refiner")
    args = p.parse_args(argv)
    work = Path(args.work)
    model, meta = load_checkpoint(args.checkpoint)
    if model.refine is not None:
        print(f"fit_refiner: {args.checkpoint} has a refiner already; fitting a new one on its head", file=sys.stderr)
    tables = [refiner_inputs(Path(args.checkpoint), s, work, args.inputs) for s in args.store]
    cat = {k: np.concatenate([tb[k] for tb in tables]) for k in ("raw", "context", "t", "n")}
    weight = n_repeats(cat["n"], args.n_weight_power).astype(np.float64)
    state_dir = Path(args.state_dir) if args.state_dir else Path(args.out + ".members")
    start = time.perf_counter()
    refiner, report = fit_refiner(cat["raw"], cat["context"], cat["t"], weight, model.config.quantile_levels,
                                  hidden=args.hidden, members=args.members, steps=args.steps, lr=args.lr,
                                  weight_decay=args.weight_decay, holdout=args.holdout, seed=args.seed, progress=True,
                                  state_dir=state_dir)
    report["fit_seconds"] = round(time.perf_counter() - start, 1)
    for store in args.score:
        table = refiner_inputs(Path(args.checkpoint), store, work, args.inputs)
        levels = model.config.quantile_levels
        report[f"mae_{Path(store).name}"] = {"before": float(median_errors(None, table, levels).mean()),
                                             "after": float(median_errors(refiner, table, levels).mean())}
    new = add_refiner(model, args.hidden, args.members, args.inputs)
    new.refine.load_state_dict(refiner.state_dict())
    info = dict(meta.get("info") or {})
    info["refiner"] = {"stores": [str(s) for s in args.store], "sets": int(len(cat["t"])), "inputs": args.inputs,
                       "members": args.members, "steps": args.steps, "lr": args.lr, "weight_decay": args.weight_decay, "n_weight_power": args.n_weight_power,
                       "seed": args.seed, "from": lineage(args.checkpoint, meta), **report}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, new.eval(), limits=dict(meta["limits"]), calibration=None, info=info)
    if not args.state_dir:  # the default folder is this run's: the checkpoint holds every member now
        clear_members(state_dir)
    print(json.dumps(report, indent=1))
    print(f"fit_refiner: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
