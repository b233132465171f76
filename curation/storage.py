"""Storage: local paths and fsspec URLs (`s3://`, `gs://`, `file://`) behind a few plain functions, and a run's
output folder as one object.

The only module that knows fsspec, and the only one that tells a local path from a URL. A clip SOURCE and the
run's OUT (docs/scale.md) go through it, so every function takes a location string, local or URL, and local
paths keep the plain, fastest calls. Where a run starts, OUT is opened once (`run_folder`): a `RunFolder` that
every stage is handed, which reads and commits OUT's files the same way whether OUT is a local folder or an
object store (`RunFolder.workspace`: a local folder laid out like OUT, where decoders, ffmpeg and training work).
Credentials and endpoints come the standard way (for S3: the AWS environment variables and config files,
including `AWS_ENDPOINT_URL` for S3-compatible servers); nothing here takes a flag for them.
"""

from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from manifests import layout
from manifests.io import atomic_file, atomic_write_bytes
from manifests.layout import RunLayout

join = layout.join  # `base/name/...`, a local path or a URL alike
parent = layout.parent

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


def local_path(location: str) -> str | None:
    """`location` on this machine's file system (`file://` dropped), or None for an object-store URL."""
    return None if is_url(location) else _local(location)


def unreadable(locations: Iterable[str]) -> list[str]:
    """Those of `locations` on this machine that this process may not read (an object store answers for its
    objects when they are read)."""
    return [location for location in locations if not is_url(location) and not readable(location)]


def makedirs(folder: str) -> None:
    """Create a local folder and its parents (an object store has no folders: nothing to do)."""
    if not is_url(folder):
        Path(_local(folder)).mkdir(parents=True, exist_ok=True)


def load_source(location: str) -> str | BinaryIO:
    """What a reader taking a path or a file object (`np.load`, `pd.read_parquet`) is given: a local path, or an
    object's bytes in memory (read whole in one request)."""
    return _local(location) if not is_url(location) else io.BytesIO(read_bytes(location))


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


def write_stream(src: BinaryIO, location: str, block: int = 1 << 20) -> None:
    """`src`'s bytes to `location`, seen there only once complete: a temp file renamed into place (a cut read
    leaves nothing), or a local temp file committed by one upload."""
    if is_url(location):
        with atomic_output(location) as out:
            shutil.copyfileobj(src, out, block)
        return
    dst = Path(_local(location))
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, block)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def link_into_place(src: str | Path, dst: Path,
                    fallback: Callable[[str | Path, Path], object] = shutil.copyfile) -> None:
    """`dst` becomes `src` at once: a hard link, or `fallback(src, tmp)` where one cannot be made (another file
    system), under a temp name renamed over `dst`, so `dst` is never half there."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        fallback(src, tmp)
    os.replace(tmp, dst)


def _symlink(src: str | Path, link: Path) -> None:
    os.symlink(os.path.abspath(src), link)


def place_file(src: str, location: str) -> None:
    """A local file becomes `location` without a copy where one can be avoided: a hard link (a symlink across
    file systems) on this machine, one upload to an object store."""
    if is_url(location):
        put_file(src, location)
    else:
        link_into_place(src, Path(_local(location)), _symlink)


# ---------------------------------------------------------------- a run's output folder


def run_folder(out: str | os.PathLike | RunFolder) -> RunFolder:
    """OUT, opened where a run starts: a folder on this machine, worked on in place, or an object store, worked on
    through scratch folders. The one place where the two are told apart (a RunFolder is returned as it is)."""
    if isinstance(out, RunFolder):
        return out
    location = resolve(out)
    return (StoreFolder if is_url(location) else LocalFolder)(RunLayout(location))


@dataclass(frozen=True)
class RunFolder:
    """A run's OUT: where its files are (`layout`) and how a process works on them (`workspace`). Picklable, so
    Dask tasks receive it; `run_folder` makes one."""

    layout: RunLayout

    def client_only(self, path: str | None) -> bool:
        """Whether `path` is a file on this process's disk that the workers may not see."""
        raise NotImplementedError

    def share(self, path: str | None, target: str) -> str | None:
        """Where every worker reads `path`: the path itself, or for a file only this process sees, `target` in OUT
        (uploaded once: an object already there is reused)."""
        if not self.client_only(path):
            return path
        if not exists(target):
            put_file(path, target)
        return target

    def workspace(self, prefix: str = "s2s-") -> contextlib.AbstractContextManager[Workspace]:
        """A local folder laid out like OUT for the length of a `with` block (`prefix`: a scratch folder's name)."""
        raise NotImplementedError

    def remove_temp_files(self, folders: Iterable[str]) -> None:
        """Remove the temp files a killed run left in `folders` (finished files are only ever renamed into place)."""


