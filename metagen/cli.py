"""Command line of the meta-dataset generator: ``metagen`` / ``python -m metagen``.

    metagen generate --config configs/metagen/tiny.toml --out stores/tiny --workers 2
    metagen generate --config FILE --out DIR --shard-index $SLURM_ARRAY_TASK_ID --num-shards 16
    metagen inspect DIR
    metagen verify DIR
    metagen sample --config FILE --index 7 --out set7.npz

Bad arguments, configs or stores give a one-line error on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

EXIT_OK, EXIT_DAMAGED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with the generate, inspect, verify and sample subcommands."""
    parser = _Parser(prog="metagen", description="Meta-datasets of distributions with known MI (nats).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate (or resume) a zarr store")
    g.add_argument("--config", required=True, type=Path, help="generator config (TOML)")
    g.add_argument("--out", required=True, type=Path, help="store directory")
    g.add_argument("--num-sets", type=_positive, default=None, help="override config num_sets")
    g.add_argument("--workers", type=_positive, default=1, help="worker processes (default 1)")
    g.add_argument("--shard-index", type=_non_negative, default=0,
                   help="handle shards k with k %% num_shards == shard_index (SLURM array id)")
    g.add_argument("--num-shards", type=_positive, default=1, help="number of shard groups")
    g.add_argument("--seed", type=_non_negative, default=None, help="global seed (default: config seed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="summarise a store")
    i.add_argument("store", type=Path)

    v = sub.add_parser("verify", help="check a store (exit 1 on damage)")
    v.add_argument("store", type=Path)

    s = sub.add_parser("sample", help="draw one set and save it as .npz")
    s.add_argument("--config", required=True, type=Path, help="generator config (TOML)")
    s.add_argument("--index", type=_non_negative, default=0, help="set index (default 0)")
    s.add_argument("--seed", type=_non_negative, default=None, help="global seed (default: config seed)")
    s.add_argument("--out", required=True, type=Path, help="output .npz file")
    return parser


# ----------------------------------------------------------------------- commands


def _load_config(path: Path):
    from metagen.config import load_config

    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return load_config(path)


def cmd_generate(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from metagen.generate import generate

    if args.shard_index >= args.num_shards:
        raise _UsageError(f"--shard-index {args.shard_index} must be < --num-shards {args.num_shards}")
    config = _load_config(args.config)
    result = generate(config, args.out, num_sets=args.num_sets, seed=args.seed, workers=args.workers,
                      shard_index=args.shard_index, num_shards=args.num_shards,
                      progress=not args.no_progress, command=["metagen", *argv])
    rate = result.sets_written / result.seconds if result.seconds > 0 else 0.0
    print(f"wrote {len(result.shards_written)} shards ({result.sets_written} sets, "
          f"{result.values_written * 4 / 1e6:.1f} MB, {rate:.1f} sets/s), "
          f"skipped {len(result.shards_skipped)} complete; "
          + (f"manifest written: {result.manifest}" if result.manifest
             else f"store not complete yet ({result.num_shards_total} shards in all)"))
    return EXIT_OK


def text_histogram(values: np.ndarray, *, bins: int = 10, width: int = 40, log: bool = False,
                   integer: bool = False) -> list[str]:
    """Lines of a text histogram of ``values``.

    ``log``: log-spaced bins (positive values); ``integer``: one bin per value when
    there are at most ``2 * bins`` distinct integers in range, else integer labels.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return ["  (empty)"]
    lo, hi = float(values.min()), float(values.max())
    if integer and hi - lo + 1 <= 2 * bins:
        ints = np.arange(int(lo), int(hi) + 1)
        counts = np.array([(values == v).sum() for v in ints])
        labels = [f"  {v:>10d}" + " " * 13 for v in ints]
    else:
        if lo == hi:
            edges = np.array([lo, hi])
        elif log and lo > 0:
            edges = np.geomspace(lo, hi, bins + 1)
        else:
            edges = np.linspace(lo, hi, bins + 1)
        counts, _ = np.histogram(values, bins=edges)
        fmt = (lambda v: f"{v:>10.0f}") if integer else (lambda v: f"{v:>10.3g}")
        labels = [f"  {fmt(a)} - {fmt(b)}" for a, b in zip(edges[:-1], edges[1:])]
    top = max(int(counts.max()), 1)
    return [f"{label} | {'#' * round(width * c / top):<{width}} {c}" for label, c in zip(labels, counts)]


def cmd_inspect(args: argparse.Namespace) -> int:
    from metagen.store import open_store

    store = open_store(args.store)
    m = store.manifest
    values = int(sum(s["num_values"] for s in m["shards"]))
    print(f"store {store.path}: {len(store)} sets in {len(m['shards'])} shards, "
          f"{values * 4 / 1e6:.1f} MB of float32 values, seed {m['seed']}, format "
          f"{m['format']} v{m['version']}")
    print(f"MI (nats): min {store.mi.min():.3g}, median {np.median(store.mi):.3g}, "
          f"max {store.mi.max():.3g}, zero {np.mean(store.mi == 0):.1%}, "
          f"with MC stderr {np.mean(store.mi_stderr > 0):.1%}")
    for title, arr, opts in (("MI (nats)", store.mi, {}), ("n", store.n, {"log": True, "integer": True}),
                             ("dx", store.dx, {"integer": True}), ("dy", store.dy, {"integer": True})):
        print(f"{title}:")
        print("\n".join(text_histogram(arr, **opts)))
    for title, codes, names in (("family", store.family, store.family_names),
                                ("transform", store.transform, store.transform_names)):
        print(f"{title:<24} {'sets':>8} {'share':>7} {'mean MI':>8}")
        for code in np.unique(codes):
            sel = codes == code
            print(f"  {names.get(int(code), f'?{code}'):<22} {sel.sum():>8} {sel.mean():>7.1%} "
                  f"{store.mi[sel].mean():>8.3f}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from metagen.store import verify_store

    if not args.store.is_dir():
        raise FileNotFoundError(f"store directory not found: {args.store}")
    problems = verify_store(args.store)
    if problems:
        print(f"DAMAGED {args.store}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return EXIT_DAMAGED
    from metagen.store import open_store

    store = open_store(args.store)
    print(f"OK {args.store}: {len(store)} sets in {len(store.manifest['shards'])} shards, "
          "checksums match, values finite, MI >= 0")
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from metagen.tasks import draw_task

    config = _load_config(args.config)
    seed = config.seed if args.seed is None else args.seed
    task = draw_task(config, seed, args.index)
    x, y = task.sample()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, x=x, y=y, mi=np.float64(task.mi), mi_stderr=np.float64(task.mi_stderr),
             family=np.str_(task.family), transform=np.str_(task.transform),
             seed=np.int64(task.seed))
    print(f"set {args.index} (seed {seed}): family {task.family}, transform {task.transform}, "
          f"n={task.n}, dx={task.dx}, dy={task.dy}, MI={task.mi:.4f} nats "
          f"(stderr {task.mi_stderr:.2g}) -> {args.out}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 damaged store, 2 usage/config error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from metagen.config import ConfigError
    from metagen.store import StoreError

    try:
        args = build_parser().parse_args(argv)
        if args.command == "generate":
            return cmd_generate(args, argv)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "verify":
            return cmd_verify(args)
        return cmd_sample(args)
    except (_UsageError, ConfigError, StoreError, FileNotFoundError, ValueError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"metagen: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print("metagen: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
