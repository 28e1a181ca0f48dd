"""Spiral: rotate the (standardised) vector by an angle that grows with its radius.

u = Q (x - loc) / scale with a random orthogonal frame Q; the coordinates of u are
paired into d // 2 planes and plane p is rotated by theta_p = omega_p * |u|. Rotations
keep |u|, so the inverse reads the radius off the output and rotates back: a
diffeomorphism of R^d (d >= 2), MI unchanged. Output: Q^T (rotated u).
"""
from __future__ import annotations

import numpy as np

from metagen.families.common import random_orthogonal
from metagen.transforms.base import Transform, robust_loc_scale

__all__ = ["Spiral", "make_spiral"]


class Spiral(Transform):
    name = "spiral"

    def __init__(self, loc: np.ndarray, scale: np.ndarray, frame: np.ndarray, omega: np.ndarray):
        self.loc, self.scale, self.frame = loc, scale, frame
        self.omega = np.asarray(omega, dtype=np.float64)     # (d // 2,) radians per unit radius
        self.dim_in = self.dim_out = len(loc)
        if self.dim_in < 2:
            raise ValueError("spiral needs dim >= 2")

    def _rotate(self, u: np.ndarray, sign: float) -> np.ndarray:
        r = np.linalg.norm(u, axis=1, keepdims=True)
        th = sign * r * self.omega                              # (n, P)
        c, s = np.cos(th), np.sin(th)
        p = len(self.omega)
        a, b = u[:, 0:2 * p:2], u[:, 1:2 * p:2]
        out = u.copy()
        out[:, 0:2 * p:2] = c * a - s * b
        out[:, 1:2 * p:2] = s * a + c * b
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        u = ((self._check(x, self.dim_in) - self.loc) / self.scale) @ self.frame.T
        return self._rotate(u, 1.0) @ self.frame

    def inverse(self, y: np.ndarray) -> np.ndarray:
        u = self._rotate(self._check(y, self.dim_out) @ self.frame.T, -1.0)
        return (u @ self.frame) * self.scale + self.loc


def make_spiral(dim: int, rng: np.random.Generator, pilot: np.ndarray) -> Spiral:
    """Random frame and rates |omega_p| in [0.5, 2] / typical radius, random signs."""
    loc, scale = robust_loc_scale(pilot)
    radius = float(np.median(np.linalg.norm((pilot - loc) / scale, axis=1))) or 1.0
    omega = rng.uniform(0.5, 2.0, dim // 2) * rng.choice([-1.0, 1.0], dim // 2) * (np.pi / radius)
    return Spiral(loc, scale, random_orthogonal(dim, rng), omega)
