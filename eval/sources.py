"""Where the harness gets its test sets: a metagen zarr store, or an in-memory list.

A source has `len(source)`, `source.info(i) -> SetInfo` (cheap, no sample data) and
`source.get(i) -> (x (n, dx), y (n, dy))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class SetInfo:
    """Metadata of one test set; mi and mi_stderr in nats."""

    index: int
    n: int
    dx: int
    dy: int
    mi: float
    mi_stderr: float = 0.0
    family: str = "unknown"
    transform: str = "none"
    seed: int = -1


class SetSource(Protocol):
    def __len__(self) -> int: ...

    def info(self, i: int) -> SetInfo: ...

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...


class ListSource:
    """In-memory sets: a sequence of (x, y, info) with info a mapping holding at least 'mi'.

    Optional info keys: mi_stderr, family, transform, seed; n, dx, dy come from the arrays.
    """

    def __init__(self, sets: Sequence[tuple[np.ndarray, np.ndarray, Mapping[str, Any]]]):
        self._pairs = []
        self._infos = []
        for i, (x, y, meta) in enumerate(sets):
            x = np.asarray(x)
            y = np.asarray(y)
            x = x[:, None] if x.ndim == 1 else x
            y = y[:, None] if y.ndim == 1 else y
            if "mi" not in meta:
                raise ValueError(f"set {i}: info needs the true MI under key 'mi'")
            self._pairs.append((x, y))
            self._infos.append(
                SetInfo(
                    index=i, n=x.shape[0], dx=x.shape[1], dy=y.shape[1], mi=float(meta["mi"]),
                    mi_stderr=float(meta.get("mi_stderr", 0.0)), family=str(meta.get("family", "unknown")),
                    transform=str(meta.get("transform", "none")), seed=int(meta.get("seed", -1)),
                )
            )

    def __len__(self) -> int:
        return len(self._pairs)

    def info(self, i: int) -> SetInfo:
        return self._infos[i]

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._pairs[i]


def _name(table: Any, code: int) -> str:
    try:
        return str(table[int(code)])
    except (KeyError, IndexError, TypeError):
        try:
            return str(table[str(int(code))])  # JSON-loaded tables have string keys
        except (KeyError, IndexError, TypeError):
            return str(int(code))


class StoreSource:
    """A metagen zarr store (docs/contracts.md section 3), read through metagen.store.open_store."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"test store {path} does not exist")
        try:
            from metagen.store import open_store  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError(f"cannot read stores: metagen.store is not importable ({exc})") from exc
        self.path = path
        try:
            self.store = open_store(path)
        except Exception as exc:  # metagen.store.StoreError and friends: say which store
            raise RuntimeError(f"cannot open test store {path}: {exc}") from exc

    def __len__(self) -> int:
        return len(self.store)

    def info(self, i: int) -> SetInfo:
        s = self.store
        return SetInfo(
            index=int(i), n=int(s.n[i]), dx=int(s.dx[i]), dy=int(s.dy[i]), mi=float(s.mi[i]),
            mi_stderr=float(s.mi_stderr[i]), family=_name(s.family_names, s.family[i]),
            transform=_name(s.transform_names, s.transform[i]), seed=int(s.seed[i]),
        )

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.store.get(int(i))
