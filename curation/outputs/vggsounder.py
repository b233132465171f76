"""A real-data judge: a run over VGGSound test clips measured against VGGSounder's per-label modality annotations.

VGGSounder (Zverev et al., ICCV 2025) re-annotates the VGGSound test set: 12,014 videos, every label of a video
marked audible (`A`), visible (`V`) or both (`AV`), plus per-video `static_image`, `voice_over` and
`background_music` flags (`vggsounder/data/vggsounder.csv` of the `vggsounder` wheel: one row per
(video, label), `video_id` = `<ytid>_<start:06d>`). A run clip matches the video of its ytid and start second.
Per matched clip:

* AV: the clip's own `label` is among the video's VGGSounder labels and has modality `AV`; when the video's
  VGGSounder labels do not name it (~21 % of the test videos), any of its labels has modality `AV`. Sound2Scene
  wants the pair's source heard *and* seen, and the clip's label is what its shard sample is trained as.
* audio-only: every label of the video is `A` (the source is never seen; 1,826 videos).
* static: `static_image` (980 videos), the truth the `still` filter is measured against.

Metrics are over the matched clips that were scored (`ok` or `rejected`): the share of kept clips that are AV,
the share of audio-only clips rejected (for any reason), and the `still` filter's precision and recall for
static images; overall and per label. `python -m curation evaluate --out OUT --vggsounder [CSV]`.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd

from curation import storage
from curation.errors import UsageError
from curation.provenance import read_run_record
from manifests.ids import mirror_key
from manifests.io import json_bytes
from manifests.layout import RunLayout

RESULT_NAME = "vggsounder.json"
COLUMNS = ("video_id", "label", "modality", "background_music", "static_image", "voice_over")
INSTALL_HINT = "pip install --no-deps vggsounder==1.0 (make setup does), or give the file: --vggsounder PATH"


def default_csv() -> str:
    """The installed `vggsounder` package's `data/vggsounder.csv`, found without importing the package (whose
    `__init__` pulls in its optional sample-download machinery)."""
    spec = find_spec("vggsounder")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"--vggsounder: the vggsounder package is not installed; {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "vggsounder.csv"
        if path.is_file():
            return str(path)
    raise UsageError(f"--vggsounder: the installed vggsounder package has no data/vggsounder.csv; {INSTALL_HINT}")


def resolve_csv(path: str | os.PathLike | None) -> str:
    """The CSV to read: `path` when given (a local file or a URL), else the installed package's."""
    if path is None or str(path) == "":
        return default_csv()
    location = storage.resolve(path)
    if not storage.isfile(location):
        raise UsageError(f"--vggsounder: {location} is not a file")
    return location


