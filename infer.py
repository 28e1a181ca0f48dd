"""Predict mutual-information quantiles with a trained amortized estimator.

    >>> import numpy as np
    >>> from infer import predict_mi_quantiles
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 3)); y = x + rng.normal(size=(500, 3))
    >>> lo, med, hi = predict_mi_quantiles(x, y)        # nats; 5%, 50%, 95%

Command line::

    python infer.py data.npz                     # arrays "x" and "y" inside
    python infer.py --x x.npy --y y.npy --quantiles 0.05 0.5 0.95 --unit bits

The shipped checkpoint ``data/default.safetensors`` is used unless ``checkpoint=``
(or the environment variable ``AMORTIZED_MI_CHECKPOINT``) names another. It is
loaded once per (path, device) and cached. Loading is weights-only (safetensors);
nothing is ever unpickled and nothing is downloaded.

Rules for input outside the checkpoint's trained range (``limits`` in its metadata):

* more samples than ``limits["n_max"]``: a fixed-seed random subsample of
  ``n_max`` rows (taken in a canonical row order, so the answer does not depend on
  the order of the rows or columns, or on which variable is x) is used, and an :class:`OutOfRangeWarning` says so. The
  interval then reflects the smaller sample, i.e. it is honest but wider than
  needed. Pass ``max_rows=None`` to feed every row anyway (an extrapolation), or an
  integer ``max_rows`` to subsample to fewer rows the same way, without a warning
  (faster at large n).
* fewer samples than ``limits["n_min"]``, or more X or Y dimensions than trained:
  :class:`InputError`, unless ``on_out_of_range="warn"`` (predict anyway, with an
  :class:`OutOfRangeWarning`) or ``"ignore"``. At least 3 rows are always needed.
* a column with fewer distinct values than half its rows (discrete or heavily rounded
  data; the model was trained on continuous variables): an :class:`OutOfRangeWarning`
  (none with ``on_out_of_range="ignore"``). Constant columns are fine.

The network's quantiles are shifted by the checkpoint's conformal offsets: one row per n
range (chosen by the rows the network sees) and, for checkpoints with a novelty reference
(``model.novelty``), one block per novelty bin, chosen by how far the set's statistics lie
from the training sets'; ``AmortizedMIEstimator.estimate_with_info`` and the CLI also report
that distance as a percentile of the training sets' own.

Single calls on the CPU run a TorchScript trace of the network (``model/tracing.py``:
the same arithmetic without the Python overhead, about twice as fast at n <= 1000);
batches and other devices run the eager module. ``AMORTIZED_MI_TRACE=0`` turns the
trace off.

This module depends on torch, numpy, scipy and safetensors only (never on
metagen, zarr or accelerate).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.network import MIEstimator
from model.novelty import NoveltyReference, apply_calibration_by_novelty, novelty_scores
from model.preprocess import Batch, canonical_subset, prepare_batch
from model.quantiles import apply_calibration, interpolate_quantiles
from model.tracing import trace_single_set
from model.validation import InputError, OutOfRangeWarning, as_sample_pair, check_quantiles

__all__ = [
    "predict_mi_quantiles",
    "predict_mi_quantiles_batch",
    "predict_mi",
    "AmortizedMIEstimator",
    "EstimateResult",
    "InputError",
    "OutOfRangeWarning",
    "CheckpointError",
    "DEFAULT_CHECKPOINT",
]

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "data" / "default.safetensors"
ABSOLUTE_MIN_ROWS = 3
NATS_PER_BIT = float(np.log(2.0))
_BATCH_CELLS = 200_000  # sets are grouped so that one forward pass sees at most this many cells


@dataclass(frozen=True)
class _Loaded:
    model: MIEstimator
    levels: np.ndarray  # (Q,) the checkpoint's quantile grid
    calibration: np.ndarray | None  # (Q,) offsets in log1p(MI) space, or (R, Q): one row per n range
    limits: dict
    meta: dict
    device: torch.device
    calibration_n_edges: tuple[int, ...] = ()  # edges of the n ranges of a (R, Q) calibration
    novelty: NoveltyReference | None = None  # set: the calibration has one leading row per novelty bin

    @functools.cached_property
    def single(self) -> Callable[[Batch], torch.Tensor] | None:
        """The traced forward for one set on the CPU, made on first use (None: use the eager module)."""
        if self.device.type != "cpu" or os.environ.get("AMORTIZED_MI_TRACE", "1") == "0":
            return None
        try:
            return trace_single_set(self.model)
        except RuntimeError as exc:  # pragma: no cover - depends on the torch build
            warnings.warn(f"{exc}; using the (slower, equivalent) eager forward", RuntimeWarning, stacklevel=2)
            return None


def _resolve_checkpoint(checkpoint: str | os.PathLike | None) -> Path:
    if checkpoint is None:
        checkpoint = os.environ.get("AMORTIZED_MI_CHECKPOINT")
        if not checkpoint:
            return DEFAULT_CHECKPOINT  # already absolute and resolved (saves ~0.2 ms per call)
    return Path(checkpoint).expanduser().resolve()


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, device: str) -> _Loaded:
    model, meta = load_checkpoint(path, device=device)
    model.eval()
    levels = np.asarray(model.config.quantile_levels, dtype=np.float64)
    calib = meta.get("calibration")
    calib = None if calib is None else np.asarray(calib, dtype=np.float64)
    return _Loaded(model, levels, calib, dict(meta.get("limits") or {}), meta, torch.device(device),
                   tuple(meta.get("calibration_n_edges") or ()), meta.get("calibration_novelty"))


def load(checkpoint: str | os.PathLike | None = None, device: str | torch.device | None = None) -> _Loaded:
    """Load (once, then from cache) a checkpoint; raises CheckpointError if unreadable."""
    path = _resolve_checkpoint(checkpoint)
    if not path.is_file():
        hint = (
            " (the shipped default checkpoint is missing: reinstall the package or pass checkpoint=PATH)"
            if path == DEFAULT_CHECKPOINT
            else ""
        )
        raise CheckpointError(f"checkpoint file not found: {path}{hint}")
    dev = str(torch.device(device)) if device is not None else "cpu"
    return _load_cached(str(path), path.stat().st_mtime_ns, dev)


def _canonical_subsample(x: np.ndarray, y: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """At most m rows, chosen by a fixed-seed draw over a canonical row order.

    The same rows whatever the row order, the column order within x and within y, or
    an x/y swap (see `model.preprocess.canonical_subset`).
    """
    rows = canonical_subset(np.concatenate([x, y], axis=1), x.shape[1], m)
    return x[rows], y[rows]


DISCRETE_PROBE_ROWS = 64
DISCRETE_MAX_SHARE = 0.5  # a column with fewer distinct values than this share of its rows looks discrete


def _distinct_per_column(a: np.ndarray) -> np.ndarray:
    """Number of distinct values in each column of a (n, d) -> (d,)."""
    return 1 + np.count_nonzero(np.diff(np.sort(a, axis=0), axis=0), axis=0)


def _warn_if_discrete(x: np.ndarray, y: np.ndarray) -> None:
    """OutOfRangeWarning if a column looks discrete (many tied values).

    The model was trained on continuous variables: for discrete or heavily rounded data
    (MI bounded by the entropies, ties everywhere) its answer is not meaningful. A cheap
    probe of DISCRETE_PROBE_ROWS rows spread over the sample decides whether the full
    check runs.
    """
    n = x.shape[0]
    if n < 8:
        return
    step = max(1, n // DISCRETE_PROBE_ROWS)  # rows spread over the whole sample
    probe = np.concatenate([x[::step][:DISCRETE_PROBE_ROWS], y[::step][:DISCRETE_PROBE_ROWS]], axis=1)
    if (_distinct_per_column(probe) >= DISCRETE_MAX_SHARE * probe.shape[0]).all():
        return
    distinct = _distinct_per_column(np.concatenate([x, y], axis=1))
    bad = np.flatnonzero((distinct < DISCRETE_MAX_SHARE * n) & (distinct > 1))  # constant columns are harmless
    if bad.size:
        j = int(bad[0])
        name = f"x column {j}" if j < x.shape[1] else f"y column {j - x.shape[1]}"
        warnings.warn(
            f"{name} has only {int(distinct[j])} distinct values in {n} rows ({bad.size} such column(s)): the "
            "model assumes continuous variables; for discrete or heavily rounded data the estimate is not "
            "meaningful (pass on_out_of_range='ignore' to silence this)",
            OutOfRangeWarning,
            stacklevel=5,
        )


def _check_range(
    x: np.ndarray,
    y: np.ndarray,
    limits: dict,
    on_out_of_range: str,
    max_rows: int | None | str,
) -> tuple[np.ndarray, np.ndarray]:
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if n < ABSOLUTE_MIN_ROWS:
        raise InputError(f"need at least {ABSOLUTE_MIN_ROWS} samples (rows) to estimate MI; got n = {n}")
    if on_out_of_range != "ignore":
        _warn_if_discrete(x, y)
    problems = []
    n_min = int(limits.get("n_min", ABSOLUTE_MIN_ROWS))
    if n < n_min:
        problems.append(f"n = {n} is below the trained minimum of {n_min} samples")
    dx_max, dy_max = limits.get("dx_max"), limits.get("dy_max")
    d_max = max(int(dx_max or 0), int(dy_max or 0)) or None
    # X and Y play symmetric roles, so the limit is on the larger and the smaller dimension
    if d_max is not None and max(dx, dy) > d_max:
        problems.append(f"dims ({dx}, {dy}) exceed the trained maximum of {d_max} per variable")
    if problems:
        msg = "; ".join(problems)
        if on_out_of_range == "error":
            raise InputError(
                f"{msg}. Pass on_out_of_range='warn' to predict anyway (an extrapolation)"
            )
        if on_out_of_range == "warn":
            warnings.warn(f"{msg}: the estimate is an extrapolation", OutOfRangeWarning, stacklevel=4)
    trained_cap = max_rows == "auto"
    if trained_cap:
        max_rows = limits.get("n_max")
    if max_rows is not None and n > int(max_rows):
        m = int(max_rows)
        if trained_cap and on_out_of_range != "ignore":  # a cap the caller chose is no surprise
            warnings.warn(
                f"n = {n} exceeds the trained maximum of {m} samples; using a fixed random subsample of "
                f"{m} rows (pass max_rows=None to use every row)",
                OutOfRangeWarning,
                stacklevel=4,
            )
        x, y = _canonical_subsample(x, y, m)
    return x, y


def _grid_to_levels(loaded: _Loaded, grid_t: np.ndarray, q: np.ndarray, n: np.ndarray,
                    bins: np.ndarray | None = None) -> np.ndarray:
    """(B, Q) grid in log1p space -> (B, L) quantiles in nats at levels q.

    n (B,): rows each set reached the network with (after any subsampling); they choose
    the calibration row when the checkpoint has one per n range. bins (B,): the sets' novelty
    bins (`model.novelty`), needed when the checkpoint's calibration depends on novelty.
    """
    if loaded.novelty is not None:
        if bins is None:
            raise ValueError("this checkpoint's calibration depends on novelty: pass the sets' novelty bins")
        grid_t = apply_calibration_by_novelty(grid_t, loaded.calibration, bins, n=n,
                                              n_edges=loaded.calibration_n_edges)
    elif loaded.calibration is not None:
        grid_t = apply_calibration(grid_t, loaded.calibration, n=n, n_edges=loaded.calibration_n_edges)
    vals_t = interpolate_quantiles(loaded.levels, grid_t, q)
    vals_t = np.asarray(vals_t, dtype=np.float64)
    out = np.expm1(np.clip(vals_t, 0.0, None))
    return np.maximum.accumulate(out, axis=-1)  # guard: never decreasing in the level


def _forward_grid(loaded: _Loaded, sets: list[tuple[np.ndarray, np.ndarray]],
                  outputs: Callable[[MIEstimator, Batch], torch.Tensor] | None = None,
                  stats: np.ndarray | None = None) -> np.ndarray:
    """Run the network on validated sets, grouped by size; returns (B, Q) grid in log1p space.

    outputs: instead of the quantile grid, (B, F) values of outputs(model, batch) per set (no tracing).
    stats: if given, a (B, S) array that receives each set's statistics (``Batch.stats``).
    """
    out: np.ndarray | None = None if outputs else np.empty((len(sets), len(loaded.levels)), dtype=np.float64)
    order = sorted(range(len(sets)), key=lambda i: (sets[i][0].shape[1] + sets[i][1].shape[1], sets[i][0].shape[0]))
    chunk: list[int] = []

    def flush() -> None:
        nonlocal out
        if not chunk:
            return
        batch = prepare_batch([sets[i] for i in chunk], loaded.model.config, rng=None)
        if loaded.device.type != "cpu":  # prepare_batch builds CPU tensors already
            batch = batch.to(loaded.device)
        with torch.inference_mode():
            if outputs is not None:
                pred = outputs(loaded.model, batch).double().cpu().numpy()
            else:
                single = loaded.single if batch.size == 1 else None  # traced on the first single-set call
                forward = single if single is not None else loaded.model
                pred = forward(batch).float().cpu().numpy()
        if out is None:
            out = np.empty((len(sets), pred.shape[1]), dtype=np.float64)
        out[chunk] = pred
        if stats is not None:
            stats[chunk] = batch.stats.double().cpu().numpy()
        chunk.clear()

    max_n = 0
    max_d = 0
    for i in order:
        n_i = sets[i][0].shape[0]
        d_i = sets[i][0].shape[1] + sets[i][1].shape[1]
        new_cells = max(max_n, n_i) * max(max_d, d_i) * (len(chunk) + 1)
        if chunk and new_cells > _BATCH_CELLS:
            flush()
            max_n = max_d = 0
        chunk.append(i)
        max_n, max_d = max(max_n, n_i), max(max_d, d_i)
    flush()
    return out if out is not None else np.empty((0, 0))


def predict_mi_quantiles_batch(
    pairs: Iterable[tuple[Any, Any]],
    quantiles: float | Sequence[float] = (0.05, 0.5, 0.95),
    *,
    checkpoint: str | os.PathLike | None = None,
    unit: str = "nats",
    device: str | torch.device | None = None,
    on_out_of_range: str = "error",
    max_rows: int | None | str = "auto",
) -> np.ndarray:
    """Quantiles of I(X;Y) for many sample sets at once (faster per set than single calls).

    Args:
        pairs: iterable of (x, y); x is (n_i, dx_i), y is (n_i, dy_i) (1-D = one column),
            numpy arrays, lists or torch tensors. Sizes may differ between pairs.
        quantiles: levels strictly inside (0, 1).
        checkpoint: path of a .safetensors checkpoint; default: the shipped one.
        unit: "nats" (default) or "bits".
        device: torch device for the forward pass (default CPU).
        on_out_of_range: "error" (default), "warn" or "ignore" for n below or dims above
            the trained range (see the module docstring).
        max_rows: sets with more rows are subsampled to this many ("auto": the trained
            maximum, with an OutOfRangeWarning; an int: that many, silently, e.g. 500 for
            speed at large n; None: never subsample).

    Returns:
        float64 array (B, L): for each pair, the requested quantiles, non-decreasing in
        the level and >= 0, in the requested unit.
    """
    return _predict(pairs, quantiles, checkpoint=checkpoint, unit=unit, device=device,
                    on_out_of_range=on_out_of_range, max_rows=max_rows)[0]


def _grid_and_novelty(loaded: _Loaded, sets: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Uncalibrated (B, Q) grid of log1p(MI) for validated sets, and their novelty scores (B,) (None when the
    checkpoint has no novelty reference), from one forward pass."""
    ref = loaded.novelty
    stats = None if ref is None else np.empty((len(sets), ref.mean.size))
    grid_t = _forward_grid(loaded, sets, stats=stats)
    return grid_t, None if ref is None else novelty_scores(ref, stats)


