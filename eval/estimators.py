"""Estimator registry for the harness and the speed benchmark, and the model adapter.

Names: model, ksg, ksg_boot, gaussian, gaussian_boot, infonce. The model is reached only
through `infer.predict_mi_quantiles`, imported lazily, so the baselines work before
infer.py or a checkpoint exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .baselines import BootstrapEstimator, Estimator, GaussianCopulaEstimator, InfoNCEEstimator, KSGEstimator
from .baselines.interface import check_levels

ESTIMATOR_NAMES: tuple[str, ...] = ("model", "ksg", "ksg_boot", "gaussian", "gaussian_boot", "infonce", "train_mean")


class ModelUnavailable(RuntimeError):
    """infer.py (or its checkpoint) cannot be used."""


def _infer_module():
    try:
        import infer  # noqa: PLC0415 (lazy: eval runs without the model)
    except ImportError as exc:
        raise ModelUnavailable(f"cannot import infer.py ({exc}); run from the repository root") from exc
    return infer


@dataclass
class ModelEstimator:
    """The amortized estimator behind the common interface (MI quantiles in nats)."""

    checkpoint: str | None = None
    device: str | None = None
    on_out_of_range: str | None = None  # passed to infer when set: "error", "warn" or "ignore"
    max_rows: int | None | str = "auto"  # passed to infer when not "auto" (the checkpoint's n_max)
    name: str = "model"
    has_interval: bool = True

    def estimate_quantiles(self, x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        """(Q,) quantiles in nats from infer.predict_mi_quantiles."""
        lv = check_levels(levels)
        infer = _infer_module()
        q = infer.predict_mi_quantiles(x, y, tuple(lv.tolist()), checkpoint=self.checkpoint, unit="nats",
                                       device=self.device, **self._extra())
        return np.asarray(q, dtype=np.float64).reshape(-1)

    def estimate_quantiles_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], levels: Sequence[float]) -> np.ndarray:
        """(B, Q) quantiles in nats for B sample pairs, one batched call."""
        lv = check_levels(levels)
        infer = _infer_module()
        q = infer.predict_mi_quantiles_batch(list(pairs), tuple(lv.tolist()), checkpoint=self.checkpoint, unit="nats",
                                             device=self.device, **self._extra())
        return np.asarray(q, dtype=np.float64).reshape(len(pairs), -1)

    def _extra(self) -> dict:
        extra = {} if self.on_out_of_range is None else {"on_out_of_range": self.on_out_of_range}
        return extra if self.max_rows == "auto" else {**extra, "max_rows": self.max_rows}

    def check_available(self) -> None:
        """Raise ModelUnavailable unless infer.py and the checkpoint answer a small Gaussian sample."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((200, 2))
        try:
            self.estimate_quantiles(x, x + rng.standard_normal((200, 2)), (0.5,))
        except ModelUnavailable:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"the model cannot be used: {type(exc).__name__}: {exc}") from exc

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Median MI in nats."""
        return float(self.estimate_quantiles(x, y, (0.5,))[0])


@dataclass
class ConstantEstimator:
    """Predicts the same MI (nats) for every set, e.g. the mean MI of the training store:
    the floor any learned estimator must clearly beat."""

    value: float
    name: str = "train_mean"
    has_interval: bool = False

    def estimate_quantiles(self, x: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> np.ndarray:
        return np.full(check_levels(levels).shape, float(self.value))

    def estimate(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self.value)


def train_mean_estimator(train_store: str | None) -> ConstantEstimator:
    """ConstantEstimator at the mean MI of a (training) store; ValueError without one."""
    if not train_store:
        raise ValueError("estimator train_mean needs --train-store (the store whose mean MI it predicts)")
    from metagen.store import open_store  # noqa: PLC0415

    return ConstantEstimator(float(np.mean(open_store(train_store).mi)))


def make_estimator(name: str, *, seed: int = 0, checkpoint: str | None = None, device: str | None = None,
                   n_boot: int = 50, on_out_of_range: str | None = None, train_store: str | None = None) -> Estimator:
    """Build the estimator called `name` (one of ESTIMATOR_NAMES); raises ValueError otherwise.

    seed goes to the baselines (jitter, bootstrap, InfoNCE); checkpoint, device and
    on_out_of_range to the model; n_boot to the *_boot estimators.
    """
    if name == "model":
        return ModelEstimator(checkpoint=checkpoint, device=device, on_out_of_range=on_out_of_range)
    if name == "ksg":
        return KSGEstimator(seed=seed)
    if name == "ksg_boot":
        return BootstrapEstimator(KSGEstimator(seed=seed), n_boot=n_boot, seed=seed)
    if name == "gaussian":
        return GaussianCopulaEstimator(seed=seed)
    if name == "gaussian_boot":
        return BootstrapEstimator(GaussianCopulaEstimator(seed=seed), n_boot=n_boot, seed=seed)
    if name == "infonce":
        return InfoNCEEstimator(seed=seed)
    if name == "train_mean":
        return train_mean_estimator(train_store)
    raise ValueError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATOR_NAMES)}")


def parse_estimator_names(spec: str) -> list[str]:
    """Split a comma-separated list of names, checking each; raises ValueError on unknown or empty."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError("no estimator named")
    unknown = [s for s in names if s not in ESTIMATOR_NAMES]
    if unknown:
        raise ValueError(f"unknown estimator(s) {', '.join(unknown)}; choose from {', '.join(ESTIMATOR_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"estimator named twice in {spec!r}")
    return names
