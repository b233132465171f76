"""Clip-list readers: VGGSound metadata and generic csv/parquet lists -> CLIP_LIST_SCHEMA tables.

Bad rows never raise: each becomes a `BadRow` (1-based row number, stable `error_kind`, raw text) so
the pipeline can record it as a failed clip and the run goes on. Only whole-input problems (missing or
unreadable file, required columns absent) raise `ClipListError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa

from manifests.ids import is_safe_clip_id, is_valid_ytid, local_clip_id, youtube_clip_id
from manifests.io import read_parquet, write_parquet
from manifests.schema import CLIP_LIST_SCHEMA

ERROR_KINDS = ("invalid_id", "invalid_time", "missing_label", "invalid_row", "duplicate_id")
RAW_MAX_CHARS = 200
# http(s) only: the fetchers speak nothing else, and a scheme first means a URL is never read as an option.
_URL_RE = re.compile(r"^https?://[^\s\x00-\x1f\x7f]+$", re.IGNORECASE)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_GENERIC_COLUMNS = ("clip_id", "ytid", "url", "path", "start_s", "end_s", "label", "split")
_REQUIRED_COLUMNS = ("start_s", "end_s", "label")
_SOURCE_COLUMNS = ("url", "path", "ytid")
_MAX_SECONDS = 1e7  # ~116 days: beyond any real media, and keeps clip ids short


class ClipListError(ValueError):
    """The clip list as a whole can't be read (not a per-row problem)."""


@dataclass(frozen=True)
class BadRow:
    """One rejected input row. `record` holds what could be parsed (CLIP_LIST_SCHEMA keys)."""

    row: int
    reason: str
    error_kind: str
    raw: str
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ClipList:
    """Valid rows as a CLIP_LIST_SCHEMA table, plus every rejected row and the exact-duplicate count."""

    table: pa.Table
    bad_rows: list[BadRow]
    duplicates_dropped: int

    @property
    def error_kinds(self) -> list[str]:
        """`error_kind` of each row of `failed_table()`, same order."""
        return [bad.error_kind for bad in self.bad_rows]

    @property
    def reasons(self) -> list[str]:
        """Human message of each row of `failed_table()`, same order."""
        return [bad.reason for bad in self.bad_rows]

    def failed_table(self) -> pa.Table:
        """Bad rows as CLIP_LIST_SCHEMA rows (id `row<NNNNNNN>-badrow`), so they can be kept as failed clips.

        Unparsable times are NaN, a missing label is "", an invalid ytid is null.
        """
        records = []
        for bad in self.bad_rows:
            rec = dict(bad.record, clip_id=f"row{bad.row:07d}-badrow", source_row=bad.row)
            rec["ytid"] = rec["ytid"] if is_valid_ytid(rec["ytid"]) else None
            records.append(rec)
        return pa.Table.from_pylist(records, schema=CLIP_LIST_SCHEMA)


# ---------------------------------------------------------------- row validation and assembly


def _text(value: Any) -> str | None:
    """Stripped string, or None for a missing/blank cell (csv "", parquet null or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() or None


def _number(value: Any) -> float:
    """Float of a cell; NaN when it is not a number, so the failed table can still hold the row."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _time_problem(rec: dict, values: dict) -> str | None:
    for name in ("start_s", "end_s"):
        if not math.isfinite(rec[name]):
            raw = values.get(name)
            return f"{name} is missing" if _text(raw) is None else f"{name} {raw!r} is not a finite number"
    if rec["start_s"] < 0:
        return f"start_s {rec['start_s']:g} is negative"
    if rec["end_s"] <= rec["start_s"]:
        return f"end_s {rec['end_s']:g} is not after start_s {rec['start_s']:g}"
    if rec["end_s"] > _MAX_SECONDS:
        return f"end_s {rec['end_s']:g} is beyond {_MAX_SECONDS:g} s"
    return None


def _problem(rec: dict, values: dict, explicit_id: str | None) -> tuple[str, str] | None:
    """(error_kind, reason) of the first problem of a parsed row: ids, then times, then label."""
    if explicit_id is not None and not is_safe_clip_id(explicit_id):
        return "invalid_id", f"clip_id {explicit_id!r} is not a safe id ([A-Za-z0-9_][A-Za-z0-9_-]*, <= 128 chars)"
    if rec["ytid"] is not None and not is_valid_ytid(rec["ytid"]):
        return "invalid_id", f"ytid {rec['ytid']!r} is not an 11-character YouTube id"
    if rec["url"] is not None and not _URL_RE.fullmatch(rec["url"]):
        return "invalid_id", f"url {rec['url']!r} is not an absolute http(s) URL"
    if rec["path"] is not None and _CONTROL_RE.search(rec["path"]):
        return "invalid_id", f"path {rec['path']!r} contains control characters"
    if rec["ytid"] is None and rec["url"] is None and rec["path"] is None:
        return "invalid_id", "row has no ytid, url or path"
    time_problem = _time_problem(rec, values)
    if time_problem:
        return "invalid_time", time_problem
    if not rec["label"]:
        return "missing_label", "label is empty"
    return None


