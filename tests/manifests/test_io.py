import os
import stat

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests.io import atomic_write_bytes, read_parquet, write_json, write_parquet, write_parquet_parts


def test_parquet_round_trip_with_schema_cast_and_plain_pandas(tmp_path):
    schema = pa.schema([pa.field("clip_id", pa.string()), pa.field("n", pa.int32())])
    write_parquet(tmp_path / "t.parquet", pa.table({"n": [1, 2], "clip_id": ["a", "b"], "extra": [0, 0]}), schema)
    assert read_parquet(tmp_path / "t.parquet").schema == schema
    assert pd.read_parquet(tmp_path / "t.parquet")["n"].tolist() == [1, 2]


def test_files_get_the_umask_mode_not_the_temp_files_0600(tmp_path):
    write_json(tmp_path / "x.json", {"b": 1, "a": 2})
    expected = 0o666 & ~_current_umask()
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == expected
    assert (tmp_path / "x.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # not bytes: the write fails mid-way
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin"]


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_parquet_parts_are_one_file_with_a_row_group_per_part_and_stable_bytes(tmp_path):
    schema = pa.schema([pa.field("clip_id", pa.string()), pa.field("n", pa.int32())])
    parts = [pa.table({"clip_id": ["a", "b"], "n": [1, 2]}), pa.table({"clip_id": ["c"], "n": [3]})]
    assert write_parquet_parts(tmp_path / "a.parquet", iter(parts), schema) == 3
    write_parquet_parts(tmp_path / "b.parquet", iter(parts), schema)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups == 2
    assert pd.read_parquet(tmp_path / "a.parquet")["clip_id"].tolist() == ["a", "b", "c"]


def test_a_failed_parts_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    schema = pa.schema([pa.field("n", pa.int32())])
    target = tmp_path / "keep.parquet"
    target.write_bytes(b"old")

    def parts():
        yield pa.table({"n": [1]})
        raise RuntimeError("a worker died mid-way")

    with pytest.raises(RuntimeError):
        write_parquet_parts(target, parts(), schema)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.parquet"]
