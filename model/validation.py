"""Input validation for inference: one exception type whose messages say what to fix.

Everything a user passes to :mod:`infer` goes through :func:`as_sample_pair` and
:func:`check_quantiles` before it reaches the network. The rules are the
documented contract of ``predict_mi_quantiles``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["InputError", "OutOfRangeWarning", "as_sample_pair", "check_quantiles", "as_2d"]


class InputError(ValueError):
    """Raised for input the estimator cannot use; the message says what to change."""


class OutOfRangeWarning(UserWarning):
    """Input lies outside what the checkpoint was trained on; the answer is an extrapolation
    or was computed on a subsample (the warning says which)."""


def _to_numpy(a: Any, name: str) -> np.ndarray:
    """Accept numpy arrays, nested lists and torch tensors (moved to CPU, detached)."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch.Tensor without importing torch here
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged nested lists and the like
        raise InputError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype == object:
        raise InputError(f"{name} is a ragged or mixed-type sequence; pass a rectangular numeric array")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float64)
    if arr.dtype.kind not in "iuf":
        raise InputError(
            f"{name} has non-numeric dtype {arr.dtype}; pass integers or floats "
            "(complex, string and datetime data are not supported)"
        )
    return arr


def as_2d(a: Any, name: str) -> np.ndarray:
    """Return ``a`` as a float64 array of shape (n, d); 1-D input means one column."""
    arr = _to_numpy(a, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be 1-D (n,) or 2-D (n, d) with samples in rows; got shape {arr.shape}"
        )
    if arr.shape[1] == 0:
        raise InputError(f"{name} has no columns (shape {arr.shape}); it needs at least one variable")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        kind = "NaN" if np.isnan(arr[tuple(bad)]) else "inf"
        count = int((~np.isfinite(arr)).sum())
        raise InputError(
            f"{name} contains {count} non-finite value(s) ({kind} first at row {bad[0]}, column {bad[1]}); "
            "drop or impute those rows first"
        )
    return arr


def as_sample_pair(x: Any, y: Any, *, n_min: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate one sample set and return float64 arrays x (n, dx), y (n, dy).

    Raises InputError for wrong ndim, non-numeric dtype, NaN/inf, mismatched n and
    n below ``n_min``.
    """
    xa = as_2d(x, "x")
    ya = as_2d(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise InputError(
            f"x and y must have the same number of samples (rows): x has {xa.shape[0]}, y has {ya.shape[0]}"
        )
    n = xa.shape[0]
    if n < n_min:
        raise InputError(f"need at least {n_min} samples (rows) to estimate MI; got n = {n}")
    return xa, ya


def check_quantiles(quantiles: float | Sequence[float]) -> np.ndarray:
    """Return the requested quantile levels as a 1-D float64 array, each strictly in (0, 1)."""
    try:
        q = np.atleast_1d(np.asarray(quantiles, dtype=np.float64))
    except (TypeError, ValueError):
        raise InputError(f"quantiles must be numbers strictly between 0 and 1; got {quantiles!r}") from None
    if q.ndim != 1 or q.size == 0:
        raise InputError(f"quantiles must be a number or a non-empty 1-D sequence of numbers; got {quantiles!r}")
    if not np.isfinite(q).all() or (q <= 0).any() or (q >= 1).any():
        raise InputError(f"quantile levels must lie strictly between 0 and 1; got {q.tolist()}")
    return q
