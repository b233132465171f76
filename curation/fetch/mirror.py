"""Source stage: clips from a local or bucket mirror of VGGSound (a folder of clips, or tar / tar.gz archives).

The community mirrors ship `<ytid>_<start_seconds:06d>.mp4` members (10-s clips, h264 + AAC) in ~17-GB
archives. They are never extracted whole (a pass of its own and room for a second copy): each archive is read
once, as a stream, by one Dask task (`extract_archive`); members no row asks for are skipped, and each wanted
member's bytes become the clip's fetched file `OUT/raw/<clip_id>.mp4` (atomically: temp file + rename, or one
upload when OUT is on an object store), from where the normal per-clip path decodes and scores it. Loose clips
in a folder are hard-linked into a local `raw/` (symlinked across file systems), never copied; with OUT on an
object store the client uploads them.

Each archive pass leaves a listing in `OUT/raw/source_index/`, so a rerun knows which archive holds which clip
and reads no archive whose clips are all in `raw/` already. A damaged archive (cut short, corrupt compressed
data, a broken member header) ends its pass early: the clips it could no longer reach fail as
`archive_damaged`, all others go on. Plain functions, no Dask: `pipeline` maps `extract_archive` over archives.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage
from curation.clip_cache import ClipJob, ClipSummary
from curation.errors import SourceError
from curation.fetch.clip import raw_path
from manifests.ids import mirror_key
from manifests.layout import clip_in, raw_clip_name, source_index_in

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
COPY_CHUNK = 1 << 20
_MEMBER_RE = re.compile(r"^([A-Za-z0-9_-]{11})_(\d{1,7})\.mp4$", re.IGNORECASE)
_INDEX_SCHEMA = pa.schema([pa.field("member", pa.string(), nullable=False), pa.field("size", pa.int64())])


@dataclass(frozen=True)
class Source:
    """What SOURCE holds: loose clips by member key, and archives (local paths or URLs, sorted)."""

    spec: str
    clips: dict[str, str]
    archives: tuple[str, ...]


@dataclass(frozen=True)
class ArchiveIndex:
    """One archive's listing from its last complete or damaged pass."""

    keys: frozenset[str]
    damaged: str | None  # why the pass ended early; None when it read to the end-of-archive marker


def member_key(name: str) -> str | None:
    """`<ytid>_<start:06d>` of a mirror file or member name (any folder, any zero padding), else None."""
    match = _MEMBER_RE.match(name.replace("\\", "/").rsplit("/", 1)[-1])
    return f"{match[1]}_{int(match[2]):06d}" if match else None


def row_key(job: ClipJob) -> str | None:
    """The member key a clip list row asks for (VGGSound rows start on whole seconds)."""
    return mirror_key(job.ytid, job.start_s)


def is_archive(location: str) -> bool:
    return location.lower().endswith(ARCHIVE_SUFFIXES)


def _listing(spec: str) -> list[str]:
    if storage.has_magic(spec):
        found = storage.glob(spec)
        if not found:
            raise SourceError(f"SOURCE {spec}: matches no file")
        return found
    if storage.isdir(spec):
        if not storage.readable(spec):
            raise SourceError(f"SOURCE {spec}: the folder cannot be read (permissions)")
        return storage.find(spec)
    if storage.isfile(spec):
        return [spec]
    raise SourceError(f"SOURCE {spec}: no such file or folder")


def resolve_source(spec: str) -> Source:
    """SOURCE = a folder (searched recursively), an archive, or a glob of archives; SourceError when unusable."""
    try:
        found = _listing(spec)
    except SourceError:
        raise
    except Exception as exc:  # the store's own words (no credentials, no bucket, refused) are the message
        raise SourceError(f"SOURCE {spec}: cannot be listed: {type(exc).__name__}: {exc}") from None
    archives = tuple(f for f in found if is_archive(f))
    clips = {key: f for f in found if not is_archive(f) and (key := member_key(f))}
    if not archives and not clips:
        raise SourceError(f"SOURCE {spec}: holds no .tar/.tar.gz archives and no <ytid>_<start:06d>.mp4 clips")
    unreadable = storage.unreadable(archives)
    if unreadable:
        raise SourceError(f"SOURCE {spec}: cannot read {unreadable[0]} (permissions)"
                          + (f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""))
    if any(storage.local_path(c) is None for c in clips.values()):
        raise SourceError(f"SOURCE {spec}: loose clips in an object store are not supported; pack them in archives")
    return Source(spec, clips, archives)