class _Collector:
    """Validates rows in input order, assigns clip ids, drops exact duplicates, builds the ClipList."""

    def __init__(self, dataset: str, base_dir: Path | None = None):
        self.dataset, self.base_dir = dataset, base_dir
        self.rows: list[dict] = []
        self.bad: list[BadRow] = []
        self.first_seen: dict[str, tuple[int, tuple]] = {}
        self.duplicates = 0

    def _record(self, row: int, values: dict) -> dict:
        path = _text(values.get("path"))
        if path is not None and self.base_dir is not None:
            path = os.path.abspath(os.path.join(self.base_dir, path))
        return {
            "clip_id": None, "dataset": self.dataset, "ytid": _text(values.get("ytid")),
            "url": _text(values.get("url")), "path": path,
            "start_s": _number(values.get("start_s")), "end_s": _number(values.get("end_s")),
            "label": _text(values.get("label")) or "", "split": _text(values.get("split")),
            "source_row": row,
        }

    def add_bad(self, row: int, raw: str, kind: str, reason: str, record: dict | None = None) -> None:
        record = record if record is not None else self._record(row, {})
        self.bad.append(BadRow(row, reason, kind, raw[:RAW_MAX_CHARS], record))

    def add(self, row: int, raw: str, values: dict) -> None:
        rec = self._record(row, values)
        explicit_id = _text(values.get("clip_id"))
        problem = _problem(rec, values, explicit_id)
        if problem:
            self.add_bad(row, raw, *problem, record=rec)
            return
        rec["clip_id"] = explicit_id or _clip_id(rec)
        content = tuple(v for k, v in rec.items() if k != "source_row")
        first = self.first_seen.setdefault(rec["clip_id"], (row, content))
        if first[0] == row:
            self.rows.append(rec)
        elif first[1] == content:
            self.duplicates += 1
        else:
            reason = f"clip_id {rec['clip_id']} already used by row {first[0]} with different content"
            self.add_bad(row, raw, "duplicate_id", reason, record=rec)

    def result(self) -> ClipList:
        table = pa.Table.from_pylist(self.rows, schema=CLIP_LIST_SCHEMA)
        return ClipList(table, self.bad, self.duplicates)


def _clip_id(rec: dict) -> str:
    """YouTube id when the row has a ytid, else a hash of the stored url or absolute path."""
    if rec["ytid"] is not None:
        return youtube_clip_id(rec["ytid"], rec["start_s"], rec["end_s"])
    return local_clip_id(rec["url"] or rec["path"], rec["start_s"], rec["end_s"])


# ---------------------------------------------------------------- text input


