"""Families built from other families: independent blocks (MI adds) and independent X, Y (MI 0)."""
from __future__ import annotations

import numpy as np

from metagen.families.common import MAX_PAIR_MI, split_mi
from metagen.sampler import IndependentBlocks, IndependentPair, Sampler

__all__ = ["build_blocks", "build_independent", "BLOCK_FAMILIES", "INDEPENDENT_BASES"]

# Families a block (or the marginals of an independent pair) is drawn from.
BLOCK_FAMILIES = ("gaussian_dense", "gaussian_sparse", "gaussian_latent", "gaussian_random", "student_t",
                  "additive_uniform", "bimodal", "staircase")
INDEPENDENT_BASES = BLOCK_FAMILIES + ("mixture",)


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """A random split of ``total`` into ``parts`` positive integers."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)


def build_blocks(dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> Sampler:
    """2-4 independent blocks of different families (1 block when min(dx, dy) = 1).

    The smaller side's dims are split into positive parts and the larger side gets the
    same parts plus a random share of its extra dims, so every block couples
    min(bx, by) >= 1 pairs and the capacity is MAX_PAIR_MI * min(dx, dy). The target
    is split at random over the blocks; MI = sum of the block MIs.
    """
    from metagen.families import build_family, family_capacity

    k = min(dim_x, dim_y)
    m = 1 if k == 1 else int(rng.integers(2, min(k, 4) + 1))
    parts = _composition(k, m, rng)
    extra_x = rng.multinomial(dim_x - k, np.full(m, 1.0 / m))
    extra_y = rng.multinomial(dim_y - k, np.full(m, 1.0 / m))
    bx, by = parts + extra_x, parts + extra_y
    caps = np.array([MAX_PAIR_MI * p for p in parts], dtype=float)
    shares = split_mi(min(float(target), caps.sum()), m, rng, uneven=True, cap=float(caps.max()))
    blocks = []
    for i in range(m):
        fam = BLOCK_FAMILIES[int(rng.integers(len(BLOCK_FAMILIES)))]
        t = min(shares[i], family_capacity(fam, int(bx[i]), int(by[i])))
        blocks.append(build_family(fam, int(bx[i]), int(by[i]), t, rng))
    return blocks[0] if m == 1 else IndependentBlocks(blocks, rng)


def build_independent(dim_x: int, dim_y: int, target: float, rng: np.random.Generator) -> Sampler:
    """X, Y independent with the marginals of a random dependent family (``target`` is
    ignored: MI = 0 exactly)."""
    from metagen.families import build_family, family_capacity

    fam = INDEPENDENT_BASES[int(rng.integers(len(INDEPENDENT_BASES)))]
    t = rng.uniform(0.0, min(8.0, family_capacity(fam, dim_x, dim_y)))
    return IndependentPair(build_family(fam, dim_x, dim_y, t, rng))
