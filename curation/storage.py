"""Storage: local paths and fsspec URLs (`s3://`, `gs://`, `file://`) behind a few plain functions.

The only module that knows fsspec. A clip SOURCE goes through it today; OUT is meant to follow (issue 14), so
every function takes a location string, local or URL, and local paths keep the plain, fastest calls.
Credentials and endpoints come the standard way (for S3: the AWS environment variables and config files,
including `AWS_ENDPOINT_URL` for S3-compatible servers); nothing here takes a flag for them.
"""

from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import BinaryIO

from manifests.io import atomic_write_bytes

READ_BLOCK = 8 << 20  # bytes per remote read: large enough that one request's latency is noise


def is_url(location: str) -> bool:
    """True for `scheme://...` other than `file://` (those are read through fsspec)."""
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def _fs(location: str):
    import fsspec

    return fsspec.core.url_to_fs(location)  # (filesystem, path without the protocol)


def _url(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def has_magic(location: str) -> bool:
    """True when `location` is a glob pattern (`*`, `?`, `[`)."""
    return _glob.has_magic(location)


def glob(pattern: str) -> list[str]:
    """Files matching `pattern`, sorted (a remote pattern gives URLs of the same scheme)."""
    if not is_url(pattern):
        return sorted(p for p in _glob.glob(_local(pattern)) if os.path.isfile(p))
    fs, path = _fs(pattern)
    return sorted(_url(fs, p) for p in fs.glob(path) if fs.isfile(p))


def isdir(location: str) -> bool:
    if not is_url(location):
        return os.path.isdir(_local(location))
    fs, path = _fs(location)
    return fs.isdir(path)


def isfile(location: str) -> bool:
    if not is_url(location):
        return os.path.isfile(_local(location))
    fs, path = _fs(location)
    return fs.isfile(path)


def readable(location: str) -> bool:
    """Whether this process may read `location` (remote: whether the store lets it list or read it)."""
    if not is_url(location):
        return os.access(_local(location), os.R_OK | (os.X_OK if os.path.isdir(_local(location)) else 0))
    return isfile(location) or isdir(location)


def find(folder: str) -> list[str]:
    """Every file under `folder`, recursively, sorted."""
    if not is_url(folder):
        root = _local(folder)
        return sorted(os.path.join(d, name) for d, _, names in os.walk(root) for name in names)
    fs, path = _fs(folder)
    return sorted(_url(fs, p) for p in fs.find(path))


def identity(location: str) -> str:
    """Size plus modification time (local) or ETag (object store): changes when the file is replaced."""
    if not is_url(location):
        st = os.stat(_local(location))
        return f"{st.st_size}:{st.st_mtime_ns}"
    fs, path = _fs(location)
    info = fs.info(path)
    return f"{info['size']}:{info.get('ETag') or info.get('mtime') or info.get('LastModified')}"


def open_read(location: str) -> BinaryIO:
    """A binary file object reading `location` sequentially (remote: in READ_BLOCK requests)."""
    if not is_url(location):
        return open(_local(location), "rb")  # noqa: SIM115 - the caller closes it
    fs, path = _fs(location)
    return fs.open(path, "rb", block_size=READ_BLOCK, cache_type="readahead")


def read_bytes(location: str) -> bytes:
    if not is_url(location):
        return Path(_local(location)).read_bytes()
    fs, path = _fs(location)
    return fs.cat_file(path)


def write_bytes(location: str, data: bytes) -> None:
    """Write `data` whole under its final name: temp file + rename locally; one PUT on an object store,
    which makes the object visible only once complete."""
    if not is_url(location):
        atomic_write_bytes(_local(location), data)
        return
    fs, path = _fs(location)
    fs.pipe_file(path, data)


def exists(location: str) -> bool:
    if not is_url(location):
        return os.path.exists(_local(location))
    fs, path = _fs(location)
    return fs.exists(path)
