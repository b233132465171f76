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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented, key-sorted JSON (stable bytes for stable input)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_parquet(path: str | os.PathLike, table: pa.Table, schema: pa.Schema | None = None) -> None:
    """Atomically write `table` (cast to `schema` when given) as one parquet file."""
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def write_parquet_parts(path: str | os.PathLike, parts: Iterable[pa.Table], schema: pa.Schema) -> int:
    """Atomically write `parts` as one parquet file, one row group per part, holding one part at a time.

    Returns the number of rows. Same parts in the same order give the same bytes."""
    rows = 0
    with atomic_file(path) as f, pq.ParquetWriter(f, schema, compression="zstd") as writer:
        for part in parts:
            writer.write_table(part.select(schema.names).cast(schema))
            rows += part.num_rows
    return rows


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read one parquet file into an arrow table."""
    return pq.read_table(path)
