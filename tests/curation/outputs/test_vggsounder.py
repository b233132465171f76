"""The VGGSounder judge (curation/outputs/vggsounder.py): the metrics on a hand-made table with known answers, and
`evaluate --vggsounder` on a run over synthetic clips named with real VGGSound test ids, checked against a
separate computation from clips.parquet and the installed CSV."""

import importlib.util
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest

from curation.__main__ import main
from curation.outputs import vggsounder
from curation.outputs.report import build_report
from curation.outputs.vggsounder import COLUMNS, read_vggsounder, vggsounder_metrics

# (video_id, label, modality, static_image): v1 has an AV and an A label, v2 is audio-only and a static image,
# v3 names no "siren" but has an AV label, v4 is audio-only
HAND_ROWS = [("aaaaaaaaaaa_000000", "dog", "AV", False), ("aaaaaaaaaaa_000000", "cat", "A", False),
             ("bbbbbbbbbbb_000010", "piano", "A", True),
             ("ccccccccccc_000020", "car", "V", False), ("ccccccccccc_000020", "horn", "AV", False),
             ("ddddddddddd_000005", "rain", "A", False), ("ddddddddddd_000005", "thunder", "A", False)]
# (clip_id, ytid, start_s, label, status, error_kind, still)
HAND_CLIPS = [("c1", "aaaaaaaaaaa", 0.0, "dog", "ok", None, False),
              ("c2", "aaaaaaaaaaa", 0.0, "cat", "ok", None, False),  # own label A: not AV, though v1 has one
              ("c3", "ccccccccccc", 20.0, "siren", "ok", None, True),  # label not named: any AV label counts
              ("c4", "bbbbbbbbbbb", 10.0, "piano", "rejected", "still", True),
              ("c5", "ddddddddddd", 5.0, "rain", "ok", None, False),
              ("c6", "ddddddddddd", 5.5, "rain", "ok", None, False),  # not a whole second: no row
              ("c7", None, 0.0, "dog", "ok", None, False),  # a local file: no row
              ("c8", "eeeeeeeeeee", 0.0, "dog", "rejected", None, False),  # not in VGGSounder
              ("c9", "bbbbbbbbbbb", 10.0, "piano", "failed", "decode_error", None),  # matched, never scored
              ("c10", "ddddddddddd", 5.0, "thunder", "rejected", None, False)]


