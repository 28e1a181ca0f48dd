"""Transforms applied to X and/or Y: injective maps, so MI is unchanged.

Names (``TRANSFORM_CODES`` is stable: new names are appended, never renumbered):
    identity
    half_cube, asinh, normal_cdf, wiggly      coordinate-wise monotone
    linear                                    invertible linear mixing
    spiral, flow                              non-coordinate-wise diffeomorphisms (dim >= 2)
    swiss_roll, helix, append_tanh            injective embeddings into more coordinates
    half_cube+linear, linear+asinh, wiggly+spiral, asinh+flow, linear+swiss_roll
                                              fixed compositions ("a+b": a first, then b)
    linear+spiral, spiral+linear, flow+linear, half_cube+flow, linear+flow, flow+asinh,
    normal_cdf+spiral, helix+linear, swiss_roll+asinh, spiral+helix, linear+flow+asinh
                                              more compositions (configs/metagen/train_compose.toml;
                                              at most one embedding per composition; two
                                              stacked non-coordinate-wise maps are left out:
                                              tests/test_transforms.py's nearest-neighbour MI
                                              check cannot follow them at n = 60,000)

``make_transform(name, dim_in, extra, rng, pilot)`` builds one with random parameters
(scales fitted once on ``pilot``, a small sample of the input). ``embedding_extra``
says how many coordinates a transform adds for a given output dim.
"""
from __future__ import annotations

import numpy as np

from metagen.transforms.base import Compose, Identity, Transform
from metagen.transforms.embed import EMBEDDING_UNIT, make_embedding
from metagen.transforms.flow import make_flow
from metagen.transforms.linear import make_linear
from metagen.transforms.monotone import MONOTONE_NAMES, make_monotone
from metagen.transforms.spiral import make_spiral

__all__ = ["TRANSFORM_NAMES", "TRANSFORM_CODES", "Transform", "make_transform", "embedding_extra", "EMBEDDINGS"]

TRANSFORM_NAMES: tuple[str, ...] = (
    "identity", "half_cube", "asinh", "normal_cdf", "wiggly", "linear", "spiral", "flow",
    "swiss_roll", "helix", "append_tanh",
    "half_cube+linear", "linear+asinh", "wiggly+spiral", "asinh+flow", "linear+swiss_roll",
    "linear+spiral", "spiral+linear", "flow+linear", "half_cube+flow", "linear+flow", "flow+asinh",
    "normal_cdf+spiral", "helix+linear", "swiss_roll+asinh", "spiral+helix", "linear+flow+asinh",
)
TRANSFORM_CODES: dict[str, int] = {name: i for i, name in enumerate(TRANSFORM_NAMES)}
EMBEDDINGS = tuple(EMBEDDING_UNIT)
_NEEDS_TWO = ("spiral", "flow")          # act on dim >= 2
_MAX_UNITS = {"swiss_roll": 3, "helix": 2, "append_tanh": 3}


def _parts(name: str) -> list[str]:
    if name not in TRANSFORM_CODES:
        raise ValueError(f"unknown transform {name!r} (known: {', '.join(TRANSFORM_NAMES)})")
    return name.split("+")


def embedding_extra(name: str, dim_out: int, rng: np.random.Generator | None) -> int | None:
    """Coordinates transform ``name`` adds when its output has ``dim_out`` coordinates.

    None when the transform cannot produce that dim (e.g. spiral on 1 coordinate,
    swiss_roll on 1 output coordinate). With ``rng`` None only feasibility is decided
    (the smallest feasible extra is returned); otherwise the number of embedded units
    is drawn uniformly among the feasible ones.
    """
    parts = _parts(name)
    emb = [p for p in parts if p in EMBEDDING_UNIT]
    if not emb:
        dim_in = dim_out
        return 0 if all(dim_in >= 2 for p in parts if p in _NEEDS_TWO) else None
    unit = EMBEDDING_UNIT[emb[0]]
    feasible = []
    for e in range(1, _MAX_UNITS[emb[0]] + 1):
        dim_in = dim_out - unit * e
        if dim_in < 1 or (emb[0] != "append_tanh" and e > dim_in):
            continue
        if any(dim_in < 2 for p in parts if p in _NEEDS_TWO):
            continue
        feasible.append(unit * e)
    if not feasible:
        return None
    return feasible[0] if rng is None else int(feasible[int(rng.integers(len(feasible)))])


def _make_one(part: str, dim: int, extra: int, rng: np.random.Generator, pilot: np.ndarray) -> Transform:
    if part == "identity":
        return Identity(dim)
    if part in MONOTONE_NAMES:
        return make_monotone(part, dim, rng, pilot)
    if part == "linear":
        return make_linear(dim, rng, pilot)
    if part == "spiral":
        return make_spiral(dim, rng, pilot)
    if part == "flow":
        return make_flow(dim, rng, pilot)
    return make_embedding(part, dim, extra, rng, pilot)


def make_transform(name: str, dim_in: int, extra: int, rng: np.random.Generator, pilot: np.ndarray) -> Transform:
    """Transform ``name`` on (n, dim_in) arrays adding ``extra`` coordinates (0 unless it
    embeds), parameters drawn from ``rng`` and scales fitted on ``pilot`` (m, dim_in)."""
    parts = _parts(name)
    pilot = np.asarray(pilot, dtype=np.float64)
    if pilot.ndim != 2 or pilot.shape[1] != dim_in:
        raise ValueError(f"pilot must be (m, {dim_in}), got {pilot.shape}")
    maps, dim = [], dim_in
    for part in parts:
        m = _make_one(part, dim, extra if part in EMBEDDING_UNIT else 0, rng, pilot)
        pilot = m.forward(pilot)
        dim = m.dim_out
        maps.append(m)
    if dim != dim_in + extra:
        raise ValueError(f"{name}: output dim {dim} != {dim_in} + {extra}")
    return maps[0] if len(maps) == 1 else Compose(maps)