def _predict(pairs: Iterable[tuple[Any, Any]], quantiles: float | Sequence[float], *,
             checkpoint: str | os.PathLike | None, unit: str, device: str | torch.device | None,
             on_out_of_range: str, max_rows: int | None | str) -> tuple[np.ndarray, np.ndarray]:
    """`predict_mi_quantiles_batch`, plus each set's novelty percentile (B,) (`model.novelty.novelty_percentiles`:
    where its statistics' distance to the training sets falls among the training sets' own, 0-100; NaN when the
    checkpoint has no novelty reference)."""
    if unit not in ("nats", "bits"):
        raise InputError(f"unit must be 'nats' or 'bits'; got {unit!r}")
    if on_out_of_range not in ("error", "warn", "ignore"):
        raise InputError(f"on_out_of_range must be 'error', 'warn' or 'ignore'; got {on_out_of_range!r}")
    q = check_quantiles(quantiles)
    loaded = load(checkpoint, device)
    sets = []
    for k, (x, y) in enumerate(pairs):
        try:
            xa, ya = as_sample_pair(x, y, n_min=ABSOLUTE_MIN_ROWS)
            sets.append(_check_range(xa, ya, loaded.limits, on_out_of_range, max_rows))
        except InputError as exc:
            raise InputError(f"pair {k}: {exc}") from None
    if not sets:
        return np.empty((0, q.size)), np.empty(0)
    ref = loaded.novelty
    grid_t, scores = _grid_and_novelty(loaded, sets)
    out = _grid_to_levels(loaded, grid_t, q, np.array([x.shape[0] for x, _ in sets]),
                          None if ref is None else ref.bin_of(scores))
    novelty = np.full(len(sets), np.nan) if ref is None else ref.percentile_of(scores)
    return (out / NATS_PER_BIT if unit == "bits" else out), novelty


