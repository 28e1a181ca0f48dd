"""The meta-dataset generator's configuration: a TOML file -> ``GeneratorConfig``.

A config says how many sample sets a meta-dataset holds and from which distribution
each set's recipe is drawn (see ``metagen.tasks.draw_task``)::

    name = "tiny"
    seed = 0                 # default global seed (the CLI may override it)
    num_sets = 200
    sets_per_shard = 50

    [n]                      # sample size, log-uniform on [max(min, dx+dy+2), max]
    min = 10
    max = 300
    tail_max = 300           # with probability tail_fraction, log-uniform on [max, tail_max]
    tail_fraction = 0.0
    near_min_fraction = 0.1  # with this probability n is barely above dx+dy+2

    [dims]                   # dx, dy independently log-uniform integers on [min, max]
    min = 1
    max = 6
    equal_fraction = 0.2     # probability that dy = dx

    [mi]                     # target MI in nats
    independent_fraction = 0.1   # family "independent", MI = 0 exactly
    uniform_max = 8.0            # otherwise uniform on [0, uniform_max] ...
    tail_fraction = 0.1          # ... or, with this probability, log-uniform on
    tail_max = 35.0              #     [uniform_max, tail_max]

    [families]               # relative weights (names: metagen.families.FAMILY_NAMES)
    gaussian_dense = 1.0

    [transforms]             # relative weights (names: metagen.transforms.TRANSFORM_NAMES)
    identity = 1.0

    exclude = [["student_t", "spiral"]]   # (family, transform) pairs never drawn
    only = []                             # if non-empty: only these pairs are drawn

A pair matches a task when the family is equal (or ``"*"``) and the transform is
equal to the task's transform name or to one ``+``-separated component of it (or
``"*"``). Top-level keys ``exclude``/``only`` must come before the first table.

A config may start from another one: ``base = "train_geometry.toml"`` (a path
relative to the file; the base may have its own base). Tables are merged key by
key (a weight table gains or overrides names; weight 0 drops one), every other value
(``name``, ``seed``, ``exclude``, ...) replaces the base's. Only the merged result
counts: a store's manifest and config fingerprint are those of the resolved config,
so writing a config with ``base`` changes nothing for stores made from the flat one.

Every error is a ``ConfigError`` with a one-line message naming the field.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "NSpec",
    "DimSpec",
    "MISpec",
    "GeneratorConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "pair_matches",
]


class ConfigError(ValueError):
    """A generator config is invalid; the message is one line and names the field."""


@dataclass(frozen=True)
class NSpec:
    """Distribution of the sample size n (always n >= dx + dy + 2)."""

    min: int = 10                   # lower end of the log-uniform body
    max: int = 500                  # upper end of the body
    tail_max: int | None = None     # upper end of the optional tail [max, tail_max]
    tail_fraction: float = 0.0      # probability of drawing n from the tail
    near_min_fraction: float = 0.0  # probability of n in [dx+dy+2, 2*(dx+dy)+2]
    values: tuple[int, ...] = ()    # if set: n uniform over these values (those >= dx+dy+2), for test stores

    @property
    def upper(self) -> int:
        """The largest n this spec can produce."""
        return max(self.max, self.tail_max or self.max, *self.values)


@dataclass(frozen=True)
class DimSpec:
    """Distribution of the dimensions dx, dy (after any embedding transform)."""

    min: int = 1
    max: int = 6
    equal_fraction: float = 0.0     # probability that dy is set equal to dx


@dataclass(frozen=True)
class MISpec:
    """Distribution of the target MI in nats (families clip it to what they can reach)."""

    independent_fraction: float = 0.1   # sets with X, Y independent (MI = 0 exactly)
    uniform_max: float = 8.0            # dense part: uniform on [0, uniform_max]
    tail_fraction: float = 0.0          # probability of the log-uniform tail
    tail_max: float = 35.0              # tail: log-uniform on [uniform_max, tail_max]


@dataclass(frozen=True)
class GeneratorConfig:
    """A complete meta-dataset recipe; see the module docstring for the TOML form."""

    name: str
    num_sets: int
    sets_per_shard: int
    families: dict[str, float]
    transforms: dict[str, float]
    n: NSpec = field(default_factory=NSpec)
    dims: DimSpec = field(default_factory=DimSpec)
    mi: MISpec = field(default_factory=MISpec)
    exclude: tuple[tuple[str, str], ...] = ()
    only: tuple[tuple[str, str], ...] = ()
    seed: int = 0

    @property
    def num_shards(self) -> int:
        """Number of shards: ceil(num_sets / sets_per_shard)."""
        return -(-self.num_sets // self.sets_per_shard)


def pair_matches(pair: tuple[str, str], family: str, transform: str) -> bool:
    """True when a config (family, transform) pair covers a task's family and transform name."""
    fam, tr = pair
    if fam != "*" and fam != family:
        return False
    return tr == "*" or tr == transform or tr in transform.split("+")


