"""Checkpoint format: one safetensors file (weights) whose metadata holds JSON.

Metadata keys (all values are strings, as safetensors requires):

    format          "amortized-mi-checkpoint"
    format_version  "1"
    config          JSON of ModelConfig.to_dict()
    limits          JSON dict of the trained range: n_min, n_max, dx_max, dy_max, mi_max (+ any extra)
    calibration     JSON list of per-level offsets in t = log1p(MI) space, or a list of such
                    lists (one per n range, `model.quantiles.fit_calibration_by_n`), or null
    calibration_n_edges  JSON list of the n ranges' edges ([] or absent: one row of offsets)
    calibration_novelty  JSON of `model.novelty.NoveltyReference.to_json` (k, edges, mean, scale)
                    or null/absent; when present the offsets have one leading row per novelty bin
                    and the reference points are the tensor NOVELTY_POINTS (not a weight)
    info            JSON dict (training data, steps, metrics, ...)
    fingerprint     SHA-256 over the weights (names, dtypes, shapes, bytes; sorted by name)

Loading never unpickles: safetensors stores raw tensor bytes only.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.network import MIEstimator, ModelConfig
from model.novelty import NoveltyReference
from model.preprocess import stats_dim
from model.quantiles import check_n_edges

FORMAT = "amortized-mi-checkpoint"
FORMAT_VERSION = 1
REQUIRED_LIMITS = ("n_min", "n_max", "dx_max", "dy_max", "mi_max")
NOVELTY_POINTS = "calibration:novelty_points"
"""Tensor name of the novelty reference points (M, S) float32; no module parameter can have this name."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a safetensors file, or does not match this code."""


def weights_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 hex digest over (name, dtype, shape, raw bytes) of every tensor, sorted by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _calibration_shape(q: int, n_edges: Sequence[int], novelty_bins: int = 1) -> tuple[int, ...]:
    """Shape of the offsets for Q quantile levels: (Q,), or (R, Q) with one row per n range; with
    K > 1 novelty bins one such block per bin, (K, Q) or (K, R, Q)."""
    return ((novelty_bins,) if novelty_bins > 1 else ()) + ((q,) if not n_edges else (len(n_edges) + 1, q))