class _Record(NamedTuple):
    line: int  # first line of the record, 1-based
    last_line: int
    raw: str
    fields: list[str] | None  # None when the csv module rejected the record
    error: str | None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClipListError(f"clip list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClipListError(f"cannot read clip list {path}: {exc}") from None


def _is_blank(fields: list[str] | None) -> bool:
    return fields is not None and not any(f.strip() for f in fields)


def _line_records(text: str) -> Iterator[_Record]:
    """One csv record per line: a stray quote spoils only its own line (VGGSound has no multi-line fields)."""
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        line = line.rstrip("\r\n")
        try:
            fields, error = next(csv.reader([line], strict=True), []), None
        except csv.Error as exc:
            fields, error = None, str(exc)
        if not _is_blank(fields):
            yield _Record(number, number, line, fields, error)


class _LineTap:
    """Line iterator that remembers the lines the csv reader consumed, to recover raw text and line numbers."""

    def __init__(self, text: str):
        self.lines = io.StringIO(text, newline="")
        self.taken: list[str] = []

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.taken.append(line)
        return line


def _csv_records(text: str) -> Iterator[_Record]:
    """Standard csv records (quoted fields may span lines), each with its first and last line number."""
    tap = _LineTap(text)
    reader = csv.reader(tap, strict=True)
    line = 1
    while True:
        try:
            fields, error = next(reader), None
        except StopIteration:
            return
        except csv.Error as exc:
            fields, error = None, str(exc)
        last = line + len(tap.taken) - 1
        raw = "".join(tap.taken).rstrip("\r\n")
        tap.taken.clear()
        if not _is_blank(fields):
            yield _Record(line, last, raw, fields, error)
        line = last + 1


def _record_problem(rec: _Record, width: int) -> str | None:
    """Why a record can't be a row of a `width`-column file, or None."""
    span = ""
    if rec.last_line > rec.line:
        span = f" (record spans lines {rec.line}-{rec.last_line}; unbalanced quote?)"
    if rec.error:
        return f"unparsable csv: {rec.error}{span}"
    if len(rec.fields) != width:
        return f"expected {width} columns, got {len(rec.fields)}{span}"
    return None


# ---------------------------------------------------------------- VGGSound


def _vggsound_width(path: Path, records: list[_Record]) -> int:
    """2 (`<ytid>_<start>.mp4,label`) or 4 (`ytid,start,label,split`): the first well-formed row decides."""
    for rec in records:
        if rec.fields is not None and len(rec.fields) in (2, 4):
            return len(rec.fields)
    raise ClipListError(
        f"{path}: not a VGGSound list; expected rows `ytid,start_seconds,label,split` "
        "or `<ytid>_<start>.mp4,label`"
    )


def _vggsound_values(fields: list[str], clip_seconds: float) -> dict:
    if len(fields) == 4:
        ytid, start, label, split = fields
    else:
        name, label = fields
        stem = name.strip().replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        ytid, start = stem.rsplit("_", 1) if "_" in stem else (stem, None)  # ytids may contain '_'
        split = None
    return {
        "ytid": ytid, "start_s": start, "end_s": _number(start) + clip_seconds,
        "label": label, "split": split,
    }


def read_vggsound(path: str | os.PathLike, clip_seconds: float = 10.0) -> ClipList:
    """Read VGGSound metadata (`ytid,start,label,split`) or a file list (`<ytid>_<start:06d>.mp4,label`)."""
    if not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise ValueError(f"clip_seconds must be a finite number > 0, got {clip_seconds!r}")
    path = Path(path)
    records = list(_line_records(_read_text(path)))
    width = _vggsound_width(path, records)
    out = _Collector("vggsound")
    for rec in records:
        problem = _record_problem(rec, width)
        if problem:
            out.add_bad(rec.line, rec.raw, "invalid_row", problem)
        else:
            out.add(rec.line, rec.raw, _vggsound_values(rec.fields, clip_seconds))
    return out.result()


# ---------------------------------------------------------------- generic csv / parquet


def _check_columns(path: Path, names: list[str]) -> None:
    """Raise ClipListError naming every required column the list lacks."""
    missing = [name for name in _REQUIRED_COLUMNS if name not in names]
    if not any(name in names for name in _SOURCE_COLUMNS):
        missing.insert(0, "url or path")
    if missing:
        raise ClipListError(f"{path}: missing required column(s): {', '.join(missing)} (has: {', '.join(names)})")
    if len(set(names)) != len(names):
        raise ClipListError(f"{path}: duplicated column names in {names}")


def _generic_csv(path: Path, out: _Collector) -> None:
    records = _csv_records(_read_text(path))
    header_rec = next(records, None)
    if header_rec is None or header_rec.fields is None:
        raise ClipListError(f"{path}: no readable header line (expected url or path,start_s,end_s,label[,split])")
    header = [name.strip().lower() for name in header_rec.fields]
    _check_columns(path, header)
    for rec in records:
        problem = _record_problem(rec, len(header))
        if problem:
            out.add_bad(rec.line, rec.raw, "invalid_row", problem)
        else:
            out.add(rec.line, rec.raw, dict(zip(header, rec.fields, strict=False)))


def _generic_parquet(path: Path, out: _Collector) -> None:
    if not path.is_file():
        raise ClipListError(f"clip list not found: {path}")
    try:
        table = read_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise ClipListError(f"cannot read clip list {path}: {exc}") from None
    table = table.rename_columns([name.strip().lower() for name in table.column_names])
    _check_columns(path, table.column_names)
    columns = {name: table.column(name).to_pylist() for name in _GENERIC_COLUMNS if name in table.column_names}
    for i in range(table.num_rows):
        values = {name: column[i] for name, column in columns.items()}
        out.add(i + 1, json.dumps(values, default=str), values)


def read_clip_list(path: str | os.PathLike) -> ClipList:
    """Read a generic .csv (with header) or .parquet list of url/path/ytid, start_s, end_s, label[, split].

    Relative paths are resolved against the list's folder and stored absolute; row numbers are file
    lines for csv (header = line 1) and 1-based row indices for parquet.
    """
    path = Path(path)
    out = _Collector("csv", base_dir=path.absolute().parent)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        _generic_csv(path, out)
    elif suffix in (".parquet", ".pq"):
        _generic_parquet(path, out)
    else:
        raise ClipListError(f"{path}: unsupported clip list type {suffix!r} (use .csv or .parquet)")
    return out.result()


# ---------------------------------------------------------------- parquet round trip


def write_clip_list(path: str | os.PathLike, table: pa.Table) -> None:
    """Atomically write a clip table as plain parquet (opens with pandas/dask read_parquet as is)."""
    write_parquet(path, table, CLIP_LIST_SCHEMA)


def read_clip_table(path: str | os.PathLike) -> pa.Table:
    """Read a written clip table back, checked and cast to CLIP_LIST_SCHEMA."""
    table = read_parquet(path)
    missing = [name for name in CLIP_LIST_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ClipListError(f"{path}: not a clip table, missing column(s): {', '.join(missing)}")
    return table.select(CLIP_LIST_SCHEMA.names).cast(CLIP_LIST_SCHEMA)
