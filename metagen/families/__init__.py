"""Families of joint distributions with known MI (nats), by name.

``build_family(name, dim_x, dim_y, target, rng)`` returns a sampler (see
``metagen.sampler``) of exactly those dims whose MI aims at ``target`` (clipped to
``family_capacity(name, dim_x, dim_y)``); the sampler's ``mutual_information()`` is
the truth (exact, or Monte Carlo with ``mi_stderr`` for ``mixture``).

``FAMILY_CODES`` (name -> int) is stable: new families are appended, never renumbered.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from metagen.families.common import MAX_PAIR_MI
from metagen.families.composite import build_blocks, build_independent
from metagen.families.gaussian import build_gaussian, gaussian_capacity
from metagen.families.mixture import build_mixture, mixture_capacity
from metagen.families.onedim import build_pairs
from metagen.families.student_t import build_student_t, student_t_capacity
from metagen.sampler import Sampler

__all__ = ["Family", "FAMILIES", "FAMILY_NAMES", "FAMILY_CODES", "build_family", "family_capacity"]


@dataclass(frozen=True)
class Family:
    """A named family: a builder (dim_x, dim_y, target_mi, rng) -> Sampler and its capacity (nats)."""

    name: str
    build: Callable[[int, int, float, np.random.Generator], Sampler]
    capacity: Callable[[int, int], float]


def _pairs_cap(dx: int, dy: int) -> float:
    return MAX_PAIR_MI * min(dx, dy)


def _gauss(structure: str) -> Family:
    return Family(f"gaussian_{structure}",
                  lambda dx, dy, t, rng: build_gaussian(structure, dx, dy, t, rng),
                  lambda dx, dy: gaussian_capacity(structure, dx, dy))


def _one_d(name: str) -> Family:
    return Family(name, lambda dx, dy, t, rng: build_pairs(name, dx, dy, t, rng), _pairs_cap)


_LIST = [
    Family("independent", build_independent, lambda dx, dy: 0.0),
    _gauss("dense"), _gauss("sparse"), _gauss("two_pair"), _gauss("latent"), _gauss("random"),
    Family("student_t", build_student_t, student_t_capacity),
    _one_d("additive_uniform"), _one_d("bimodal"), _one_d("staircase"),
    Family("mixture", build_mixture, mixture_capacity),
    Family("blocks", build_blocks, _pairs_cap),
]

FAMILIES: dict[str, Family] = {f.name: f for f in _LIST}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
FAMILY_CODES: dict[str, int] = {name: i for i, name in enumerate(FAMILY_NAMES)}


def _family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(FAMILY_NAMES)})") from None


def build_family(name: str, dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> Sampler:
    """A sampler of family ``name`` with dims (dim_x, dim_y) aiming at ``target`` nats."""
    if dim_x < 1 or dim_y < 1:
        raise ValueError(f"dims must be >= 1, got ({dim_x}, {dim_y})")
    return _family(name).build(int(dim_x), int(dim_y), float(target), rng)


def family_capacity(name: str, dim_x: int, dim_y: int) -> float:
    """Largest MI (nats) family ``name`` aims at in dims (dim_x, dim_y)."""
    return float(_family(name).capacity(int(dim_x), int(dim_y)))