def _write_rows(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame([{"video_id": v, "label": label, "modality": m, "background_music": "False",
                   "static_image": str(s), "voice_over": "False"} for v, label, m, s in rows],
                 columns=list(COLUMNS)).to_csv(path, index=False)
    return path


def _hand_clips() -> pd.DataFrame:
    clips = pd.DataFrame(HAND_CLIPS, columns=["clip_id", "ytid", "start_s", "label", "status", "error_kind", "still"])
    return clips.astype({"still": "boolean"})


def test_metrics_of_a_hand_made_table(tmp_path):
    m = vggsounder_metrics(_hand_clips(), read_vggsounder(str(_write_rows(tmp_path / "v.csv", HAND_ROWS))))
    assert (m["vggsounder_videos"], m["run_clips"], m["matched"], m["no_vggsounder_row"]) == (4, 10, 7, 3)
    assert (m["clips"], m["not_scored"], m["label_matched"]) == (6, 1, 5)
    assert (m["kept"], m["kept_av"], m["kept_av_share"]) == (4, 2, 0.5)  # c1 and c3 of c1, c2, c3, c5
    assert (m["audio_only"], m["audio_only_rejected"], m["audio_only_rejected_share"]) == (3, 2, 0.6667)
    assert m["audio_only_rejected_by"] == {"score": 1, "still": 1}
    assert (m["static"], m["still_flagged"], m["still_and_static"]) == (1, 2, 1)
    assert (m["still_precision"], m["still_recall"]) == (0.5, 1.0)
    assert (m["scored_av_share"], m["rejected_share"]) == (0.3333, 0.3333)
    per = m["per_label"]
    assert sorted(per) == ["cat", "dog", "piano", "rain", "siren", "thunder"]
    assert [per[k]["kept_av_share"] for k in ("dog", "cat", "siren", "piano", "rain")] == [1.0, 0.0, 1.0, None, 0.0]
    assert [per[k]["audio_only_rejected_share"] for k in ("dog", "piano", "rain", "thunder")] == [None, 1.0, 0.0, 1.0]
    assert (per["piano"]["clips"], per["piano"]["still_precision"], per["piano"]["still_recall"]) == (1, 1.0, 1.0)
    assert (per["siren"]["still_precision"], per["siren"]["still_recall"]) == (0.0, None)


def test_clips_without_still_column_give_no_still_figures(tmp_path):
    rows = read_vggsounder(str(_write_rows(tmp_path / "v.csv", HAND_ROWS)))
    m = vggsounder_metrics(_hand_clips().drop(columns="still"), rows)
    assert (m["still_flagged"], m["still_precision"], m["still_recall"], m["kept_av"]) == (0, None, None, 2)


# --- a run over synthetic clips named with real VGGSound test ids ------------------------------------------------

def _installed_csv() -> Path:
    if importlib.util.find_spec("vggsounder") is None:
        pytest.skip("vggsounder is not installed (make setup; or pip install --no-deps vggsounder==1.0)")
    return Path(vggsounder.default_csv())


def _pick(rows: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Real test ids, one or two of each kind, first in id order: name -> (video_id, label for the clip list)."""
    videos = rows.groupby("video_id").agg(modalities=("modality", set), labels=("label", list),
                                          static=("static_image", "first"))
    moving, static = videos[~videos["static"]], videos[videos["static"]]
    av_only = moving[moving["modalities"] == {"AV"}]
    mixed = moving[moving["modalities"] == {"A", "AV"}]
    audio_only = moving[moving["modalities"] == {"A"}]
    own_a = rows[(rows["modality"] == "A") & rows["video_id"].isin(mixed.index)].iloc[0]
    renamed = av_only.index[2]
    foreign = next(label for label in sorted(set(rows["label"])) if label not in videos.at[renamed, "labels"])
    return {"av_a": (av_only.index[0], av_only["labels"].iloc[0][0]),
            "av_b": (av_only.index[1], av_only["labels"].iloc[1][0]),
            "own_label_a": (own_a["video_id"], own_a["label"]),  # an A label of a video that also has AV ones
            "renamed": (renamed, foreign),  # a label VGGSounder does not give the video
            "audio_only_a": (audio_only.index[0], audio_only["labels"].iloc[0][0]),
            "audio_only_b": (audio_only.index[1], audio_only["labels"].iloc[1][0]),
            "static_audio_only": (static[static["modalities"] == {"A"}].index[0],
                                  static[static["modalities"] == {"A"}]["labels"].iloc[0][0]),
            "static_av": (static[static["modalities"] == {"AV"}].index[0],
                          static[static["modalities"] == {"AV"}]["labels"].iloc[0][0]),
            "missing": (av_only.index[3], av_only["labels"].iloc[3][0])}  # listed, no file: failed


# a still picture for these (the `still` filter should flag them): one static image is filmed moving instead, and
# one moving video still, so that precision and recall are both below 1
STILL = {"static_audio_only", "audio_only_b"}


def _clip(path: Path, still: bool, freq: int) -> None:
    picture = "color=c=0x3060a0:size=160x120:rate=25:d=4" if still else "testsrc2=size=160x120:rate=25:d=4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", picture, "-f", "lavfi", "-i",
                    f"sine=frequency={freq}:sample_rate=16000:duration=4", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(path)], check=True)


def _expected(clips: pd.DataFrame, csv: Path) -> dict:
    """The judge's overall numbers computed row by row, apart from the module."""
    labels, flags = defaultdict(dict), {}
    for row in pd.read_csv(csv, dtype=str, keep_default_na=False).itertuples():
        labels[row.video_id][row.label] = row.modality
        flags[row.video_id] = row.static_image == "True"
    n = defaultdict(int)
    for c in clips.itertuples():
        vid = f"{c.ytid}_{int(c.start_s):06d}"
        if vid not in labels:
            n["no_row"] += 1
            continue
        if c.status not in ("ok", "rejected"):
            continue
        own = labels[vid].get(c.label)
        av = own == "AV" if own is not None else "AV" in labels[vid].values()
        audio_only = set(labels[vid].values()) == {"A"}
        n["kept"] += c.status == "ok"
        n["kept_av"] += c.status == "ok" and av
        n["audio_only"] += audio_only
        n["audio_only_rejected"] += audio_only and c.status == "rejected"
        n["static"] += flags[vid]
        n["flagged"] += bool(c.still)
        n["both"] += bool(c.still) and flags[vid]
    return {"no_vggsounder_row": n["no_row"], "kept": n["kept"], "kept_av": n["kept_av"],
            "kept_av_share": round(n["kept_av"] / n["kept"], 4), "audio_only": n["audio_only"],
            "audio_only_rejected_share": round(n["audio_only_rejected"] / n["audio_only"], 4),
            "static": n["static"], "still_flagged": n["flagged"],
            "still_precision": round(n["both"] / n["flagged"], 4), "still_recall": round(n["both"] / n["static"], 4)}


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory) -> dict:
    csv = _installed_csv()
    picks = _pick(read_vggsounder(str(csv)))
    root = tmp_path_factory.mktemp("vggsounder")
    folder = root / "mirror"
    folder.mkdir()
    listed = {**picks, "not_annotated": ("zzzzzzzzzzz_000000", picks["av_a"][1])}  # a file VGGSounder lacks
    for i, (name, (vid, _)) in enumerate(listed.items()):
        if name != "missing":
            _clip(folder / f"{vid}.mp4", name in STILL, 300 + 110 * i)
    clip_list = root / "vggsound.csv"  # the mirrors' form: <ytid>_<start:06d>.mp4,label
    pd.DataFrame([(f"{vid}.mp4", label) for vid, label in listed.values()]).to_csv(clip_list, index=False,
                                                                                   header=False)
    out = root / "run"
    assert main(["run", "--dataset", "vggsound", "--meta", str(clip_list), "--source", str(folder), "--out",
                 str(out), "--scorer", "synchrony", "--workers", "1", "--quiet", "--set", "decode.short_side=112",
                 "--set", "filters.reject_duplicates=false"]) == 0
    return {"csv": csv, "out": out, "picks": picks}


def test_evaluate_vggsounder_matches_a_separate_computation(judged_run, capsys):
    out = judged_run["out"]
    assert main(["evaluate", "--out", str(out), "--vggsounder"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "manifests" / "vggsounder.json").read_text())
    clips = pd.read_parquet(out / "manifests" / "clips.parquet")
    assert {k: metrics[k] for k in _expected(clips, judged_run["csv"])} == _expected(clips, judged_run["csv"])
    # the synthetic clips make the still filter's answers known: one of two flagged is static, one of two static
    assert (metrics["still_precision"], metrics["still_recall"], metrics["no_vggsounder_row"]) == (0.5, 0.5, 1)
    assert (metrics["matched"], metrics["not_scored"], metrics["csv"]) == (9, 1, str(judged_run["csv"]))
    assert "kept clips that are AV" in printed and "per label:" in printed
    assert set(metrics["per_label"]) == {label for name, (_, label) in judged_run["picks"].items() if name != "missing"}
    page = build_report(out)
    assert "Against VGGSounder" in page and "clips.parquet changed" not in page
    reselected = clips.assign(status=clips["status"].replace({"ok": "rejected"}))  # as a later `select` may
    assert "clips.parquet changed" in "".join(vggsounder.report_section(str(out), reselected))


def test_a_given_csv_path_gives_the_same_numbers_and_a_bad_one_is_one_line(judged_run, tmp_path, capsys):
    out = judged_run["out"]
    assert main(["evaluate", "--out", str(out), "--vggsounder", str(judged_run["csv"])]) == 0
    assert json.loads((out / "manifests" / "vggsounder.json").read_text())["csv"] == str(judged_run["csv"])
    capsys.readouterr()
    assert main(["evaluate", "--out", str(out), "--vggsounder", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --vggsounder:") and err.count("\n") == 1


def test_without_the_package_or_a_path_the_error_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(vggsounder, "find_spec", lambda name: None)
    assert main(["evaluate", "--out", str(tmp_path), "--vggsounder"]) == 2
    err = capsys.readouterr().err
    assert "vggsounder package is not installed" in err and err.count("\n") == 1
