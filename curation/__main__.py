"""Command line: `python -m curation {run,demo}` (the Make targets call these)."""

from __future__ import annotations

import argparse
import logging
import sys

from curation.config import DATASETS, ConfigError, load_config
from curation.errors import MissingToolError
from manifests.readers import ClipListError


def _run(args: argparse.Namespace) -> int:
    from curation.pipeline import format_summary, run

    overrides = {key: value for key, value in (
        ("dataset", args.dataset), ("meta", args.meta), ("out", args.out),
        ("dask.scheduler", args.scheduler), ("dask.workers", args.workers),
        ("demo.clips", args.demo_clips), ("score.scorer", args.scorer)) if value is not None}
    cfg = load_config(args.config, overrides, args.set)
    summary = run(cfg, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from curation.demo import generate_world

    world = generate_world(args.out, n_clips=args.clips, seed=args.seed, duration_s=args.duration)
    print(world)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m curation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="curate a clip list (or the demo world) into shards + manifests")
    run.add_argument("--dataset", choices=DATASETS, help="clip list form (default: demo)")
    run.add_argument("--meta", help="the clip list file (VGGSound csv, or csv/parquet clip list)")
    run.add_argument("--out", help="output folder (default: work/demo)")
    run.add_argument("--config", help="TOML config file; flags override it")
    run.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://127.0.0.1:8786")
    run.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    run.add_argument("--demo-clips", type=int, help="number of demo-world clips")
    run.add_argument("--scorer", help="per-frame scorer: synchrony | none")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override any config option, e.g. --set select.top_k=5 (repeatable)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="generate the synthetic demo world (mp4 clips + per-frame truth)")
    demo.add_argument("--out", required=True)
    demo.add_argument("--clips", type=int, default=320)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--duration", type=float, default=8.0, help="seconds per clip")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ClipListError, MissingToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
