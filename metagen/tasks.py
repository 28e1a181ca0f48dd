"""Drawing one sample-set recipe (a ``Task``) of a meta-dataset.

``draw_task(config, seed, index)`` uses ``np.random.default_rng(SeedSequence([seed,
index]))`` and nothing else, so set ``index`` is the same bytes whatever the worker,
shard or order. The draw, in order: per-set sampling seed; dims (dx, dy) and the
(family, transform) pair among the allowed ones (redrawing dims when the transform
cannot act on them); the side(s) the transform acts on; the target MI (0 for the
``independent`` family, else the config's MI distribution truncated to what the
family reaches in those dims); the family's sampler; the transform's random
parameters (fitted once on a small pilot sample); and n.

Drawing is cheap (milliseconds); the only heavy step, the Monte Carlo MI of the
``mixture`` family, runs once per task with a seed drawn from the task's generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from metagen.config import GeneratorConfig, pair_matches
from metagen.families import FAMILY_CODES, FAMILY_NAMES, build_family, family_capacity
from metagen.sampler import Sampler, TransformedSampler
from metagen.transforms import TRANSFORM_CODES, TRANSFORM_NAMES, embedding_extra, make_transform

__all__ = ["Task", "draw_task", "allowed_pairs", "FAMILY_CODES", "TRANSFORM_CODES"]

_SIDES = ("x", "y", "both")
_FLOAT32_LIMIT = 1e30        # samples are clipped to +-this before the float32 cast
_PILOT = 256                 # pilot sample size used to fit transform parameters


@dataclass(frozen=True)
class Task:
    """One sample set's recipe: a sampler with known MI (nats), its sizes and codes."""

    family: str
    family_code: int
    transform: str
    transform_code: int
    n: int
    dx: int
    dy: int
    mi: float                 # nats
    mi_stderr: float          # 0.0 when exact
    seed: int                 # per-set seed of ``sample``
    index: int = -1
    transform_side: str = "none"     # "x", "y", "both" or "none" (identity)
    sampler: Sampler = field(default=None, repr=False, compare=False)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The set's sample: float32 x (n, dx), y (n, dy), finite, same bytes on every call.

        Rows with a non-finite value (overflow in a far tail) are redrawn from the same
        per-set generator; values are clipped to +-1e30 before the float32 cast.
        """
        rng = np.random.default_rng(self.seed)
        x, y = self.sampler.sample(self.n, rng)
        for _ in range(20):
            bad = ~(np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1))
            if not bad.any():
                break
            x2, y2 = self.sampler.sample(int(bad.sum()), rng)
            x[bad], y[bad] = x2, y2
        else:
            raise RuntimeError(f"task {self.index}: sampler keeps producing non-finite values")
        x = np.clip(x, -_FLOAT32_LIMIT, _FLOAT32_LIMIT).astype(np.float32)
        y = np.clip(y, -_FLOAT32_LIMIT, _FLOAT32_LIMIT).astype(np.float32)
        if x.shape != (self.n, self.dx) or y.shape != (self.n, self.dy):
            raise RuntimeError(f"task {self.index}: sampler returned {x.shape}, {y.shape}, "
                               f"expected ({self.n}, {self.dx}), ({self.n}, {self.dy})")
        return x, y


def allowed_pairs(config: GeneratorConfig) -> list[tuple[str, str]]:
    """(family, transform) pairs with positive weight that ``only``/``exclude`` allow.

    The ``independent`` family is listed when ``mi.independent_fraction`` > 0.
    """
    fams = [f for f in FAMILY_NAMES if f in config.families]
    if config.mi.independent_fraction > 0:
        fams.append("independent")
    out = []
    for f in fams:
        for t in config.transforms:
            if config.only and not any(pair_matches(p, f, t) for p in config.only):
                continue
            if any(pair_matches(p, f, t) for p in config.exclude):
                continue
            out.append((f, t))
    return out


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Integer in [lo, hi], log-uniform."""
    if hi <= lo:
        return int(lo)
    v = int(math.floor(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))
    return min(max(v, lo), hi)


