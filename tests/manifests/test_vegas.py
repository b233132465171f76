"""VEGAS lists from AudioSet segment CSVs (with the label map) and from a local folder of VEGAS videos."""

from pathlib import Path

import pytest

from manifests.ids import youtube_clip_id
from manifests.readers import ClipListError
from manifests.schema import CLIP_LIST_SCHEMA
from manifests.vegas import VEGAS_CATEGORIES, read_vegas

LABELS = [("/m/09x0r", "Speech"), ("/m/0bt9lr", "Dog"), ("/m/0463cq4", "Baby cry, infant cry"),
          ("/m/01j4z9", "Chainsaw"), ("/m/026t6", "Drum"), ("/m/0g6b5", "Fireworks"), ("/m/09ct_", "Helicopter"),
          ("/m/01m4t", "Printer"), ("/m/06d_3", "Rail transport"), ("/m/01d3sd", "Snoring"),
          ("/m/0j6m2", "Stream"), ("/m/02jz0l", "Water tap, faucet")]

SEGMENTS = [
    "# Segments csv created Sun Mar  5 10:54:31 2017",
    "# num_ytids=7, num_segs=7, num_unique_labels=527, num_positive_labels=12",
    "# YTID, start_seconds, end_seconds, positive_labels",
    '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/0bt9lr"',       # 4: speech + dog -> dog
    '-0RWZT-miFs, 420.000, 430.000, "/m/09x0r"',                # 5: speech only -> not VEGAS
    '-1nilZx5ZeY, 0.000, 10.000, "/m/0j6m2"',                   # 6: stream -> water flowing
    '-5sTlw9y-hM, 10.000, 20.000, "/m/0bt9lr,/m/026t6"',        # 7: dog + drum -> ambiguous, left out
    'not_an_id, 0.000, 10.000, "/m/01d3sd"',                     # 8: snoring, bad id
    '0-2Onbywljo, 5.000, 3.000, "/m/09ct_"',                     # 9: helicopter, end before start
    "0-8_gd7XxQM, 1.000",                                        # 10: cut-off line
]


def _label_map(folder: Path, rows=LABELS) -> Path:
    path = folder / "class_labels_indices.csv"
    path.write_text("index,mid,display_name\n" + "".join(f'{i},{mid},"{name}"\n' for i, (mid, name) in
                                                        enumerate(rows)))
    return path


def test_vegas_rows_come_from_audioset_segments_and_the_label_map(tmp_path):
    _label_map(tmp_path)
    (tmp_path / "eval_segments.csv").write_text("\n".join(SEGMENTS) + "\n")
    cl = read_vegas(tmp_path / "eval_segments.csv")
    rows = cl.table.to_pylist()
    assert cl.table.schema == CLIP_LIST_SCHEMA
    assert [(r["ytid"], r["label"], r["source_row"]) for r in rows] == [
        ("--PJHxphWEs", "dog", 4), ("-1nilZx5ZeY", "water flowing", 6)]
    assert rows[0]["clip_id"] == youtube_clip_id("--PJHxphWEs", 30, 40) and rows[0]["split"] == "test"
    assert {r["dataset"] for r in rows} == {"vegas"}
    assert {b.row: b.error_kind for b in cl.bad_rows} == {8: "invalid_id", 9: "invalid_time", 10: "invalid_row"}


def test_a_folder_of_segment_csvs_is_read_in_name_order(tmp_path):
    _label_map(tmp_path)
    (tmp_path / "balanced_train_segments.csv").write_text('aaaaaaaaaaa, 0.0, 10.0, "/m/01m4t"\n')
    (tmp_path / "eval_segments.csv").write_text('bbbbbbbbbbb, 0.0, 10.0, "/m/01j4z9"\n')
    rows = read_vegas(tmp_path).table.to_pylist()
    assert [(r["label"], r["split"], r["source_row"]) for r in rows] == [("printer", "train", 1),
                                                                         ("chainsaw", "test", 2)]


def test_a_label_map_without_a_vegas_class_or_none_at_all_is_refused(tmp_path):
    (tmp_path / "seg.csv").write_text('aaaaaaaaaaa, 0.0, 10.0, "/m/01m4t"\n')
    with pytest.raises(ClipListError, match="label map not found"):
        read_vegas(tmp_path / "seg.csv")
    (tmp_path / "maps").mkdir()
    short = _label_map(tmp_path / "maps", [row for row in LABELS if row[1] != "Snoring"])
    with pytest.raises(ClipListError, match="lacks the VEGAS class.*Snoring"):
        read_vegas(tmp_path / "seg.csv", label_map=short)


def test_a_local_vegas_folder_is_a_source_labelled_by_its_folders(tmp_path):
    for rel in ("Baby_crying/video/a.mp4", "dog/b.mp4", "dog/notes.txt", "Water flowing/c.webm", "misc/d.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    cl = read_vegas(tmp_path)
    rows = {Path(r["path"]).name: r for r in cl.table.to_pylist()}
    assert {name: r["label"] for name, r in rows.items()} == {"a.mp4": "baby crying", "b.mp4": "dog",
                                                              "c.webm": "water flowing"}
    assert all((r["start_s"], r["end_s"], r["ytid"]) == (0.0, 10.0, None) for r in rows.values())
    assert [(b.error_kind, b.raw) for b in cl.bad_rows] == [("missing_label", "misc/d.mp4")]
    assert cl.failed_table().column("path").to_pylist() == [str(tmp_path / "misc" / "d.mp4")]


def test_there_are_the_ten_vegas_categories():
    assert sorted(VEGAS_CATEGORIES) == ["baby crying", "chainsaw", "dog", "drum", "fireworks", "helicopter",
                                        "printer", "rail transport", "snoring", "water flowing"]
