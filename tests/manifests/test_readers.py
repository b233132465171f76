"""Clip-list readers on the real VGGSound metadata and on small hand-made lists with every kind of bad row."""

from __future__ import annotations

import csv
import hashlib
import math
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from manifests.ids import (
    is_safe_clip_id,
    is_valid_ytid,
    local_clip_id,
    mirror_key,
    youtube_clip_id,
)
from manifests.readers import (
    ERROR_KINDS,
    ClipListError,
    read_clip_list,
    read_clip_table,
    read_vggsound,
    write_clip_list,
)
from manifests.schema import CLIP_LIST_SCHEMA

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
YT_CLIP_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}_\d{7}_\d{7}$")


def real_file(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real data not available: {path}")
    return path


def write_text(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def kinds_by_row(clip_list) -> dict[int, str]:
    return {bad.row: bad.error_kind for bad in clip_list.bad_rows}


# ---------------------------------------------------------------- real VGGSound data


def test_real_vggsound_test_list_parses_completely():
    cl = read_vggsound(real_file("vggsound_test.csv"))
    t = cl.table
    assert t.schema == CLIP_LIST_SCHEMA
    assert (t.num_rows, len(cl.bad_rows), cl.duplicates_dropped) == (15446, 0, 0)
    ids = t.column("clip_id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert all(YT_CLIP_ID_RE.fullmatch(i) for i in ids)
    first = t.slice(0, 1).to_pylist()[0]
    assert first == {
        "clip_id": "glLQrEijrKg_0300000_0310000", "dataset": "vggsound", "ytid": "glLQrEijrKg",
        "url": None, "path": None, "start_s": 300.0, "end_s": 310.0,
        "label": "playing hammond organ", "split": None, "source_row": 1,
    }
    assert t.column("source_row").to_pylist() == list(range(1, 15447))
    assert set(t.column("dataset").to_pylist()) == {"vggsound"}


def test_real_vggsound_ytids_with_underscores_and_dashes_split_correctly():
    cl = read_vggsound(real_file("vggsound_test.csv"))
    rows = cl.table.select(["ytid", "start_s"]).to_pylist()
    names = [r[0] for r in csv.reader(real_file("vggsound_test.csv").open(newline=""))]
    assert [f"{r['ytid']}_{int(r['start_s']):06d}.mp4" for r in rows] == names
    assert any("_" in r["ytid"] for r in rows) and any(r["ytid"].startswith("-") for r in rows)


def test_real_vggsound_labels_equal_the_309_stat_labels():
    with real_file("vggsound_stat.csv").open(newline="", encoding="utf-8") as f:
        stat_labels = [row[0] for row in csv.reader(f)]
    assert len(stat_labels) == len(set(stat_labels)) == 309
    labels = set(read_vggsound(real_file("vggsound_test.csv")).table.column("label").to_pylist())
    assert labels == set(stat_labels)
    assert "bird chirping, tweeting" in labels  # quoted, with a comma


def test_real_vggsound_metadata_form_with_splits():
    cl = read_vggsound(real_file("vggsound_head.csv"))
    assert (cl.table.num_rows, len(cl.bad_rows), cl.duplicates_dropped) == (50, 0, 0)
    rows = cl.table.to_pylist()
    assert rows[0]["clip_id"] == "---g-f_I2yQ_0001000_0011000"
    assert (rows[0]["split"], rows[0]["label"], rows[0]["end_s"]) == ("test", "people marching", 11.0)
    assert {r["split"] for r in rows} == {"train", "test"}


# ---------------------------------------------------------------- VGGSound bad rows


def test_vggsound_bad_rows_get_kind_and_line_number(tmp_path):
    path = write_text(tmp_path / "vgg.csv", [
        "aaaaaaaaaaa,1,dog barking,train",           # 1 good
        "-oexec,1,dog barking,train",                # 2 too short, option-like
        "--exec=x,1,dog barking,train",              # 3 bad characters
        "abc,1,dog barking,train",                   # 4 too short
        "bbbbbbbbbbb,-1,dog barking,train",          # 5 negative start
        "bbbbbbbbbbb,abc,dog barking,train",         # 6 non-numeric start
        "bbbbbbbbbbb,nan,dog barking,train",         # 7 not finite
        "bbbbbbbbbbb,2,,train",                      # 8 empty label
        "bbbbbbbbbbb,3,   ,train",                   # 9 blank label
        "ccccccccccc,1,dog barking",                 # 10 wrong column count
        '"ddddddddddd",2,"bird chirping, tweeting",test',  # 11 good, quoted comma
        "aaaaaaaaaaa,1,dog barking,train",           # 12 exact duplicate of 1
        "aaaaaaaaaaa,1,cat purring,train",           # 13 same clip id, other label
        "",                                          # 14 blank: skipped, still counted
        '"eeeeeeeeeee,1,x,train',                    # 15 stray quote
        "fffffffffff,4,owl hooting,test",            # 16 good: the stray quote spoiled only its line
        'ggggggggggg,1,"dog"x,train',                # 17 text after a closing quote
    ])
    cl = read_vggsound(path)
    assert cl.table.column("source_row").to_pylist() == [1, 11, 16]
    assert cl.table.column("label").to_pylist() == ["dog barking", "bird chirping, tweeting", "owl hooting"]
    assert cl.duplicates_dropped == 1
    assert kinds_by_row(cl) == {
        2: "invalid_id", 3: "invalid_id", 4: "invalid_id", 5: "invalid_time", 6: "invalid_time",
        7: "invalid_time", 8: "missing_label", 9: "missing_label", 10: "invalid_row",
        13: "duplicate_id", 15: "invalid_row", 17: "invalid_row",
    }
    assert set(cl.error_kinds) == set(ERROR_KINDS)  # every kind occurs above
    bad = {b.row: b for b in cl.bad_rows}
    assert bad[3].raw == "--exec=x,1,dog barking,train"
    assert "'--exec=x'" in bad[3].reason
    assert "row 1" in bad[13].reason


def test_vggsound_failed_table_records_bad_rows(tmp_path):
    path = write_text(tmp_path / "vgg.csv", [
        "--exec=x,1,dog barking,train",
        "bbbbbbbbbbb,abc,dog barking,test",
        "bbbbbbbbbbb,2,,train",
        "x" * 300 + ",1,too,many,columns",
    ])
    cl = read_vggsound(path)
    failed = cl.failed_table()
    assert failed.schema == CLIP_LIST_SCHEMA
    rows = failed.to_pylist()
    assert [r["clip_id"] for r in rows] == [f"row{i:07d}-badrow" for i in (1, 2, 3, 4)]
    assert cl.error_kinds == ["invalid_id", "invalid_time", "missing_label", "invalid_row"]
    assert len(cl.reasons) == 4 and all(cl.reasons)
    assert rows[0]["ytid"] is None and rows[0]["start_s"] == 1.0 and rows[0]["label"] == "dog barking"
    assert rows[1]["ytid"] == "bbbbbbbbbbb" and math.isnan(rows[1]["start_s"]) and rows[1]["split"] == "test"
    assert rows[2]["label"] == "" and rows[2]["end_s"] == 12.0
    assert math.isnan(rows[3]["start_s"]) and rows[3]["source_row"] == 4
    assert len(cl.bad_rows[3].raw) == 200
    assert all(is_safe_clip_id(r["clip_id"]) for r in rows)


def test_vggsound_file_list_bad_names(tmp_path):
    path = write_text(tmp_path / "list.csv", [
        "ab_cd-ef_gh_000030.mp4,dog barking",   # ytid with '_' and '-'
        "glLQrEijrKg.mp4,dog barking",         # no start
        "bad-id_000010.mp4,dog barking",       # ytid too short
        "glLQrEijrKg_000x10.mp4,dog barking",  # non-numeric start
    ])
    cl = read_vggsound(path, clip_seconds=5)
    assert cl.table.to_pylist()[0]["clip_id"] == "ab_cd-ef_gh_0030000_0035000"
    assert kinds_by_row(cl) == {2: "invalid_time", 3: "invalid_id", 4: "invalid_time"}


def test_vggsound_whole_input_errors(tmp_path):
    with pytest.raises(ClipListError, match="not found"):
        read_vggsound(tmp_path / "missing.csv")
    path = write_text(tmp_path / "odd.csv", ["a,b,c", "d,e,f"])
    with pytest.raises(ClipListError, match="not a VGGSound list"):
        read_vggsound(path)
    (tmp_path / "latin1.csv").write_bytes("aaaaaaaaaaa,1,caf\xe9,train\n".encode("latin-1"))
    with pytest.raises(ClipListError, match="latin1.csv"):
        read_vggsound(tmp_path / "latin1.csv")


# ---------------------------------------------------------------- generic csv / parquet lists


GENERIC_ROWS = [
    # url, path, start_s, end_s, label, split, ytid
    ("", "media/dog bark.mp4", "0", "2.5", "dog", "train", ""),
    ("https://example.com/v/cat%20purr.mp4?x=1", "", "1.25", "3", "cat", "", ""),
    ("", "", "5", "15", "owl", "test", "glLQrEijrKg"),
    ("", "/abs/clip.mp4", "3", "3", "dog", "", ""),          # end <= start
    ("--exec=x", "", "0", "1", "dog", "", ""),               # url that could pass as an option
    ("", "", "0", "1", "dog", "", ""),                       # no source at all
    ("", "media/dog bark.mp4", "0", "2.5", "dog", "train", ""),  # exact duplicate of the first
]
GENERIC_HEADER = ["url", "path", "start_s", "end_s", "label", "split", "ytid"]


def write_generic_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(GENERIC_HEADER)
        writer.writerows(GENERIC_ROWS)
    return path


def check_generic(cl, base: Path, first_data_row: int) -> None:
    rows = cl.table.to_pylist()
    assert cl.table.schema == CLIP_LIST_SCHEMA
    assert [r["label"] for r in rows] == ["dog", "cat", "owl"]
    assert {r["dataset"] for r in rows} == {"csv"}
    dog, cat, owl = rows
    assert dog["path"] == str(base / "media" / "dog bark.mp4") and dog["url"] is None
    assert dog["clip_id"] == local_clip_id(dog["path"], 0, 2.5)
    assert dog["clip_id"].startswith("dog-bark-") and dog["clip_id"].endswith("_0000000_0002500")
    assert cat["clip_id"] == local_clip_id(cat["url"], 1.25, 3.0)
    assert cat["clip_id"].startswith("cat-purr-") and cat["split"] is None
    assert owl["clip_id"] == "glLQrEijrKg_0005000_0015000" and owl["split"] == "test"
    assert [r["source_row"] for r in rows] == [first_data_row, first_data_row + 1, first_data_row + 2]
    assert cl.duplicates_dropped == 1
    r = first_data_row
    assert kinds_by_row(cl) == {r + 3: "invalid_time", r + 4: "invalid_id", r + 5: "invalid_id"}


def test_generic_csv_list(tmp_path):
    cl = read_clip_list(write_generic_csv(tmp_path / "list.csv"))
    check_generic(cl, tmp_path, first_data_row=2)  # csv rows are file lines; the header is line 1


def test_generic_parquet_list_matches_csv(tmp_path):
    df = pd.DataFrame(GENERIC_ROWS, columns=GENERIC_HEADER).replace("", None)
    df["start_s"] = df["start_s"].astype(float)
    df["end_s"] = df["end_s"].astype(float)
    df.to_parquet(tmp_path / "list.parquet")  # pandas' own writer: index column and pandas metadata
    from_parquet = read_clip_list(tmp_path / "list.parquet")
    check_generic(from_parquet, tmp_path, first_data_row=1)
    from_csv = read_clip_list(write_generic_csv(tmp_path / "list.csv"))
    assert from_parquet.table.drop_columns("source_row").equals(from_csv.table.drop_columns("source_row"))


def test_generic_csv_quoting_clip_id_column_and_multiline_field(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text(
        "Path, Start_s ,end_s,label,clip_id\n"
        'a.mp4,0,1,"bird chirping, tweeting",my_clip-1\n'
        "b.mp4,0,1,dog,../escape\n"
        'c.mp4,0,1,"two\nlines",\n'
        "d.mp4,0,1,dog,my_clip-1\n"
        "e.mp4,0,1\n",
        encoding="utf-8",
    )
    cl = read_clip_list(path)
    rows = cl.table.to_pylist()
    assert [r["clip_id"] for r in rows][0] == "my_clip-1"
    assert rows[0]["label"] == "bird chirping, tweeting"
    assert rows[1]["label"] == "two\nlines" and rows[1]["source_row"] == 4
    assert kinds_by_row(cl) == {3: "invalid_id", 6: "duplicate_id", 7: "invalid_row"}


def test_unbalanced_quote_in_generic_csv_is_one_bad_record(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('path,start_s,end_s,label\na.mp4,0,1,"dog\nb.mp4,0,1,cat\n', encoding="utf-8")
    cl = read_clip_list(path)
    assert cl.table.num_rows == 0
    [bad] = cl.bad_rows
    assert (bad.row, bad.error_kind) == (2, "invalid_row") and "lines 2-3" in bad.reason


def test_missing_columns_are_named(tmp_path):
    path = write_text(tmp_path / "cols.csv", ["url,start_s,label", "https://x.org/a.mp4,0,dog"])
    with pytest.raises(ClipListError, match=r"cols\.csv.*end_s"):
        read_clip_list(path)
    path = write_text(tmp_path / "nosrc.csv", ["start_s,end_s,label", "0,1,dog"])
    with pytest.raises(ClipListError, match="url or path"):
        read_clip_list(path)
    pd.DataFrame({"path": ["a.mp4"], "start_s": [0.0], "end_s": [1.0]}).to_parquet(tmp_path / "nolabel.parquet")
    with pytest.raises(ClipListError, match="label"):
        read_clip_list(tmp_path / "nolabel.parquet")
    with pytest.raises(ClipListError, match="not found"):
        read_clip_list(tmp_path / "absent.parquet")
    with pytest.raises(ClipListError, match="unsupported"):
        read_clip_list(write_text(tmp_path / "list.txt", ["x"]))
    with pytest.raises(ClipListError, match="cannot read"):
        read_clip_list(write_text(tmp_path / "fake.parquet", ["not parquet"]))


def test_header_only_csv_is_an_empty_list(tmp_path):
    cl = read_clip_list(write_text(tmp_path / "empty.csv", ["path,start_s,end_s,label"]))
    assert (cl.table.num_rows, cl.bad_rows, cl.duplicates_dropped) == (0, [], 0)
    assert cl.table.schema == CLIP_LIST_SCHEMA


# ---------------------------------------------------------------- ids


def test_youtube_clip_id_format_and_validation():
    assert youtube_clip_id("---g-f_I2yQ", 1, 11) == "---g-f_I2yQ_0001000_0011000"
    assert youtube_clip_id("glLQrEijrKg", 12.3456, 22.3456) == "glLQrEijrKg_0012346_0022346"
    for bad in ("-oexec", "--exec=x", "abc", "glLQrEijrKg\n", "glLQrEijrK!", "glLQrEijrKgg"):
        assert not is_valid_ytid(bad)
        with pytest.raises(ValueError):
            youtube_clip_id(bad, 0, 10)
    with pytest.raises(ValueError):
        youtube_clip_id("glLQrEijrKg", -1, 10)


def test_local_clip_id_is_stable_and_filename_safe():
    src = "/data/My Clip (1).final.mp4"
    cid = local_clip_id(src, 0.5, 10)
    assert cid == f"My-Clip--1--final-{hashlib.sha1(src.encode()).hexdigest()[:8]}_0000500_0010000"
    assert cid == local_clip_id(src, 0.5, 10.0)
    assert cid != local_clip_id("/other/My Clip (1).final.mp4", 0.5, 10)
    assert local_clip_id("/x/-rf.mp4", 0, 1).startswith("c-rf-")
    assert local_clip_id("https://example.com/", 0, 1).startswith("c-")
    long_id = local_clip_id("/x/" + "a" * 100 + ".wav", 0, 1)
    assert long_id.split("-")[0] == "a" * 40
    for i in (cid, long_id, local_clip_id("../../etc/passwd", 0, 1), local_clip_id("ü€.mp4", 0, 1)):
        assert is_safe_clip_id(i), i
    for bad in ("-x", "../x", "a.b", "a/b", "", "a" * 129, "a b"):
        assert not is_safe_clip_id(bad)


def test_a_rows_id_depends_on_its_content_not_on_its_place_in_the_list(tmp_path):
    """Ids key the per-clip cache: reordering or moving a list must not rename its clips (a relative path's id
    follows the file it names)."""
    first = {r["label"]: r for r in read_clip_list(write_generic_csv(tmp_path / "list.csv")).table.to_pylist()}
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    with (moved / "reordered.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(GENERIC_HEADER)
        writer.writerows(GENERIC_ROWS[::-1])
    again = {r["label"]: r for r in read_clip_list(moved / "reordered.csv").table.to_pylist()}
    assert set(again) == set(first) == {"dog", "cat", "owl"}
    assert again["owl"]["clip_id"] == first["owl"]["clip_id"] == "glLQrEijrKg_0005000_0015000"
    assert again["cat"]["clip_id"] == first["cat"]["clip_id"]  # a URL row
    assert again["dog"]["path"] == str(moved / "media" / "dog bark.mp4")  # another file, so another id
    assert again["dog"]["clip_id"] == local_clip_id(again["dog"]["path"], 0, 2.5) != first["dog"]["clip_id"]


# ---------------------------------------------------------------- parquet round trip


def test_written_clip_list_opens_with_pandas_and_dask(tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    table = read_clip_list(write_generic_csv(tmp_path / "list.csv")).table
    out = tmp_path / "out" / "clips.parquet"
    write_clip_list(out, table)
    assert read_clip_table(out).equals(table)
    assert read_clip_table(out).schema == CLIP_LIST_SCHEMA
    expected = table.to_pylist()
    # pandas 3 and dask pick different string dtypes (NaN vs NA missing value): both are strings.
    for df in (pd.read_parquet(out), dd.read_parquet(out).compute()):
        assert list(df.columns) == CLIP_LIST_SCHEMA.names
        assert df["start_s"].dtype == "float64" and df["end_s"].dtype == "float64"
        assert df["source_row"].dtype == "int64"
        for name in ("clip_id", "dataset", "ytid", "url", "path", "label", "split"):
            assert pd.api.types.is_string_dtype(df[name]), name
        records = df.astype(object).where(df.notna(), None).to_dict("records")
        assert records == expected


def test_read_clip_table_rejects_other_tables(tmp_path):
    write_clip_list(tmp_path / "ok.parquet", pa.Table.from_pylist([], schema=CLIP_LIST_SCHEMA))
    assert read_clip_table(tmp_path / "ok.parquet").num_rows == 0
    pd.DataFrame({"clip_id": ["a"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ClipListError, match="dataset"):
        read_clip_table(tmp_path / "other.parquet")


def test_mirror_key_names_a_clip_as_the_mirrors_and_vggsounder_do():
    assert mirror_key("glLQrEijrKg", 30.0) == "glLQrEijrKg_000030"
    for ytid, start in ((None, 30.0), (float("nan"), 30.0), ("glLQrEijrKg", 12.5), ("glLQrEijrKg", float("nan")),
                        ("glLQrEijrKg", -1.0), ("glLQrEijrKg", None)):
        assert mirror_key(ytid, start) is None, (ytid, start)