def save_checkpoint(
    path: str | os.PathLike,
    model: MIEstimator,
    *,
    limits: dict,
    calibration: Sequence[float] | Sequence[Sequence[float]] | None = None,
    calibration_n_edges: Sequence[int] = (),
    calibration_novelty: NoveltyReference | None = None,
    info: dict | None = None,
) -> None:
    """Write `model` (weights + config) with its trained `limits`, calibration offsets and info.

    limits must hold n_min, n_max, dx_max, dy_max, mi_max (MI in nats); calibration, if
    given, has one offset per quantile level of the model (Q,), or one such row per n
    range (R, Q) with R = len(calibration_n_edges) + 1 (`model.quantiles.n_range_index`);
    with `calibration_novelty` (K bins) one such block per novelty bin, (K, Q) or (K, R, Q)
    (`model.novelty.fit_calibration_by_novelty`). The file is written to a temporary name and renamed, so a crash never leaves a
    half-written checkpoint.
    """
    missing = [k for k in REQUIRED_LIMITS if k not in limits]
    if missing:
        raise ValueError(f"limits is missing {missing} (required: {list(REQUIRED_LIMITS)})")
    q = len(model.config.quantile_levels)
    edges = list(check_n_edges(calibration_n_edges))
    bins = 1 if calibration_novelty is None else calibration_novelty.bins
    if calibration is not None:
        cal = np.asarray(calibration, dtype=np.float64)
        want = _calibration_shape(q, edges, bins)
        if cal.shape != want:
            raise ValueError(f"calibration needs shape {want} (one offset per quantile level"
                             f"{'' if not edges else ' per n range'}{'' if bins == 1 else ' per novelty bin'}), "
                             f"got {cal.shape}")
        calibration = cal.tolist()
    elif edges or calibration_novelty is not None:
        raise ValueError("calibration_n_edges or calibration_novelty given without calibration")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if calibration_novelty is not None:
        tensors[NOVELTY_POINTS] = torch.from_numpy(np.ascontiguousarray(calibration_novelty.points, dtype=np.float32))
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(model.config.to_dict()),
        "limits": json.dumps(limits),
        "calibration": json.dumps(calibration),
        "calibration_n_edges": json.dumps(edges),
        "calibration_novelty": json.dumps(None if calibration_novelty is None else calibration_novelty.to_json()),
        "info": json.dumps(info or {}),
        "fingerprint": weights_fingerprint(tensors),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _json_field(meta: dict, key: str, path: Path):
    if key not in meta:
        raise CheckpointError(f"{path}: checkpoint metadata has no '{key}' entry")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: checkpoint metadata '{key}' is not valid JSON ({e})") from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MIEstimator, dict]:
    """Load a checkpoint written by `save_checkpoint`.

    Returns (model in eval mode on `device`, metadata) where metadata = {"config": dict,
    "limits": dict, "calibration": list (Q) or list of R lists (Q) or None,
    "calibration_n_edges": list (R - 1 ints), "calibration_novelty": NoveltyReference or None
    (then the calibration has one leading row per novelty bin), "info": dict,
    "format_version": int, "fingerprint": str}. Raises CheckpointError for a missing file, a file that is not
    safetensors, missing/incompatible metadata, a fingerprint mismatch (tampered or
    corrupted weights) or weights that do not fit the stored config.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, ... : never fall back to pickle
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint ({type(e).__name__}: {e}); "
            "torch .pt/.pth pickles are not accepted"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an amortized-MI checkpoint (metadata format={meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: bad format_version {meta.get('format_version')!r}") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}, this code reads {FORMAT_VERSION}")
    config_d = _json_field(meta, "config", path)
    limits = _json_field(meta, "limits", path)
    calibration = _json_field(meta, "calibration", path)
    info = _json_field(meta, "info", path)
    if not isinstance(limits, dict) or any(k not in limits for k in REQUIRED_LIMITS):
        raise CheckpointError(f"{path}: limits must be a dict with {list(REQUIRED_LIMITS)}, got {limits!r}")
    try:
        config = ModelConfig.from_dict(config_d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: stored model config is incompatible with this code: {e}") from None
    n_edges = _json_field(meta, "calibration_n_edges", path) if "calibration_n_edges" in meta else []  # absent: older files
    try:
        n_edges = list(check_n_edges(n_edges))
    except ValueError as e:
        raise CheckpointError(f"{path}: calibration_n_edges: {e}") from None
    novelty = _json_field(meta, "calibration_novelty", path) if "calibration_novelty" in meta else None
    points = tensors.pop(NOVELTY_POINTS, None)
    if (novelty is None) != (points is None):
        raise CheckpointError(f"{path}: calibration_novelty and the tensor {NOVELTY_POINTS} must come together")
    if novelty is not None:
        try:
            novelty = NoveltyReference.from_json(novelty, points.numpy())
        except ValueError as e:
            raise CheckpointError(f"{path}: calibration_novelty: {e}") from None
        if calibration is None:
            raise CheckpointError(f"{path}: calibration_novelty without calibration offsets")
        if novelty.mean.size != stats_dim(config):
            raise CheckpointError(f"{path}: calibration_novelty reads {novelty.mean.size} statistics, the model has "
                                  f"{stats_dim(config)}")
    if calibration is not None:
        want = _calibration_shape(len(config.quantile_levels), n_edges, 1 if novelty is None else novelty.bins)
        try:
            ok = np.asarray(calibration, dtype=np.float64).shape == want
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: calibration must be null or offsets of shape {want}")
    fingerprint = meta.get("fingerprint")
    if fingerprint != weights_fingerprint(tensors if points is None else {**tensors, NOVELTY_POINTS: points}):
        raise CheckpointError(
            f"{path}: weight fingerprint mismatch: the file is corrupted or was modified after saving"
        )
    model = MIEstimator(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the stored config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}"
        )
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    metadata = {
        "config": config.to_dict(),
        "limits": limits,
        "calibration": calibration,
        "calibration_n_edges": n_edges,
        "calibration_novelty": novelty,
        "info": info,
        "format_version": version,
        "fingerprint": fingerprint,
    }
    return model, metadata


def lineage(path: str | os.PathLike, meta: dict) -> dict:
    """Where a run that starts from checkpoint `path` (metadata `meta`) comes from.

    Returns {"path", "fingerprint", "steps_before"}: steps_before counts the training
    steps of that checkpoint and of everything it was itself started from, so a chain of
    continued runs reports its total number of steps.
    """
    info = meta.get("info") or {}
    before = int(info.get("step") or 0) + int((info.get("init_from") or {}).get("steps_before") or 0)
    return {"path": str(path), "fingerprint": meta.get("fingerprint"), "steps_before": before}
