"""The options of `python -m curation run` / `ssl-train` in one table: each row is a `make shards` variable (if any),
its flag, the config option it sets, its argparse type or action and its help. `curation.__main__` builds the
parser and the config overrides from it; the Makefile's `shards` recipe and README's "Variables for `make shards`"
list the same variables (tests/curation/test_run_options.py checks both)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from curation.config import DATASETS, SCORERS
from curation.demo_styles import PRESETS


@dataclass(frozen=True)
class RunOption:
    flag: str
    help: str
    key: str | None = None  # the dotted config option it sets; None: the command itself reads it (args.<dest>)
    make: str | None = None  # the `make shards` variable passing it (None: a flag only)
    # how the recipe passes the variable: `value` (when set), `quoted` (when set, in '...'), `always` (a Make
    # default), `switch` (the bare flag when the variable is 1, yes or true)
    make_form: str = "value"
    type: type | None = None  # int / float; None: a string
    action: str | None = None  # `store_true` or `append`
    group: str | None = None  # the help section it is listed in
    extra: tuple[tuple[str, Any], ...] = ()  # further add_argument keywords (default, metavar)

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        kwargs = {"help": self.help, **dict(self.extra)}
        if self.type is not None:
            kwargs["type"] = self.type
        if self.action is not None:
            kwargs["action"] = self.action
        parser.add_argument(self.flag, **kwargs)

    def override(self, args: argparse.Namespace) -> Any:
        """The value this option gives its config key, None when the flag was not given."""
        value = getattr(args, self.dest)
        return (value or None) if self.action == "store_true" else value


FETCH = "fetching url / YouTube clips (docs/youtube_and_vegas.md, \"Options\")"

RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("--dataset", f"clip list form: {' | '.join(DATASETS)} (default: demo)", "dataset", "DATASET", "always"),
    RunOption("--meta", "the clip list: VGGSound csv, csv/parquet list, or for vegas an AudioSet segment csv, a folder "
                        "of them, or a folder of VEGAS videos", "meta", "META"),
    RunOption("--source", "already-downloaded clips (<ytid>_<start:06d>.mp4): a folder, a tar/tar.gz archive or a "
                          "glob of them, local or s3://... (docs/mirrors.md)", "source.path", "SOURCE", "quoted"),
    RunOption("--label-map", "vegas: AudioSet class_labels_indices.csv (default: beside the csv)", "label_map",
              "LABEL_MAP"),
    RunOption("--out", "output folder (default: work/demo)", "out", "OUT", "always"),
    RunOption("--config", "TOML config file; flags override it", None, "CONFIG"),
    RunOption("--scheduler", "address of a running Dask scheduler, e.g. tcp://127.0.0.1:8786", "dask.scheduler",
              "SCHEDULER"),
    RunOption("--workers", "LocalCluster worker processes (default: one per core)", "dask.workers", "WORKERS",
              type=int),
    RunOption("--demo-clips", "number of demo-world clips", "demo.clips", "CLIPS", type=int),
    RunOption("--demo-preset", f"demo-world preset: {' | '.join(PRESETS)} (default: easy; docs/demo_worlds.md)",
              "demo.preset", "PRESET"),
    RunOption("--scorer", f"per-frame scorer: {' | '.join(SCORERS)} (curation/localise/registry.py)", "score.scorer",
              "SCORER"),
    RunOption("--checkpoint", "trained localisation model (else one is trained on the clips first)",
              "score.checkpoint", "CHECKPOINT"),
    RunOption("--checkpoint-format", "auto (default) | native | ezvsl (EZ-VSL, FNAC) | slavc",
              "score.checkpoint_format", "CHECKPOINT_FORMAT"),
    RunOption("--moments", "scorer moments: an official top1_boxes_top10_moments.json to curate from",
              "score.moments", "MOMENTS"),
    RunOption("--cookies", "Netscape cookies.txt for yt-dlp (read only)", "fetch.cookies", "COOKIES", group=FETCH),
    RunOption("--proxy", "http://[user:pass@]host:port for yt-dlp and ffmpeg", "fetch.proxy", "PROXY", group=FETCH),
    RunOption("--per-host", "concurrent fetches per host across the cluster", "fetch.per_host", "PER_HOST",
              type=int, group=FETCH),
    RunOption("--rate-limit", "fetch starts per second per host across the cluster", "fetch.rate_limit",
              "RATE_LIMIT", type=float, group=FETCH),
    RunOption("--socket-timeout", "seconds before a silent connection is given up", "fetch.socket_timeout_s",
              "SOCKET_TIMEOUT", type=float, group=FETCH),
    RunOption("--fetch-retries", "further attempts after a transient failure", "fetch.retries", "RETRIES",
              type=int, group=FETCH),
    RunOption("--stop-after", "stop after this many rate-limited/bot-checked clips in a row", "fetch.stop_after",
              "STOP_AFTER", type=int, group=FETCH),
    RunOption("--retry-failed", "refetch clips whose failure was transient", "fetch.retry_failed", "RETRY_FAILED",
              "switch", action="store_true", group=FETCH),
    RunOption("--set", "override any config option, e.g. --set select.top_k=5 (repeatable)", action="append",
              extra=(("default", []), ("metavar", "KEY=VALUE"))),
    RunOption("--quiet", "no progress bar", action="store_true"),
)

# every command has it (`make shards` passes it as DEBUG=1)
DEBUG = RunOption("--debug", "show the traceback of an error (make: DEBUG=1)", None, "DEBUG", "switch",
                  action="store_true")


def make_variables() -> dict[str, RunOption]:
    """`make shards` variable -> its option."""
    return {option.make: option for option in (*RUN_OPTIONS, DEBUG) if option.make}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in RUN_OPTIONS:
        if option.group is not None and option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        option.add_to(groups[option.group] if option.group else parser)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config options (dotted keys) that the given flags set."""
    return {option.key: value for option in RUN_OPTIONS
            if option.key is not None and (value := option.override(args)) is not None}