class LocalFolder(RunFolder):
    """OUT on this machine's disk, which the workers share: worked on in place."""

    def client_only(self, path: str | None) -> bool:
        return False

    @contextlib.contextmanager
    def workspace(self, prefix: str = "s2s-") -> Iterator[Workspace]:
        yield Workspace(self.layout, self.layout)

    def remove_temp_files(self, folders: Iterable[str]) -> None:
        for folder in map(Path, folders):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp*"):
                    tmp.unlink(missing_ok=True)


class StoreFolder(RunFolder):
    """OUT on an object store: a process works in a scratch folder of its own, downloading what it reads and
    committing what it makes by one upload per file. The store holds no temp objects (an upload is seen only
    once complete)."""

    def client_only(self, path: str | None) -> bool:
        return path is not None and not is_url(path) and os.path.isfile(path)

    @contextlib.contextmanager
    def workspace(self, prefix: str = "s2s-") -> Iterator[Workspace]:
        with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
            yield ScratchWorkspace(self.layout, RunLayout(scratch))


@dataclass(frozen=True)
class Workspace:
    """A local folder laid out like OUT (`layout`: local paths; `out`: OUT's) where decoders, ffmpeg and training
    read and write OUT's files. This one is OUT itself (`in_place`): nothing is downloaded or uploaded."""

    out: RunLayout
    layout: RunLayout
    in_place = True  # OUT's files are all here already

    def local(self, location: str) -> str:
        """The workspace's copy of the OUT location `location`."""
        return location

    def pull(self, location: str) -> str:
        """The workspace's copy of `location`, downloaded first when OUT has it."""
        return self.local(location)

    def commit(self, location: str) -> None:
        """Make the workspace's copy of `location` OUT's."""

    def bring_clip(self, clip_id: str, path: str | None) -> tuple[str | None, frozenset[str]]:
        """Make a clip's earlier fetch (`RunLayout.clip_files`) and its `path`, when that is a URL, local. Returns the
        local path to read instead of `path`, and the clip's files OUT had already (`commit_clip` leaves them)."""
        return path, frozenset()

    def commit_clip(self, clip_id: str, present: frozenset[str] = frozenset()) -> None:
        """Commit what the clip's fetch and scoring made here (beside `present`), then free the space."""

    @contextlib.contextmanager
    def clip(self, clip_id: str, path: str | None) -> Iterator[str | None]:
        """`bring_clip` for the block, `commit_clip` after it (also when it fails)."""
        local, present = self.bring_clip(clip_id, path)
        try:
            yield local
        finally:
            self.commit_clip(clip_id, present)


class ScratchWorkspace(Workspace):
    """A scratch folder of OUT on an object store: files are downloaded into it and uploaded from it."""

    in_place = False

    def local(self, location: str) -> str:
        if not location.startswith(self.out.out + "/"):
            raise ValueError(f"{location} is not in {self.out.out}")
        return join(self.layout.out, location[len(self.out.out) + 1:])

    def pull(self, location: str) -> str:
        local = self.local(location)
        if exists(location):
            get_file(location, local)
        return local

    def commit(self, location: str) -> None:
        put_file(self.local(location), location)

    def bring_clip(self, clip_id: str, path: str | None) -> tuple[str | None, frozenset[str]]:
        present = frozenset(location for location in self.out.clip_files(clip_id) if exists(location))
        for location in present:
            get_file(location, self.local(location))
        if path is None or not is_url(path):
            return path, present
        if path == self.out.raw_clip(clip_id):  # the demo world's clips are their own raw clips
            return self.layout.raw_clip(clip_id), present
        local = self.layout.input_clip(clip_id, Path(path).suffix)
        get_file(path, local)
        return local, present

    def commit_clip(self, clip_id: str, present: frozenset[str] = frozenset()) -> None:
        for location in self.out.clip_files(clip_id):
            if os.path.isfile(self.local(location)) and location not in present:
                put_file(self.local(location), location)
        for location in self.layout.clip_files(clip_id):
            Path(location).unlink(missing_ok=True)
        for leftover in Path(self.layout.inputs).glob(f"{clip_id}.*"):
            leftover.unlink()
