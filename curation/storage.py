"""Storage: local paths and fsspec URLs (`s3://`, `gs://`, `file://`) behind a few plain functions.

The only module that knows fsspec. A clip SOURCE and the run's OUT (docs/scale.md) go through it, so every
function takes a location string, local or URL, and local paths keep the plain, fastest calls.
Credentials and endpoints come the standard way (for S3: the AWS environment variables and config files,
including `AWS_ENDPOINT_URL` for S3-compatible servers); nothing here takes a flag for them.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from manifests.io import atomic_file, atomic_write_bytes

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


def resolve(location: str | os.PathLike) -> str:
    """An absolute local path (`file://` dropped) or the URL itself, without a trailing slash."""
    location = str(location)
    return location.rstrip("/") if is_url(location) else str(Path(_local(location)).resolve())


def join(base: str, *names: str) -> str:
    """`base/name/...` for a local path or a URL alike."""
    return "/".join([base.rstrip("/"), *names])


def parent(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


@contextlib.contextmanager
def atomic_output(location: str) -> Iterator[BinaryIO]:
    """A local binary file that becomes `location` only when the block ends without error.

    Local: temp file beside it, fsync, rename. Object store: a scratch temp file uploaded by one `put` (a single
    PUT, or a multipart upload that the store shows only once completed), so no half-written object ever
    carries the final name; on error nothing is uploaded."""
    if not is_url(location):
        with atomic_file(_local(location)) as f:
            yield f
        return
    fd, tmp = tempfile.mkstemp(prefix=".s2s-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        put_file(tmp, location)
    finally:
        os.unlink(tmp)


def put_file(local: str | os.PathLike, location: str) -> None:
    """Copy a local file to `location` whole (local: temp file + rename; object store: one upload)."""
    if not is_url(location):
        with open(local, "rb") as src, atomic_file(_local(location)) as dst:
            shutil.copyfileobj(src, dst, READ_BLOCK)
        return
    fs, path = _fs(location)
    fs.put_file(str(local), path)


def get_file(location: str, local: str | os.PathLike) -> None:
    """Copy `location` to a local file (temp file + rename, so a broken download never looks complete)."""
    with open_read(location) as src, atomic_file(local) as dst:
        shutil.copyfileobj(src, dst, READ_BLOCK)


def listdir(folder: str) -> list[str]:
    """Names of the files directly in `folder`, sorted ([] when it does not exist)."""
    if not is_url(folder):
        root = _local(folder)
        return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n))) \
            if os.path.isdir(root) else []
    fs, path = _fs(folder)
    if not fs.exists(path):
        return []
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True) if fs.isfile(p))
    fs.invalidate_cache(path)  # a cached listing would hide objects other processes write later
    return names


def remove(location: str) -> None:
    """Delete a file or object (nothing when it is already gone)."""
    if not is_url(location):
        Path(_local(location)).unlink(missing_ok=True)
        return
    fs, path = _fs(location)
    if fs.exists(path):
        fs.rm_file(path)


def local_copy(location: str) -> str:
    """A local path holding `location`: the path itself, or for a URL a copy downloaded once per machine (under
    the temp folder, keyed by the URL and the object's identity) for libraries that need a file."""
    if not is_url(location):
        return _local(location)
    key = hashlib.sha256(f"{location}\n{identity(location)}".encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "s2s-copies" / key / location.rsplit("/", 1)[-1]
    if not path.is_file():
        get_file(location, path)
    return str(path)