def _single_pair_error(exc: InputError) -> InputError:
    """The error of a one-pair `_predict` call without its "pair 0: " prefix."""
    msg = str(exc)
    return InputError(msg[len("pair 0: "):] if msg.startswith("pair 0: ") else msg)


def _predict_single(x: Any, y: Any, quantiles: float | Sequence[float], **kwargs: Any) -> tuple[np.ndarray, float]:
    """`_predict` for one pair: (quantiles (L,), novelty percentile), errors without the "pair 0: " prefix."""
    try:
        out, novelty = _predict([(x, y)], quantiles, **kwargs)
    except InputError as exc:
        raise _single_pair_error(exc) from None
    return out[0], float(novelty[0])


def predict_mi_quantiles(
    x: Any,
    y: Any,
    quantiles: float | Sequence[float] = (0.05, 0.5, 0.95),
    *,
    checkpoint: str | os.PathLike | None = None,
    unit: str = "nats",
    device: str | torch.device | None = None,
    on_out_of_range: str = "error",
    max_rows: int | None | str = "auto",
) -> np.ndarray:
    """Quantiles of the mutual information I(X;Y) from samples, in one forward pass.

    Args:
        x: (n, dx) samples of X (1-D: one column); numpy array, list or torch tensor.
        y: (n, dy) samples of Y, rows paired with x.
        quantiles: levels strictly inside (0, 1); default the 5%, 50% and 95% quantiles
            (a 90% interval and the median).
        checkpoint, unit, device, on_out_of_range, max_rows: see
            :func:`predict_mi_quantiles_batch`.

    Returns:
        float64 array (L,) of quantiles in nats (or bits), non-decreasing, >= 0.

    Raises:
        InputError: NaN/inf, mismatched n, too few rows, wrong ndim, non-numeric dtype,
            levels outside (0, 1), input outside the trained range (unless allowed).
        CheckpointError: the checkpoint is missing or not a valid checkpoint file.
    """
    try:  # _predict directly, so that its warnings point at the caller (stacklevel)
        return _predict([(x, y)], quantiles, checkpoint=checkpoint, unit=unit, device=device,
                        on_out_of_range=on_out_of_range, max_rows=max_rows)[0][0]
    except InputError as exc:
        raise _single_pair_error(exc) from None