# ---------------------------------------------------------------- the index of archive listings


def _index_path(index_dir: str | Path, archive: str) -> str:
    return storage.join(str(index_dir), f"{hashlib.sha1(archive.encode()).hexdigest()[:16]}.parquet")


def _write_index(index_dir: str | Path, archive: str, identity: str, members: list[tuple[str, int]],
                 damaged: str | None) -> None:
    meta = {"archive": archive, "identity": identity, "damaged": damaged or ""}
    table = pa.table({"member": [m for m, _ in members], "size": [s for _, s in members]},
                     schema=_INDEX_SCHEMA.with_metadata(meta))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(_index_path(index_dir, archive), sink.getvalue().to_pybytes())


def read_indexes(index_dir: str | Path, archives: tuple[str, ...]) -> dict[str, ArchiveIndex]:
    """The listings of `archives` still valid: an archive replaced since its pass (new size, time or ETag) has none."""
    found = {}
    for archive in archives:
        path = _index_path(index_dir, archive)
        if not storage.exists(path):
            continue
        table = pq.read_table(pa.BufferReader(storage.read_bytes(path)))
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get("archive") != archive or meta.get("identity") != storage.identity(archive):
            continue
        keys = frozenset(k for m in table.column("member").to_pylist() if (k := member_key(m)))
        found[archive] = ArchiveIndex(keys, meta["damaged"] or None)
    return found


# ---------------------------------------------------------------- one archive pass (a Dask task)


@dataclass(frozen=True)
class ArchivePass:
    """What one pass over an archive did (small: it travels back to the client)."""

    archive: str
    members: int
    extracted: int
    damaged: str | None


def raw_file(raw_dir: str | Path, clip_id: str) -> str:
    """`raw_dir/<clip_id>.mp4`, a local path or a URL (the id checked as `fetch.raw_path` checks it)."""
    raw_path(Path(), clip_id)  # refuses an unsafe id
    return clip_in(raw_dir, clip_id)


def raw_clips(raw_dir: str | Path) -> set[str]:
    """The clip ids that have a raw file in `raw_dir`: one listing, not a request per clip."""
    suffix = raw_clip_name("")
    return {name.removesuffix(suffix) for name in storage.listdir(str(raw_dir)) if name.endswith(suffix)}


def _end_problem(tar: tarfile.TarFile) -> str | None:
    """Why the member loop ended, if not at the end-of-archive marker. tarfile ends the loop silently on a
    broken header or a stream cut at a member boundary; only what follows tells those from a proper end
    (the rest of a zero block, then zero padding)."""
    rest = 0
    for chunk in iter(lambda: tar.fileobj.read(COPY_CHUNK), b""):
        if chunk.strip(b"\0"):
            return f"a broken member header at byte {tar.offset} of the tar stream"
        rest += len(chunk)
    return None if rest else "the archive ends without its end-of-archive marker (cut short)"


def _open_tar(f) -> tarfile.TarFile:
    """tarfile over an archive's bytes, read strictly forward. gzip goes through GzipFile, which checks the
    stream's CRC and took ~20 % less CPU than tarfile's own stream mode (that re-slices its buffer on every read)."""
    gzipped = f.read(2) == b"\x1f\x8b"
    f.seek(0)
    return tarfile.open(fileobj=gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f, mode="r:")


def extract_archive(archive: str, wanted: dict[str, str], raw_dir: str, index_dir: str) -> ArchivePass:
    """Read `archive` once, as a stream: each member whose key is in `wanted` ({member key: clip_id}) and has no
    raw file yet becomes `raw_dir/<clip_id>.mp4` (a folder or a URL). Damage ends the pass, not the task; the
    listing (as far as it got) is written to `index_dir` either way. Network errors propagate (the task is
    retried)."""
    members, extracted, damaged = [], 0, None
    identity = storage.identity(archive)
    with storage.open_read(archive) as f:
        try:
            with _open_tar(f) as tar:
                for member in tar:
                    tar.members = []  # tarfile keeps every header otherwise: memory would grow with the archive
                    if not member.isfile():
                        continue
                    clip_id = wanted.get(member_key(member.name) or "")
                    if clip_id is not None and not storage.exists(raw_file(raw_dir, clip_id)):
                        # seen under its name only once complete: a cut read leaves nothing
                        storage.write_stream(tar.extractfile(member), raw_file(raw_dir, clip_id), COPY_CHUNK)
                        extracted += 1
                    members.append((member.name, member.size))  # listed once whole: a cut one is not "held"
                damaged = _end_problem(tar)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:  # cut, corrupt, CRC, bad header
            damaged = f"{exc} after {len(members)} members"
    _write_index(index_dir, archive, identity, members, damaged)
    return ArchivePass(archive, len(members), extracted, damaged)