def read_vggsounder(location: str) -> pd.DataFrame:
    """The annotation rows, flags as bools; a file of another shape is one line of error."""
    try:
        rows = pd.read_csv(io.BytesIO(storage.read_bytes(location)), dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UsageError(f"--vggsounder: cannot read {location}: {exc}") from exc
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise UsageError(f"--vggsounder: {location} lacks the columns {', '.join(missing)} (not a VGGSounder CSV)")
    rows = rows[list(COLUMNS)].copy()
    rows["modality"] = rows["modality"].str.strip().str.upper()
    for flag in ("background_music", "static_image", "voice_over"):
        rows[flag] = rows[flag].str.strip().str.lower() == "true"
    return rows


def judge_clips(clips: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run clip with a VGGSounder video: clip_id, label, status, error_kind, still (None when not
    recorded), video_id, label_matched, av, audio_only, static."""
    keyed = clips.assign(video_id=[mirror_key(y, s) for y, s in zip(clips["ytid"], clips["start_s"], strict=True)])
    videos = rows.groupby("video_id").agg(
        any_av=("modality", lambda m: bool((m == "AV").any())),
        audio_only=("modality", lambda m: bool((m == "A").all())),
        static=("static_image", "first"))
    own = rows.drop_duplicates(["video_id", "label"]).rename(columns={"modality": "own_modality"})
    judged = keyed.merge(videos, left_on="video_id", right_index=True, how="inner")
    judged = judged.merge(own[["video_id", "label", "own_modality"]], on=["video_id", "label"], how="left")
    judged["label_matched"] = judged["own_modality"].notna()
    judged["av"] = np.where(judged["label_matched"], judged["own_modality"] == "AV", judged["any_av"])
    judged["still"] = judged["still"] if "still" in judged.columns else None
    columns = ["clip_id", "label", "status", "error_kind", "still", "video_id", "label_matched", "av",
               "audio_only", "static"]
    return judged[columns].astype({"label_matched": bool, "av": bool, "audio_only": bool, "static": bool})


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def group_metrics(judged: pd.DataFrame) -> dict:
    """The judge's numbers for one group of matched clips (all of a run's, or one label's)."""
    scored = judged[judged["status"].isin(["ok", "rejected"])]
    kept = scored[scored["status"] == "ok"]
    audio_only = scored[scored["audio_only"]]
    audio_only_rejected = audio_only[audio_only["status"] == "rejected"]
    measured = scored[scored["still"].notna()]
    flagged = measured["still"].astype(bool)
    static = measured["static"]
    hits = int((flagged & static).sum())
    return {
        "clips": len(scored), "kept": len(kept), "kept_av": int(kept["av"].sum()),
        "kept_av_share": _share(int(kept["av"].sum()), len(kept)),
        "audio_only": len(audio_only), "audio_only_rejected": len(audio_only_rejected),
        "audio_only_rejected_share": _share(len(audio_only_rejected), len(audio_only)),
        "static": int(static.sum()), "still_flagged": int(flagged.sum()), "still_and_static": hits,
        "still_precision": _share(hits, int(flagged.sum())), "still_recall": _share(hits, int(static.sum())),
    }


def clips_digest(clips: pd.DataFrame) -> str:
    """A fingerprint of what the judge reads from clips.parquet: the report says when the run changed since."""
    cols = [c for c in ("clip_id", "ytid", "start_s", "label", "status", "still") if c in clips.columns]
    hashed = pd.util.hash_pandas_object(clips[cols].astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def vggsounder_metrics(clips: pd.DataFrame, rows: pd.DataFrame) -> dict:
    """Overall and per-label metrics of a run's clips (clips.parquet) against VGGSounder's rows."""
    judged = judge_clips(clips, rows)
    scored = judged[judged["status"].isin(["ok", "rejected"])]
    overall = group_metrics(judged)
    rejected_by = scored[scored["audio_only"] & (scored["status"] == "rejected")]["error_kind"].fillna("score")
    return {
        "vggsounder_videos": int(rows["video_id"].nunique()),
        "run_clips": len(clips), "no_vggsounder_row": len(clips) - len(judged), "matched": len(judged),
        "not_scored": len(judged) - len(scored), "label_matched": int(scored["label_matched"].sum()),
        **overall,
        # what keeping or rejecting at random would give: the shares above read against these
        "scored_av_share": _share(int(scored["av"].sum()), len(scored)),
        "rejected_share": _share(int((scored["status"] == "rejected").sum()), len(scored)),
        "audio_only_rejected_by": {str(k): int(v) for k, v in rejected_by.value_counts().sort_index().items()},
        "per_label": {str(label): group_metrics(group) for label, group in judged.groupby("label", sort=True)
                      if group["status"].isin(["ok", "rejected"]).any()},
        "clips_digest": clips_digest(clips),
    }


def _read_clips(out: str) -> pd.DataFrame:
    return pd.read_parquet(storage.load_source(RunLayout(out).clips_manifest))


def write_vggsounder_metrics(out: str | os.PathLike, csv: str | os.PathLike | None = None) -> tuple[str, dict]:
    """Judge the finished run in `out` against VGGSounder (`csv`, default the installed package's) and write
    `OUT/manifests/vggsounder.json` whole (temp file + rename, or one upload). Returns where, and the metrics."""
    out = storage.resolve(out)
    location = resolve_csv(csv)  # before reading the run: a missing CSV is the likelier mistake
    read_run_record(out)  # a finished run, or one line saying so
    metrics = {"csv": location, **vggsounder_metrics(_read_clips(out), read_vggsounder(location))}
    if metrics["matched"] == 0:
        raise UsageError(f"--vggsounder: none of the {metrics['run_clips']} clips of {out} is a VGGSounder video "
                         "(<ytid>_<start:06d> of the VGGSound test set)")
    target = RunLayout(out).manifest(RESULT_NAME)
    storage.write_bytes(target, json_bytes(metrics))
    return target, metrics


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


LABEL_COLUMNS = ("clips", "kept", "kept_av_share", "audio_only", "audio_only_rejected_share", "static",
                 "still_flagged", "still_precision", "still_recall")


def label_table(metrics: dict) -> pd.DataFrame:
    """The per-label table: label, then LABEL_COLUMNS."""
    return pd.DataFrame([{"label": label, **{c: m[c] for c in LABEL_COLUMNS}}
                         for label, m in metrics["per_label"].items()], columns=["label", *LABEL_COLUMNS])


def format_summary(metrics: dict) -> str:
    """The printed summary: the overall numbers in sentences, then the per-label table."""
    m = metrics
    lines = [
        f"VGGSounder ({m['vggsounder_videos']:,} videos): {m['matched']} of {m['run_clips']} run clips matched, "
        f"{m['no_vggsounder_row']} with no VGGSounder row; {m['clips']} scored ({m['not_scored']} failed or "
        f"pending); {m['label_matched']} scored clips' labels named by VGGSounder",
        f"kept clips that are AV:      {m['kept_av']} of {m['kept']} = {_fmt(m['kept_av_share'])} "
        f"(of all scored clips: {_fmt(m['scored_av_share'])})",
        f"audio-only clips rejected:   {m['audio_only_rejected']} of {m['audio_only']} = "
        f"{_fmt(m['audio_only_rejected_share'])} (of all scored clips: {_fmt(m['rejected_share'])}); by "
        + (", ".join(f"{k} {v}" for k, v in m["audio_only_rejected_by"].items()) or "-"),
        f"still filter vs static_image: precision {_fmt(m['still_precision'])} ({m['still_and_static']} of "
        f"{m['still_flagged']} flagged), recall {_fmt(m['still_recall'])} (of {m['static']} static)",
    ]
    table = label_table(m)
    if len(table):
        lines += ["per label:", table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}")]
    return "\n".join(lines)


def report_section(out: str, clips: pd.DataFrame) -> list[str]:
    """The report's VGGSounder section (HTML pieces) when the run has `manifests/vggsounder.json`; else none."""
    location = RunLayout(out).manifest(RESULT_NAME)
    if not storage.exists(location):
        return []
    metrics = json.loads(storage.read_bytes(location))
    overall = {k: v for k, v in metrics.items() if not isinstance(v, dict) and k not in ("csv", "clips_digest")}
    overall["audio_only_rejected_by"] = ", ".join(
        f"{k} {v}" for k, v in metrics.get("audio_only_rejected_by", {}).items()) or "-"

    def table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}", border=0, classes="t")

    stale = ("<p><b>clips.parquet changed since this was computed: rerun "
             "<code>python -m curation evaluate --vggsounder</code>.</b></p>"
             if metrics.get("clips_digest") != clips_digest(clips) else "")
    return ["<h2>Against VGGSounder (per-label modality annotations of the VGGSound test set)</h2>",
            f"<p>{html.escape(str(metrics.get('csv', '')))}. AV: the clip's label (any of the video's labels "
            "where VGGSounder does not name it) is audible and visible; audio-only: every label of the video is "
            "audible only; static: <code>static_image</code>. Shares are of scored (kept or rejected) clips.</p>",
            stale, table(pd.DataFrame([{"metric": k, "value": v} for k, v in overall.items()])),
            "<h3>Per label</h3>", table(label_table(metrics))]
