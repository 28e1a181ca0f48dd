"""Injective embeddings into more coordinates (MI unchanged: the input is recoverable).

swiss_roll   e chosen coordinates each become a 2-D spiral curve: with u the
             standardised coordinate, t = t0 exp(g asinh(u)) > 0 (strictly increasing,
             never saturates) and the point (t cos t, t sin t). The radius is t, so
             u = sinh(log(t / t0) / g) recovers the input.
helix        e chosen coordinates each become (cos(w u), sin(w u), h u) in 3-D.
append_tanh  appends e coordinates tanh(u . w_i + b_i); the input is kept as is.
Output order: the untouched coordinates, then the new ones.
"""
from __future__ import annotations

import numpy as np

from metagen.transforms.base import Transform, robust_loc_scale

__all__ = ["SwissRoll", "Helix", "AppendTanh", "make_embedding", "EMBEDDING_UNIT"]

# extra output coordinates per unit (embedded coordinate or appended function)
EMBEDDING_UNIT = {"swiss_roll": 1, "helix": 2, "append_tanh": 1}


class _CurveEmbedding(Transform):
    """Replace coordinates ``idx`` by curves; subclasses define _curve (n,) -> (n, k) and _uncurve."""

    k = 2

    def __init__(self, dim: int, idx: np.ndarray, loc: np.ndarray, scale: np.ndarray, params: dict[str, np.ndarray]):
        self.idx = np.asarray(idx, dtype=int)
        self.keep = np.setdiff1d(np.arange(dim), self.idx)
        self.loc, self.scale, self.params = loc, scale, params
        self.dim_in = dim
        self.dim_out = dim + (self.k - 1) * len(self.idx)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x, self.dim_in)
        u = (x[:, self.idx] - self.loc) / self.scale
        return np.concatenate([x[:, self.keep]] + [self._curve(u[:, j], j) for j in range(len(self.idx))], axis=1)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = self._check(y, self.dim_out)
        out = np.empty((len(y), self.dim_in))
        out[:, self.keep] = y[:, :len(self.keep)]
        start = len(self.keep)
        for j, c in enumerate(self.idx):
            u = self._uncurve(y[:, start + self.k * j: start + self.k * (j + 1)], j)
            out[:, c] = self.loc[j] + self.scale[j] * u
        return out


class SwissRoll(_CurveEmbedding):
    name = "swiss_roll"
    k = 2

    def _curve(self, u: np.ndarray, j: int) -> np.ndarray:
        t = self.params["t0"][j] * np.exp(self.params["g"][j] * np.arcsinh(u))
        return np.stack([t * np.cos(t), t * np.sin(t)], axis=1)

    def _uncurve(self, p: np.ndarray, j: int) -> np.ndarray:
        t = np.hypot(p[:, 0], p[:, 1])
        return np.sinh(np.log(t / self.params["t0"][j]) / self.params["g"][j])


class Helix(_CurveEmbedding):
    name = "helix"
    k = 3

    def _curve(self, u: np.ndarray, j: int) -> np.ndarray:
        w, h = self.params["w"][j], self.params["h"][j]
        return np.stack([np.cos(w * u), np.sin(w * u), h * u], axis=1)

    def _uncurve(self, p: np.ndarray, j: int) -> np.ndarray:
        return p[:, 2] / self.params["h"][j]


class AppendTanh(Transform):
    """[x, tanh(((x - loc) / scale) W + b)] with W (d, e)."""

    name = "append_tanh"

    def __init__(self, loc: np.ndarray, scale: np.ndarray, w: np.ndarray, b: np.ndarray):
        self.loc, self.scale, self.w, self.b = loc, scale, w, b
        self.dim_in = len(loc)
        self.dim_out = self.dim_in + w.shape[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x, self.dim_in)
        return np.concatenate([x, np.tanh(((x - self.loc) / self.scale) @ self.w + self.b)], axis=1)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return self._check(y, self.dim_out)[:, :self.dim_in].copy()


def make_embedding(name: str, dim: int, extra: int, rng: np.random.Generator, pilot: np.ndarray) -> Transform:
    """Embedding ``name`` adding ``extra`` coordinates to dim-dimensional input (fitted on ``pilot``)."""
    unit = EMBEDDING_UNIT[name]
    e = extra // unit
    if e < 1 or e * unit != extra:
        raise ValueError(f"{name}: extra must be a positive multiple of {unit}, got {extra}")
    if name == "append_tanh":
        loc, scale = robust_loc_scale(pilot)
        w = rng.normal(0.0, rng.uniform(0.5, 2.0) / np.sqrt(dim), (dim, e))
        return AppendTanh(loc, scale, w, rng.normal(0.0, 0.5, e))
    if e > dim:
        raise ValueError(f"{name}: cannot embed {e} coordinates of a {dim}-dim input")
    idx = np.sort(rng.choice(dim, size=e, replace=False))
    loc, scale = robust_loc_scale(pilot[:, idx])
    if name == "swiss_roll":
        params = {"t0": rng.uniform(np.pi, 3 * np.pi, e), "g": rng.uniform(0.6, 1.2, e)}
        return SwissRoll(dim, idx, loc, scale, params)
    params = {"w": rng.uniform(2.0, 6.0, e), "h": rng.uniform(0.2, 1.0, e)}
    return Helix(dim, idx, loc, scale, params)