# ---------------------------------------------------------------- the client's side: plan, then resolve


@dataclass(frozen=True)
class SourcePlan:
    """The archives this run must read and the member keys it wants from them ({key: clip_id})."""

    source: Source
    archives: tuple[str, ...]
    wanted: dict[str, str]
    skipped: int  # archives not read: their listed clips are all in raw/ already


def plan_source(source: Source, jobs: list[ClipJob], raw: str | Path) -> SourcePlan:
    """Bring the loose clips into `raw` (a local folder: linked; an object store: uploaded by this process);
    choose the archives to read: every one without a valid listing, and every one listing a clip that has no raw
    file yet (a rerun reads none whose clips are all there)."""
    raw = str(raw)
    storage.makedirs(raw)
    present, wanted = raw_clips(raw), {}
    for job in jobs:
        key = row_key(job)
        if key is None or job.clip_id in present:
            continue
        if key in source.clips:
            storage.place_file(source.clips[key], raw_file(raw, job.clip_id))  # a loose clip is never copied
        else:
            wanted[key] = job.clip_id
    indexes = read_indexes(source_index_in(raw), source.archives)
    chosen = tuple(a for a in source.archives
                   if wanted and (a not in indexes or not indexes[a].keys.isdisjoint(wanted)))
    return SourcePlan(source, chosen, wanted, skipped=len(source.archives) - len(chosen))


def _unreached(job: ClipJob, indexes: dict[str, ArchiveIndex], lost: dict[str, str], spec: str) -> ClipSummary:
    """Why a clip has no raw file after the archive passes, as a failed summary (recomputed on every run)."""
    key = row_key(job)
    if key is None:
        return ClipSummary(job.clip_id, scored=False, error_kind="missing_source",
                           error="the row has no YouTube id and whole-second start to name a mirror file")
    holder = next((a for a, i in indexes.items() if key in i.keys), None)  # listed = read whole
    damaged = {a: i.damaged for a, i in indexes.items() if i.damaged}
    if lost and (holder is None or holder in lost):
        archive, why = next(iter(lost.items()))
        return ClipSummary(job.clip_id, scored=False, error_kind="worker_lost",
                           error=f"{len(lost)} archive(s) could not be read, e.g. {archive}: {why}")
    if holder is None and damaged:
        archive = next(iter(damaged))
        return ClipSummary(job.clip_id, scored=False, error_kind="archive_damaged",
                           error=f"{key}.mp4 is in no intact part of SOURCE; {archive} (one of {len(damaged)} "
                                 f"damaged) may hold it in the part it lost: {damaged[archive]}")
    where = f"{holder} lists it, but its file left raw/ during the run" if holder else \
        f"it is in no archive or folder of SOURCE {spec}"
    return ClipSummary(job.clip_id, scored=False, error_kind="missing_source", error=f"{key}.mp4: {where}")


def source_jobs(plan: SourcePlan, jobs: list[ClipJob], raw: str | Path,
                lost: dict[str, str]) -> tuple[list[ClipJob], list[ClipSummary]]:
    """After the archive passes: a job reading `raw/<clip_id>.mp4` from its start for each clip that has its
    file, a failed summary for each that has none. `lost`: archives whose task died, with the reason."""
    raw = str(raw)
    indexes = read_indexes(source_index_in(raw), plan.source.archives)
    present, ready, failed = raw_clips(raw), [], []
    for job in jobs:
        if job.clip_id in present:  # a mirror file is the clip itself: it starts at 0 in the file
            ready.append(ClipJob(job.clip_id, raw_file(raw, job.clip_id), None, 0.0, job.end_s - job.start_s,
                                 job.ytid))
        else:
            failed.append(_unreached(job, indexes, lost, plan.source.spec))
    return ready, failed