# ----------------------------------------------------------------------------- parsing

def _get(table: dict[str, Any], key: str, where: str, kind: type, default: Any = None, required: bool = False):
    if key not in table:
        if required:
            raise ConfigError(f"{where}{key}: missing required field")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _fraction(value: float, name: str) -> float:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ConfigError(f"{name}: must be in [0, 1], got {value}")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")


def _weights(table: Any, name: str, known: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{name}: must be a non-empty table of name = weight")
    out: dict[str, float] = {}
    for key, w in table.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown name (known: {', '.join(known)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"{name}.{key}: weight must be a finite number >= 0, got {w!r}")
        if w > 0:
            out[key] = float(w)
    if not out:
        raise ConfigError(f"{name}: all weights are zero")
    return out


def _pairs(value: Any, name: str, families: tuple[str, ...], transforms: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be a list of [family, transform] pairs")
    out = []
    components = set(transforms) | {c for t in transforms for c in t.split("+")}
    for i, p in enumerate(value):
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise ConfigError(f"{name}[{i}]: must be a [family, transform] pair of strings, got {p!r}")
        fam, tr = p
        if fam != "*" and fam not in families:
            raise ConfigError(f"{name}[{i}]: unknown family {fam!r}")
        if tr != "*" and tr not in components:
            raise ConfigError(f"{name}[{i}]: unknown transform {tr!r}")
        out.append((fam, tr))
    return tuple(out)


def config_from_dict(raw: dict[str, Any]) -> GeneratorConfig:
    """Validate a parsed TOML table and build a ``GeneratorConfig`` (raises ``ConfigError``)."""
    from metagen.families import FAMILY_NAMES
    from metagen.transforms import TRANSFORM_NAMES

    _check_keys(raw, {"name", "seed", "num_sets", "sets_per_shard", "n", "dims", "mi", "families",
                      "transforms", "exclude", "only", "description"}, "")
    name = _get(raw, "name", "", str, required=True)
    seed = _get(raw, "seed", "", int, default=0)
    if seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {seed}")
    num_sets = _get(raw, "num_sets", "", int, required=True)
    if num_sets < 1:
        raise ConfigError(f"num_sets: must be >= 1, got {num_sets}")
    sets_per_shard = _get(raw, "sets_per_shard", "", int, required=True)
    if sets_per_shard < 1:
        raise ConfigError(f"sets_per_shard: must be >= 1, got {sets_per_shard}")

    t = raw.get("dims", {})
    if not isinstance(t, dict):
        raise ConfigError("dims: must be a table")
    _check_keys(t, {"min", "max", "equal_fraction"}, "dims.")
    dims = DimSpec(min=_get(t, "min", "dims.", int, 1), max=_get(t, "max", "dims.", int, 6),
                   equal_fraction=_fraction(_get(t, "equal_fraction", "dims.", float, 0.0), "dims.equal_fraction"))
    if dims.min < 1:
        raise ConfigError(f"dims.min: must be >= 1, got {dims.min}")
    if dims.max < dims.min:
        raise ConfigError(f"dims.max: must be >= dims.min ({dims.min}), got {dims.max}")

    t = raw.get("n", {})
    if not isinstance(t, dict):
        raise ConfigError("n: must be a table")
    _check_keys(t, {"min", "max", "tail_max", "tail_fraction", "near_min_fraction", "values"}, "n.")
    values = t.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 3 for v in values):
        raise ConfigError(f"n.values: must be a list of integers >= 3, got {values!r}")
    nspec = NSpec(min=_get(t, "min", "n.", int, 10), max=_get(t, "max", "n.", int, 500),
                  tail_max=_get(t, "tail_max", "n.", int, None),
                  tail_fraction=_fraction(_get(t, "tail_fraction", "n.", float, 0.0), "n.tail_fraction"),
                  near_min_fraction=_fraction(_get(t, "near_min_fraction", "n.", float, 0.0), "n.near_min_fraction"),
                  values=tuple(sorted(set(values))))
    if nspec.min < 3:
        raise ConfigError(f"n.min: must be >= 3, got {nspec.min}")
    if nspec.max < nspec.min:
        raise ConfigError(f"n.max: must be >= n.min ({nspec.min}), got {nspec.max}")
    if nspec.tail_max is not None and nspec.tail_max < nspec.max:
        raise ConfigError(f"n.tail_max: must be >= n.max ({nspec.max}), got {nspec.tail_max}")
    if nspec.max < 2 * dims.max + 2:
        raise ConfigError(f"n.max: must be >= 2 * dims.max + 2 = {2 * dims.max + 2} (rule n >= dx + dy + 2), got {nspec.max}")

    t = raw.get("mi", {})
    if not isinstance(t, dict):
        raise ConfigError("mi: must be a table")
    _check_keys(t, {"independent_fraction", "uniform_max", "tail_fraction", "tail_max"}, "mi.")
    mi = MISpec(independent_fraction=_fraction(_get(t, "independent_fraction", "mi.", float, 0.1), "mi.independent_fraction"),
                uniform_max=_get(t, "uniform_max", "mi.", float, 8.0),
                tail_fraction=_fraction(_get(t, "tail_fraction", "mi.", float, 0.0), "mi.tail_fraction"),
                tail_max=_get(t, "tail_max", "mi.", float, 35.0))
    if not (0.0 < mi.uniform_max < 1e3):
        raise ConfigError(f"mi.uniform_max: must be in (0, 1000) nats, got {mi.uniform_max}")
    if not (mi.tail_max >= mi.uniform_max and mi.tail_max < 1e3):
        raise ConfigError(f"mi.tail_max: must be in [mi.uniform_max, 1000) nats, got {mi.tail_max}")

    families = _weights(raw.get("families"), "families", tuple(f for f in FAMILY_NAMES if f != "independent"))
    transforms = _weights(raw.get("transforms"), "transforms", TRANSFORM_NAMES)
    exclude = _pairs(raw.get("exclude", []), "exclude", FAMILY_NAMES, TRANSFORM_NAMES)
    only = _pairs(raw.get("only", []), "only", FAMILY_NAMES, TRANSFORM_NAMES)

    cfg = GeneratorConfig(name=name, num_sets=num_sets, sets_per_shard=sets_per_shard, families=families,
                          transforms=transforms, n=nspec, dims=dims, mi=mi, exclude=exclude, only=only, seed=seed)
    _check_reachable(cfg)
    return cfg


def _check_reachable(cfg: GeneratorConfig) -> None:
    """Every weighted choice must leave at least one allowed (family, transform) pair."""
    from metagen.tasks import allowed_pairs

    pairs = allowed_pairs(cfg)
    dependent = [p for p in pairs if p[0] != "independent"]
    field = "only" if cfg.only else "exclude"
    if cfg.mi.independent_fraction < 1.0 and not dependent:
        raise ConfigError(f"{field}: leaves no (family, transform) pair with positive weights to draw")
    if cfg.mi.independent_fraction > 0.0 and not any(p[0] == "independent" for p in pairs):
        raise ConfigError(f"mi.independent_fraction: > 0 but {field} leaves no transform for family 'independent'")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: tables merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_raw(path: Path, field: str, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The TOML table of `path` with its ``base`` chain resolved (raises ``ConfigError``)."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{field}: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{field}: invalid TOML in {path}: {str(exc).splitlines()[0]}") from None
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base: must be the path of another config file, got {base!r}")
    here = path.resolve()
    target = (path.parent / base).resolve()
    if target in chain + (here,):
        names = " -> ".join(p.name for p in chain + (here, target))
        raise ConfigError(f"base: configs inherit from each other in a cycle ({names})")
    return _merge(_load_raw(target, "base", chain + (here,)), raw)


def load_config(path: str | Path) -> GeneratorConfig:
    """Read and validate a generator config TOML file, resolving ``base`` (raises ``ConfigError``)."""
    return config_from_dict(_load_raw(Path(path), "config"))


def config_to_dict(cfg: GeneratorConfig) -> dict[str, Any]:
    """A JSON-serialisable dict of the config (for the store's manifest); round-trips via
    ``config_from_dict``."""
    n = {"min": cfg.n.min, "max": cfg.n.max, "tail_fraction": cfg.n.tail_fraction,
         "near_min_fraction": cfg.n.near_min_fraction}
    if cfg.n.tail_max is not None:
        n["tail_max"] = cfg.n.tail_max
    if cfg.n.values:
        n["values"] = list(cfg.n.values)
    return {
        "name": cfg.name, "seed": cfg.seed, "num_sets": cfg.num_sets, "sets_per_shard": cfg.sets_per_shard,
        "n": n,
        "dims": {"min": cfg.dims.min, "max": cfg.dims.max, "equal_fraction": cfg.dims.equal_fraction},
        "mi": {"independent_fraction": cfg.mi.independent_fraction, "uniform_max": cfg.mi.uniform_max,
               "tail_fraction": cfg.mi.tail_fraction, "tail_max": cfg.mi.tail_max},
        "families": dict(cfg.families), "transforms": dict(cfg.transforms),
        "exclude": [list(p) for p in cfg.exclude], "only": [list(p) for p in cfg.only],
    }
