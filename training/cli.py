"""The flags every `python -m training <command>` shares, and the error boundary of a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from training import distributed
from training.checkpoint import ResumeError
from training.config import ConfigError, TrainConfig, load_config
from training.models.image_encoder import WeightsError


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m training {prog}", description=description)
    parser.add_argument("--config", help="TOML config file (defaults: the CPU demo setting); flags override it")
    parser.add_argument("--shards", help="shard folder, glob, brace pattern or URL(s) joined by '::' "
                                         "(default: work/demo/shards)")
    parser.add_argument("--eval-shards", help="evaluation shards (default: the folder's *-test-*.tar)")
    parser.add_argument("--out", help="output folder (default: work/demo/train)")
    parser.add_argument("--swav-weights", help="swav.pth.tar-style ResNet-50 weights for stage 1 "
                                               "(default: train a small encoder on the shard frames)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config option, e.g. --set stage3.steps=200 (repeatable)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {key: value for key, value in (
        ("data.shards", args.shards), ("data.eval_shards", args.eval_shards), ("out", args.out),
        ("stage1.swav_weights", args.swav_weights)) if value is not None}
    return load_config(args.config, overrides, args.set)


def run_command(run: Callable[[TrainConfig], Any], argv: list[str] | None, prog: str, description: str) -> int:
    """Parse flags into a config, run, and turn expected failures into one clear line and exit code 2."""
    args = build_parser(prog, description).parse_args(argv)
    try:
        run(config_from_args(args))
    except (ConfigError, WeightsError, ResumeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup_process_group()
    return 0