def predict_mi(x: Any, y: Any, **kwargs: Any) -> float:
    """Point estimate of I(X;Y): the predicted median (nats unless unit="bits")."""
    return float(predict_mi_quantiles(x, y, (0.5,), **kwargs)[0])


@dataclass
class EstimateResult:
    """Same fields as bmi's EstimateResult: the estimate (nats), the time and extra info."""

    mi_estimate: float
    time_in_seconds: float | None = None
    additional_information: dict = field(default_factory=dict)


class AmortizedMIEstimator:
    """Estimator object with the bmi interface: ``estimate(x, y) -> float`` (median, nats)
    and ``estimate_with_info(x, y) -> EstimateResult`` (estimate, quantiles, time, and the
    sample's novelty percentile: how far its statistics lie from the training sets', 0-100,
    where 99 means farther than all but 1% of the training sets; NaN for checkpoints without
    a novelty reference).

    Drops into bmi-style benchmarks unchanged, without depending on bmi.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        device: str | None = None,
        on_out_of_range: str = "warn",
    ) -> None:
        self.checkpoint = checkpoint
        self.quantiles = tuple(float(v) for v in check_quantiles(quantiles))
        self.device = device
        self.on_out_of_range = on_out_of_range
        load(checkpoint, device)  # fail early on a bad checkpoint

    def parameters(self) -> dict:
        return {
            "checkpoint": str(_resolve_checkpoint(self.checkpoint)),
            "quantiles": list(self.quantiles),
            "device": self.device or "cpu",
        }

    def estimate(self, x: Any, y: Any) -> float:
        return self.estimate_with_info(x, y).mi_estimate

    def estimate_with_info(self, x: Any, y: Any) -> EstimateResult:
        levels = tuple(sorted(set(self.quantiles) | {0.5}))
        t0 = time.perf_counter()
        qs, novelty = _predict_single(x, y, levels, checkpoint=self.checkpoint, unit="nats", device=self.device,
                                      on_out_of_range=self.on_out_of_range, max_rows="auto")
        elapsed = time.perf_counter() - t0
        by_level = {float(lv): float(v) for lv, v in zip(levels, qs)}
        return EstimateResult(
            mi_estimate=by_level[0.5],
            time_in_seconds=elapsed,
            additional_information={"quantiles": {lv: by_level[lv] for lv in self.quantiles}, "unit": "nats",
                                    "novelty_percentile": novelty},
        )


# ----------------------------------------------------------------------------- CLI


def _load_arrays(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    def load_npy(p: str) -> np.ndarray:
        return np.load(p, allow_pickle=False)

    if args.data is not None:
        if args.x or args.y:
            raise InputError("give either DATA.npz or --x/--y, not both")
        with np.load(args.data, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise InputError(f"{args.data} lacks array(s) {missing}; it has {f.files}")
            return f["x"], f["y"]
    if not (args.x and args.y):
        raise InputError("give DATA.npz (with arrays x and y) or both --x X.npy and --y Y.npy")
    return load_npy(args.x), load_npy(args.y)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="infer.py", description="Predict MI quantiles from samples (x, y).")
    p.add_argument("data", nargs="?", help=".npz file with arrays x (n, dx) and y (n, dy)")
    p.add_argument("--x", help=".npy file with x (n, dx)")
    p.add_argument("--y", help=".npy file with y (n, dy)")
    p.add_argument("--quantiles", type=float, nargs="+", default=[0.05, 0.5, 0.95])
    p.add_argument("--unit", choices=["nats", "bits"], default="nats")
    p.add_argument("--checkpoint", default=None, help="checkpoint (.safetensors); default: the shipped one")
    p.add_argument("--on-out-of-range", choices=["error", "warn", "ignore"], default="error")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    try:
        x, y = _load_arrays(args)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfRangeWarning)
            qs, novelty = _predict_single(x, y, args.quantiles, checkpoint=args.checkpoint, unit=args.unit,
                                          device=None, on_out_of_range=args.on_out_of_range, max_rows="auto")
        ms = 1000 * (time.perf_counter() - t0)
    except (InputError, CheckpointError, OSError, ValueError) as exc:
        print(f"infer.py: error: {exc}", file=sys.stderr)
        return 2
    for w in caught:  # one plain line each, not a source line of infer.py
        print(f"infer.py: warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps({"unit": args.unit, "quantiles": dict(zip(map(str, args.quantiles), qs.tolist())), "ms": ms,
                          "novelty_percentile": None if np.isnan(novelty) else novelty}))
    else:
        xs = np.asarray(x)
        ys = np.asarray(y)
        print(f"n = {xs.shape[0]}, dx = {1 if xs.ndim == 1 else xs.shape[1]}, dy = {1 if ys.ndim == 1 else ys.shape[1]}  ({ms:.1f} ms)")
        for lv, v in zip(args.quantiles, qs):
            print(f"  I(X;Y) quantile {lv:<6g}: {v:.4f} {args.unit}")
        if not np.isnan(novelty):
            print(f"  novelty: percentile {novelty:.0f} of the training sets"
                  + (" (unlike most training data: the interval is calibrated for that, the median may be biased)"
                     if novelty >= 90 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
