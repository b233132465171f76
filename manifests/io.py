"""Atomic parquet and JSON writes: a killed run never leaves a half-written manifest."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq


def _file_mode() -> int:
    """The mode a plain `open()` would give a new file under the current umask (mkstemp uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file beside `path` that becomes `path` (fsync, then rename) when the block ends without error;
    on any error it is removed and an existing `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`."""
    with atomic_file(path) as f:
        f.write(data)


def json_bytes(obj: Any) -> bytes:
    """`obj` as indented, key-sorted JSON (stable bytes for stable input)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def parquet_bytes(table: pa.Table, schema: pa.Schema | None = None) -> bytes:
    """`table` (cast to `schema` when given) as one zstd parquet file."""
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as JSON (`json_bytes`)."""
    atomic_write_bytes(path, json_bytes(obj))


def write_parquet(path: str | os.PathLike, table: pa.Table, schema: pa.Schema | None = None) -> None:
    """Atomically write `table` (cast to `schema` when given) as one parquet file."""
    atomic_write_bytes(path, parquet_bytes(table, schema))


def stream_parquet_parts(f: BinaryIO, parts: Iterable[pa.Table], schema: pa.Schema) -> int:
    """Write `parts` to the open file `f` as one parquet file, one row group per part, holding one part at a
    time. Returns the number of rows. Same parts in the same order give the same bytes."""
    rows = 0
    with pq.ParquetWriter(f, schema, compression="zstd") as writer:
        for part in parts:
            writer.write_table(part.select(schema.names).cast(schema))
            rows += part.num_rows
    return rows


def write_parquet_parts(path: str | os.PathLike, parts: Iterable[pa.Table], schema: pa.Schema) -> int:
    """Atomically write `parts` as one parquet file (`stream_parquet_parts`); returns the number of rows."""
    with atomic_file(path) as f:
        return stream_parquet_parts(f, parts, schema)


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read one parquet file into an arrow table."""
    return pq.read_table(path)
