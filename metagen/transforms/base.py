"""Transform base class, composition and the robust standardisation that fixes a
transform's scale to its input (fitted once on a pilot sample, then frozen)."""
from __future__ import annotations

import numpy as np

__all__ = ["Transform", "Identity", "Compose", "robust_loc_scale"]


class Transform:
    """A fixed injective map of (n, dim_in) float64 arrays to (n, dim_out), dim_out >= dim_in.

    ``forward`` is the map; ``inverse`` its (left) inverse: inverse(forward(x)) == x.
    Parameters are drawn when the transform is built and never depend on the data it
    is applied to, so the map is one fixed function and MI is unchanged.
    """

    name = "transform"
    dim_in: int
    dim_out: int

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def inverse(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check(self, x: np.ndarray, d: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"{self.name}: expected an (n, {d}) array, got shape {x.shape}")
        return x


class Identity(Transform):
    """The identity map."""

    name = "identity"

    def __init__(self, dim: int):
        self.dim_in = self.dim_out = int(dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._check(x, self.dim_in).copy()

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return self._check(y, self.dim_out).copy()


class Compose(Transform):
    """maps[-1] o ... o maps[0]; the name joins the parts with '+' in application order."""

    def __init__(self, maps: list[Transform]):
        self.maps = list(maps)
        for a, b in zip(self.maps, self.maps[1:]):
            if a.dim_out != b.dim_in:
                raise ValueError(f"cannot compose {a.name} (out {a.dim_out}) with {b.name} (in {b.dim_in})")
        self.dim_in = self.maps[0].dim_in
        self.dim_out = self.maps[-1].dim_out
        self.name = "+".join(m.name for m in self.maps)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for m in self.maps:
            x = m.forward(x)
        return x

    def inverse(self, y: np.ndarray) -> np.ndarray:
        for m in reversed(self.maps):
            y = m.inverse(y)
        return y


def robust_loc_scale(pilot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate median and IQR / 1.349 (a normal's sd) of a pilot sample (m, d);
    robust to heavy tails. Scales are floored at 1e-12 of the largest finite magnitude."""
    pilot = np.asarray(pilot, dtype=np.float64)
    loc = np.median(pilot, axis=0)
    q75, q25 = np.percentile(pilot, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    floor = 1e-12 * max(1.0, float(np.max(np.abs(pilot))) if pilot.size else 1.0)
    scale = np.where(np.isfinite(scale) & (scale > floor), scale, np.maximum(np.std(pilot, axis=0), 1.0))
    return loc, scale
