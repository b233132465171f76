"""Command line: `python -m curation {run,demo,ssl-train,ssl-export,select,report,export-moments}` (Make targets
call these)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from dataclasses import replace

from curation import run_options
from curation.config import ConfigError, load_config
from curation.demo_styles import PRESETS
from curation.errors import UsageError
from manifests.readers import ClipListError


def _config(args: argparse.Namespace):
    return load_config(args.config, run_options.overrides(args), args.set)


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)  # a config error is reported before the pipeline's imports
    from curation.pipeline import format_summary, run

    summary = run(cfg, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def _ssl_train(args: argparse.Namespace) -> int:
    from curation import storage
    from curation.localise.distributed import leave
    from curation.localise.scorers import ensure_model
    from curation.pipeline import load_clip_list, run_jobs

    cfg = _config(args)
    if cfg.score.checkpoint:
        raise ConfigError(["score.checkpoint: ssl-train trains a new model; leave it empty"])
    out = storage.run_folder(cfg.out)  # a local folder or a bucket (the model goes to OUT/ssl/ in either)
    try:
        resolved, digest = ensure_model(replace(cfg, score=replace(cfg.score, scorer="ssl")),
                                        run_jobs(load_clip_list(cfg, out)), out, progress=not args.quiet)
    finally:
        leave()
    if digest is not None:  # under torchrun, rank 0 holds the model
        print(f"model: {resolved.score.checkpoint} (sha256 {digest[:12]}); loss log beside it (loss.jsonl)")
    return 0


def _ssl_export(args: argparse.Namespace) -> int:
    from curation.localise.export import export_ezvsl

    path = export_ezvsl(args.checkpoint, args.to)
    print(f"wrote {path} (EZ-VSL checkpoint: model, optimizer, epoch, best_cIoU, best_Auc)")
    return 0


def _select(args: argparse.Namespace) -> int:
    from curation.config import parse_value
    from curation.pipeline import format_summary, reselect

    overrides = {key: value for key, value in (
        ("select.top_k", args.top_k), ("select.min_gap_s", args.min_gap),
        ("select.min_clip_score", args.min_score),
        ("select.keep_quantile", None if args.keep_quantile is None else parse_value(args.keep_quantile)))
        if value is not None}
    for assignment in args.set:
        key, _, text = assignment.partition("=")
        overrides[key.strip()] = parse_value(text.strip())
    print(format_summary(reselect(args.out, overrides, progress=not args.quiet)))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.vggsounder is not None:  # a run over VGGSound test clips, judged by VGGSounder's annotations
        from curation.outputs.vggsounder import format_summary, write_vggsounder_metrics

        location, metrics = write_vggsounder_metrics(args.out, args.vggsounder or None)
        print(f"{format_summary(metrics)}\nwrote {location}")
        return 0
    from curation.outputs.evaluate import write_truth_metrics
    from manifests.io import json_bytes

    _, metrics = write_truth_metrics(args.out)
    print(json_bytes(metrics).decode().strip())  # what the file holds
    return 0


def _report(args: argparse.Namespace) -> int:
    from curation.outputs.report import write_report

    print(f"report: {write_report(args.out, args.html)}")
    return 0


def _export_moments(args: argparse.Namespace) -> int:
    from curation.outputs.export import export_moments

    done = export_moments(args.out, args.json)
    print(f"moments: {done.json_path} ({done.n_clips} clips; images/ and audios/ beside it"
          + (f"; {done.removed} pairs of clips no longer kept removed)" if done.removed else ")"))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from curation.demo import generate_world

    world = generate_world(args.out, n_clips=args.clips, seed=args.seed, duration_s=args.duration,
                           preset=args.preset)
    print(world)
    if args.sheet:
        from curation.demo_sheet import contact_sheet

        print(f"contact sheet: {contact_sheet(world, args.sheet)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m curation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="curate a clip list (or the demo world) into shards + manifests")
    run_options.add_run_options(run)
    run.set_defaults(func=_run)

    ssl = sub.add_parser("ssl-train", help="train the localisation model on a clip list's clips (resumable)")
    run_options.add_run_options(ssl)
    ssl.set_defaults(func=_ssl_train)

    export_model = sub.add_parser("ssl-export", help="write an ssl-train model in a published localiser's format")
    export_model.add_argument("--checkpoint", required=True, help="the ssl-train model.pt")
    export_model.add_argument("--format", choices=["ezvsl"], default="ezvsl",
                              help="ezvsl: EZ-VSL's best.pth, read by the authors' test code (published layout only)")
    export_model.add_argument("--to", required=True, help="the file to write, e.g. best.pth")
    export_model.set_defaults(func=_ssl_export)

    select = sub.add_parser("select", help="re-select moments and clips of a finished run, without re-scoring")
    select.add_argument("--out", default="work/demo", help="the run's output folder (a local path or s3://...)")
    select.add_argument("--top-k", type=int)
    select.add_argument("--min-gap", type=float, help="seconds between kept moments")
    select.add_argument("--min-score", type=float, help="absolute clip-score threshold")
    select.add_argument("--keep-quantile", help="fraction of scored clips to keep, or none")
    select.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="other select.*/write.*/filters.* options, e.g. select.per_label=true")
    select.add_argument("--quiet", action="store_true")
    select.set_defaults(func=_select)

    evaluate = sub.add_parser("evaluate", help="demo world: AP of the scores for good pairs, precision/recall kept")
    evaluate.add_argument("--out", default="work/demo", help="the run's output folder (a local path or s3://...)")
    evaluate.add_argument("--vggsounder", nargs="?", const="", metavar="CSV",
                          help="instead: judge a run over VGGSound test clips by VGGSounder's annotations (the CSV, "
                               "default the installed vggsounder package's) -> OUT/manifests/vggsounder.json")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=_evaluate)

    report = sub.add_parser("report", help="self-contained HTML report of a run's output folder")
    report.add_argument("--out", default="work/demo", help="the run's output folder (a local path or s3://...)")
    report.add_argument("--html", help="where to write it (default OUT/report.html)")
    report.set_defaults(func=_report)

    export = sub.add_parser("export-moments", help="a run's kept clips in the official Sound2Scene moments format")
    export.add_argument("--out", default="work/demo", help="the run's output folder (a local path or s3://...)")
    export.add_argument("--json", help="where to write it (default OUT/official/top1_boxes_top10_moments.json); "
                                       "images/ and audios/ go beside it")
    export.set_defaults(func=_export_moments)

    demo = sub.add_parser("demo", help="generate the synthetic demo world (mp4 clips + per-frame truth)")
    demo.add_argument("--out", required=True)
    demo.add_argument("--clips", type=int, default=320)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--duration", type=float, default=8.0, help="seconds per clip")
    demo.add_argument("--preset", default="easy",
                      help=f"how hard the world is: {' | '.join(PRESETS)} (docs/demo_worlds.md)")
    demo.add_argument("--sheet", metavar="PATH.png", help="also write a contact sheet: 3 frames of each of the "
                                                          "first 8 clips, labelled with category and kind")
    demo.set_defaults(func=_demo)
    for command in sub.choices.values():
        run_options.DEBUG.add_to(command)
    return parser


def _one_line(exc: Exception) -> str:
    """The error as one line: a multi-line message (all problems of a config) joined with '; '."""
    head, *rest = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    line = head + (" " + "; ".join(rest) if rest else "")
    if isinstance(exc, ClipListError):
        line += " (META= / --meta names the clip list)"
    return line


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (UsageError, ConfigError, ClipListError) as exc:  # what the user can fix: no traceback unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