def _choice(rng: np.random.Generator, names: list[str], weights: list[float]) -> str:
    w = np.asarray(weights, dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _draw_target(config: GeneratorConfig, cap: float, rng: np.random.Generator) -> float:
    """Target MI (nats) from the config's distribution, truncated to [0, cap] by rejection."""
    m = config.mi
    t = 0.0
    for _ in range(32):
        if m.tail_fraction > 0 and rng.uniform() < m.tail_fraction and m.tail_max > m.uniform_max:
            t = math.exp(rng.uniform(math.log(m.uniform_max), math.log(m.tail_max)))
        else:
            t = rng.uniform(0.0, m.uniform_max)
        if t <= cap:
            return t
    return min(t, cap)


def _draw_n(config: GeneratorConfig, dx: int, dy: int, rng: np.random.Generator) -> int:
    s = config.n
    lo = max(s.min, dx + dy + 2)
    if s.values:
        # fixed sizes (test stores reported per n): the values the dims allow, else the largest
        ok = [v for v in s.values if v >= dx + dy + 2] or [max(s.values[-1], dx + dy + 2)]
        return int(ok[int(rng.integers(len(ok)))])
    u = rng.uniform()
    if u < s.near_min_fraction:
        return int(rng.integers(lo, max(lo, 2 * (dx + dy) + 2) + 1))
    if s.tail_max is not None and s.tail_max > s.max and u < s.near_min_fraction + s.tail_fraction:
        return _log_uniform_int(rng, max(lo, s.max), s.tail_max)
    return _log_uniform_int(rng, lo, max(lo, s.max))


def _draw_recipe(config: GeneratorConfig, rng: np.random.Generator):
    """Dims, family, transform, side and extra coordinates; redraws dims when needed."""
    pairs = allowed_pairs(config)
    dep = [p for p in pairs if p[0] != "independent"]
    ind = [p for p in pairs if p[0] == "independent"]
    independent = rng.uniform() < config.mi.independent_fraction
    pool = ind if independent else dep
    for _ in range(200):
        dx = _log_uniform_int(rng, config.dims.min, config.dims.max)
        dy = dx if rng.uniform() < config.dims.equal_fraction else _log_uniform_int(rng, config.dims.min, config.dims.max)
        if independent:
            family = "independent"
        else:
            fams = sorted({f for f, _ in pool}, key=FAMILY_NAMES.index)
            family = _choice(rng, fams, [config.families[f] for f in fams])
        trs = [t for f, t in pool if f == family]
        transform = _choice(rng, trs, [config.transforms[t] for t in trs])
        if transform == "identity":
            return dx, dy, family, transform, "none", 0, 0
        sides = [s for s in _SIDES
                 if all(embedding_extra(transform, d, rng=None) is not None
                        for d in ((dx,) if s == "x" else (dy,) if s == "y" else (dx, dy)))]
        if not sides:
            continue
        side = sides[int(rng.integers(len(sides)))]
        ex = embedding_extra(transform, dx, rng) if side in ("x", "both") else 0
        ey = embedding_extra(transform, dy, rng) if side in ("y", "both") else 0
        return dx, dy, family, transform, side, ex, ey
    raise RuntimeError("could not draw dims that the allowed transforms can act on; widen dims or transforms")


def draw_task(config: GeneratorConfig, seed: int, index: int) -> Task:
    """Set ``index`` of the meta-dataset with global ``seed`` (deterministic, cheap).

    All randomness comes from ``np.random.default_rng(np.random.SeedSequence([seed, index]))``.
    Returns a ``Task`` whose dx, dy are the final dims (after any embedding).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    set_seed = int(rng.integers(0, 2**63 - 1))
    dx, dy, family, transform, side, ex, ey = _draw_recipe(config, rng)
    bx, by = dx - ex, dy - ey                    # dims before the embedding
    if family == "independent":
        target = 0.0
    else:
        target = _draw_target(config, family_capacity(family, bx, by), rng)
    base = build_family(family, bx, by, target, rng)
    sampler: Sampler = base
    if side != "none":
        pilot_rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
        px, py = base.sample(_PILOT, pilot_rng)
        x_map = make_transform(transform, bx, ex, rng, px) if side in ("x", "both") else None
        y_map = make_transform(transform, by, ey, rng, py) if side in ("y", "both") else None
        sampler = TransformedSampler(base, x_map, y_map)
    n = _draw_n(config, dx, dy, rng)
    mi = float(sampler.mutual_information())
    return Task(family=family, family_code=FAMILY_CODES[family], transform=transform,
                transform_code=TRANSFORM_CODES[transform], n=n, dx=dx, dy=dy, mi=max(mi, 0.0),
                mi_stderr=float(sampler.mi_stderr), seed=set_seed, index=int(index), transform_side=side,
                sampler=sampler)


assert set(TRANSFORM_NAMES) == set(TRANSFORM_CODES)
