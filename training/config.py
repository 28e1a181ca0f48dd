"""Training configuration: a dataclass with commented defaults, a TOML file, CLI overrides.

    cfg = load_train_config("configs/train/tiny.toml", ["--steps", "50", "--model.dim", "64"])

Unknown keys, values of the wrong type and missing store paths raise ``ConfigError``
whose message is one line; train.py turns it into exit code 2 without a traceback.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad training configuration; the message is one line that says what to fix."""


@dataclass
class TrainConfig:
    """Everything train.py needs; ``model`` holds ModelConfig fields (see model/network.py)."""

    # --- data ---------------------------------------------------------------------
    out_dir: str = "runs/train"            # metrics.jsonl, states/, best/last.safetensors
    train_store: str | None = None         # zarr meta-dataset (metagen) to train on, or ...
    stream_config: str | None = None       # ... a metagen config TOML: fresh sets from draw_task
    stream_seed: int = 1_000_003           # global metagen seed of streamed sets (keep != val seeds)
    stream_pool: int = 32                  # streamed micro-batches drawn together, bucketed as a store
    val_id_store: str | None = None        # in-distribution validation store
    val_ood_store: str | None = None       # out-of-distribution validation store (optional)
    calib_store: str | None = None         # calibration store; None: a fixed half of val_id
    max_val_sets: int = 512                # first sets of each validation store (0: all)
    n_train_min: int = 16                  # smallest subsampled rows per training set
    n_train_max: int = 500                 # largest subsampled rows per training set
    n_train_full_fraction: float = 0.0     # probability that a batch keeps all rows (up to n_train_max)
    bucket_sets: int = 0                   # sets per dx+dy bucket, store or stream pool (0: 16 * batch_size)
    n_weight_power: float = 0.0            # store: each set comes round((n / 100) ** p) times per epoch (at least
                                           # once), so large-n sets get more steps; 0: each set once
    rotate_fraction: float = 0.0           # share of sets whose x and y are rotated (normal scores times a random
                                           # orthogonal matrix: MI unchanged; training/data.py rotate_block)
    col_stats_dropout: float = 0.0         # share of sets whose column features (use_col_stats) are zeroed
    num_workers: int = 1                   # DataLoader worker processes (0: load in the loop)
    # --- optimisation -------------------------------------------------------------
    seed: int = 0                          # data order, subsampling and init all follow it
    steps: int = 10_000                    # optimizer steps (not epochs)
    batch_size: int = 32                   # sets per micro-batch per process
    grad_accum: int = 1                    # micro-batches per optimizer step
    lr: float = 1e-3                       # peak learning rate (after warmup)
    min_lr: float = 1e-4                   # learning rate at the end of the cosine
    warmup_steps: int = 200                # linear warmup from 0 to lr
    weight_decay: float = 0.01             # AdamW decoupled weight decay
    grad_clip: float = 1.0                 # max global gradient norm (0: no clipping)
    train_only: str = ""                   # comma-separated parameter-name prefixes to train (e.g. "head."),
                                           # the rest frozen (a new head input first, then all); "": all
    # --- bookkeeping --------------------------------------------------------------
    log_every: int = 50                    # train-loss line in metrics.jsonl every this many steps
    eval_every: int = 500                  # validation every this many steps (and at the end)
    save_every: int = 500                  # accelerator.save_state every this many steps
    keep_states: int = 2                   # most recent states kept under out_dir/states
    eval_batch_size: int = 32              # sets per validation batch (at their own n)
    eval_max_cells: int = 2_000_000        # cap on padded n * (dx + dy) cells per validation batch
    select_metric: str = "pinball"         # best.safetensors by val_id "pinball" or "mae"
    keep_evals: bool = True                # also write evals/step-XXXXXXXX.safetensors at every validation
    log_batch_hash: bool = False           # debug: write a fingerprint of every batch (resume test)
    # --- hardware -----------------------------------------------------------------
    threads: int = 1                       # torch.set_num_threads in the training process
    mixed_precision: str = "no"            # "no" on CPU, "bf16" on GPU
    find_unused_parameters: bool = False   # DDP flag; set if some model parameters go unused
    # --- model --------------------------------------------------------------------
    model: dict[str, Any] = field(default_factory=dict)   # ModelConfig fields; others default

    def validate(self) -> None:
        """Check values that types alone cannot; raise ConfigError with one line."""
        if (self.train_store is None) == (self.stream_config is None):
            raise ConfigError("set exactly one of train_store (a zarr store) or stream_config (a metagen TOML)")
        if self.val_id_store is None:
            raise ConfigError("val_id_store is required (validation and calibration need it)")
        for name in ("train_store", "stream_config", "val_id_store", "val_ood_store", "calib_store"):
            value = getattr(self, name)
            if value is not None and not Path(value).expanduser().exists():
                hint = "" if name == "stream_config" else (
                    "; build stores with `python -m metagen generate` (commands: the header of "
                    "configs/train/cpu.toml, README 'Rebuilding')")
                raise ConfigError(f"{name}: path {value!r} does not exist{hint}")
        positive = ("steps", "batch_size", "grad_accum", "log_every", "eval_every", "save_every",
                    "keep_states", "n_train_min", "n_train_max", "threads", "eval_batch_size",
                    "eval_max_cells", "stream_pool")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "warmup_steps", "max_val_sets", "bucket_sets"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_train_min > self.n_train_max:
            raise ConfigError(f"n_train_min ({self.n_train_min}) > n_train_max ({self.n_train_max})")
        if not 0.0 <= self.n_weight_power <= 2.0:
            raise ConfigError(f"n_weight_power must be in [0, 2], got {self.n_weight_power}")
        if self.n_weight_power and self.train_store is None:
            raise ConfigError("n_weight_power weights a train_store's sets; a stream has none (set it to 0)")
        for name in ("n_train_full_fraction", "rotate_fraction", "col_stats_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.lr or not 0.0 <= self.min_lr <= self.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.select_metric not in ("pinball", "mae"):
            raise ConfigError(f"select_metric must be 'pinball' or 'mae', got {self.select_metric!r}")

    def model_config(self):
        """The ModelConfig built from ``self.model`` (unset fields keep their defaults)."""
        from model.network import ModelConfig

        return ModelConfig(**self.model)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to type ``tp`` (from TOML), or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_check_value(key, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _parse_cli_value(key: str, text: str, tp: Any) -> Any:
    """Parse a command-line string for a field of type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional and text.lower() in ("none", "null", ""):
        return None
    if text.lower() in ("true", "false"):
        value: Any = text.lower() == "true"
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            if origin in (tuple, list) or (optional and any(typing.get_origin(a) in (tuple, list) for a in args)):
                try:
                    value = [json.loads(part) for part in text.split(",") if part.strip()]
                except json.JSONDecodeError:
                    value = text
            else:
                value = text
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _accepts_str_only(tp):
        value = text   # e.g. out_dir "123"
    return _check_value(key, value, tp)


def _accepts_str_only(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return all(a is str for a in args)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _model_field_types() -> dict[str, Any]:
    from model.network import ModelConfig

    return _field_types(ModelConfig)


def _split_overrides(argv: list[str]) -> list[tuple[str, str]]:
    """['--a', '1', '--b=2'] -> [('a', '1'), ('b', '2')]; raise ConfigError on stray words."""
    pairs = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if not word.startswith("--") or len(word) <= 2:
            raise ConfigError(f"unexpected argument {word!r}; overrides look like --key value")
        if "=" in word:
            key, text = word[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override {word} needs a value")
            key, text = word[2:], argv[i + 1]
            i += 2
        pairs.append((key.replace("-", "_"), text))
    return pairs


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      *, check_paths: bool = True) -> TrainConfig:
    """Read a TOML file (or defaults when ``path`` is None), apply ``--key value`` overrides.

    Keys of the ``[model]`` table and ``--model.KEY`` overrides are checked against
    ``model.network.ModelConfig``. Raises ConfigError (one line) on unknown keys,
    wrong types, bad values or (with ``check_paths``) missing store paths.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    types = _field_types(TrainConfig)
    model_types = _model_field_types()
    values: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "model":
            if not isinstance(value, dict):
                raise ConfigError("model: expected a [model] table")
            for mkey, mvalue in value.items():
                if mkey not in model_types:
                    raise ConfigError(f"unknown model key {mkey!r} in {path} (ModelConfig fields: {', '.join(model_types)})")
                model[mkey] = _check_value(f"model.{mkey}", mvalue, model_types[mkey])
        elif key not in types:
            raise ConfigError(f"unknown config key {key!r} in {path}")
        else:
            values[key] = _check_value(key, value, types[key])
    for key, text in _split_overrides(list(overrides or [])):
        if key.startswith("model."):
            mkey = key[len("model."):]
            if mkey not in model_types:
                raise ConfigError(f"unknown model key {mkey!r} (ModelConfig fields: {', '.join(model_types)})")
            model[mkey] = _parse_cli_value(key, text, model_types[mkey])
        elif key in types and key != "model":
            values[key] = _parse_cli_value(key, text, types[key])
        else:
            raise ConfigError(f"unknown config key {key!r} (override --{key})")
    for key in ("train_store", "stream_config", "val_id_store", "val_ood_store", "calib_store", "out_dir"):
        if isinstance(values.get(key), str):
            values[key] = str(Path(values[key]).expanduser())
    cfg = TrainConfig(**values, model=model)
    if check_paths:
        cfg.validate()
    try:
        cfg.model_config()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model config: {str(exc).splitlines()[0]}") from None
    return cfg
