"""Fetch stage: bring a clip's source into `OUT/raw/<clip_id>.mp4`, re-encoding only what must be.

Local files that are already h264 mp4/mov with audio are hard-linked (or copied) untouched: no re-encode,
the cost that dominates other tools. A row's own http(s) URL gets the same treatment (`curation.fetch.http`):
a host that can seek has only the clip's section read, by stream copy from the keyframe before the start; one
that cannot is read whole, once, and a short source is kept as it is. Such files keep their source's timeline,
so the exact [start, end) is applied at decode time; the offset is recorded beside the file
(`raw/<clip_id>.fetch.json`). Everything else (other codecs, taller video, YouTube's separate streams chosen by
yt-dlp, `curation.fetch.youtube`) goes through one standardisation: a single ffmpeg run cuts [start, end), encodes
h264 (short side <= fetch.max_height) and AAC at the source's sample rate, and ffprobe checks the result before
it is renamed into place. A fetched clip is reused by every later run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curation.clip_cache import ClipJob
from curation.config import FetchConfig
from curation.decode import MediaInfo, probe_media
from curation.errors import ClipError
from curation.fetch.errors import from_ffmpeg, network_trouble, source_duration_s
from curation.fetch.http import cookie_headers, cookie_jar, download, open_source, read_whole, scratch_path
from curation.fetch.youtube import MediaInput, clip_url, extract, host_of
from curation.storage import link_into_place
from manifests.ids import is_safe_clip_id, is_youtube_clip_id
from manifests.io import atomic_write_bytes
from manifests.layout import FETCH_RECORD_SUFFIX, RunLayout, raw_clip_name

FFPROBE_TIMEOUT_S = 60
DURATION_TOLERANCE_S = 0.3  # frame and AAC-frame rounding of a cut, well under one scoring window
MIN_SAMPLE_RATE = 16000
DEFAULT_FETCH = FetchConfig()
_NET_PROTOCOLS = "http,https,tcp,tls,crypto,httpproxy"  # never file:, pipe:, concat: from a hostile playlist
SECTION_GUARD_S = 0.2  # a copied section starts at the keyframe before start - this: AAC needs a frame of pre-roll
TAIL_GUARD_S = 0.25  # ... and ends this much after `end`, so the last frame and audio sample are inside
KEEP_WHOLE_S = 30.0  # a source at most this much longer than its clip is kept whole: a copy would save little
COPY_AUDIO = ("aac", "mp3")  # audio an mp4 holds and every decoder here reads, so it can be kept
# Failures of a ranged read that reading the source whole may cure (a host that claims ranges but cannot seek).
SEEK_FAILURES = frozenset({"network", "not_media", "truncated", "ffmpeg_error"})


@dataclass(frozen=True)
class Fetched:
    """Where the clip lies, where inside that file it starts (0 for a cut clip), and its headers if read."""

    path: Path
    offset_s: float
    info: MediaInfo | None = None


class FetchGate:
    """Admission of network fetches. This one admits everything; the pipeline passes one that caps
    concurrent fetches per host across the Dask cluster, paces them, and carries the global stop."""

    def stopped(self) -> bool:
        return False

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        yield


def raw_path(raw_dir: Path, clip_id: str) -> Path:
    """`raw_dir/<clip_id>.mp4`, refusing any id that could name a path outside `raw_dir`.

    YouTube clip ids may start with '-' (so do YouTube ids); the path is only ever used whole and absolute."""
    if not (is_safe_clip_id(clip_id) or is_youtube_clip_id(clip_id)):
        raise ClipError("invalid_id", f"unsafe clip id {clip_id!r}")
    return raw_dir / raw_clip_name(clip_id)


def _scale_filter(max_side: int) -> str:
    """Cap the short side at `max_side` (even sizes for yuv420p); smaller videos keep their size."""
    short = f"trunc(min(%s,{max_side})/2)*2"
    return (f"scale=w='if(gt(iw,ih),-2,{short % 'iw'})':h='if(gt(iw,ih),{short % 'ih'},-2)',"
            "setsar=1")


def _net_args(source: MediaInput, cfg: FetchConfig) -> list[str]:
    """ffmpeg/ffprobe options for one remote input: time limit, allowed protocols, proxy, headers."""
    args = ["-rw_timeout", str(int(cfg.socket_timeout_s * 1e6)), "-protocol_whitelist", _NET_PROTOCOLS]
    if cfg.proxy:
        args += ["-http_proxy", cfg.proxy]
    if source.headers:
        args += ["-headers", "".join(f"{k}: {v}\r\n" for k, v in source.headers.items())]
    return args


def _input_args(source: MediaInput | Path, seek_s: float, cfg: FetchConfig) -> list[str]:
    if isinstance(source, Path):
        return ["-ss", f"{seek_s:.3f}", "-i", f"file:{source}"]
    return _net_args(source, cfg) + ["-ss", f"{seek_s:.3f}", "-i", source.url]


def probe_remote(source: MediaInput, cfg: FetchConfig) -> MediaInfo:
    """A remote source's streams, as ffprobe reads its headers through HTTP range requests (nothing decoded)."""
    args = ["ffprobe", "-hide_banner", "-loglevel", "level+error", *_net_args(source, cfg), "-show_entries",
            "stream=codec_type,codec_name,width,height,sample_rate:format=duration,start_time", "-of", "json",
            "-i", source.url]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=cfg.timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise ClipError("timeout", f"ffprobe took longer than fetch.timeout_s = {cfg.timeout_s:g} s",
                        retriable=True) from None
    trouble = from_ffmpeg(proc.stderr, proc.returncode, remote=True) if proc.returncode else (
        network_trouble(proc.stderr))
    if trouble is not None:  # ffprobe exits 0 after a seek that landed elsewhere ("partial file")
        raise trouble
    data = json.loads(proc.stdout or "{}")
    streams, fmt = data.get("streams", []), data.get("format", {})
    video = next((st for st in streams if st.get("codec_type") == "video"), None)
    audio = next((st for st in streams if st.get("codec_type") == "audio"), None)
    if video is None:
        raise ClipError("no_video", "the source has no video stream")
    if audio is None:
        raise ClipError("no_audio", "the source has no audio stream")
    end = float(fmt.get("start_time") or 0.0) + float(fmt.get("duration") or 0.0)
    return MediaInfo(width=int(video.get("width") or 0), height=int(video.get("height") or 0),
                     video_codec=video.get("codec_name") or "", duration_s=end,
                     audio_codec=audio.get("codec_name") or "", sample_rate=int(audio.get("sample_rate") or 0))


def _ffmpeg_args(sources: list[MediaInput] | list[Path], seek_s: float, cfg: FetchConfig) -> list[str]:
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", "-y"]
    for source in sources:
        args += _input_args(source, seek_s, cfg)
    return args


def _run_ffmpeg(args: list[str], tmp: Path, remote: bool, cfg: FetchConfig) -> str:
    """Run ffmpeg writing `tmp`; its stderr, or a typed ClipError (and no `tmp`) when it failed."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=cfg.timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise ClipError("timeout", f"ffmpeg took longer than fetch.timeout_s = {cfg.timeout_s:g} s",
                        retriable=True) from None
    trouble = from_ffmpeg(proc.stderr, proc.returncode, remote) if proc.returncode else (
        network_trouble(proc.stderr) if remote else None)
    if trouble is not None:  # ffmpeg exits 0 on a body cut short, keeping what arrived: not a clip
        tmp.unlink(missing_ok=True)
        raise trouble
    return proc.stderr


def standardise(sources: list[MediaInput] | list[Path], dst: Path, start_s: float, duration_s: float,
                cfg: FetchConfig) -> float | None:
    """One ffmpeg run: [start, start + duration) of the source(s) -> `dst` (h264 + AAC mp4), atomically.

    Decoding starts `margin_s` early (pre-roll), the cut itself is exact. With two sources the first gives
    the video, the second the audio. Returns the source duration ffmpeg read from the headers, if any."""
    seek = max(0.0, start_s - cfg.margin_s)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.mp4")
    args = _ffmpeg_args(sources, seek, cfg) + [
        "-ss", f"{start_s - seek:.3f}", "-t", f"{duration_s:.3f}", "-map", "0:v:0", "-map", f"{len(sources) - 1}:a:0",
        "-map_metadata", "-1", "-vf", _scale_filter(cfg.max_height), "-c:v", "libx264", "-preset", "veryfast",
        "-crf", "20", "-pix_fmt", "yuv420p", "-threads", "1", "-c:a", "aac", "-b:a", "128k",
        "-movflags", "+faststart", "-f", "mp4", str(tmp)]
    stderr = _run_ffmpeg(args, tmp, not isinstance(sources[0], Path), cfg)
    os.replace(tmp, dst)
    return source_duration_s(stderr)


def copy_section(source: MediaInput | Path, tmp: Path, start_s: float, end_s: float, cfg: FetchConfig) -> MediaInfo:
    """Stream copy (no re-encode) of [start, end) from the keyframe before it into `tmp`, keeping the source's
    timestamps (`-copyts`), so the clip still starts at `start_s` inside the copy. Returns the copy's headers."""
    args = _ffmpeg_args([source], max(0.0, start_s - SECTION_GUARD_S), cfg) + [
        "-copyts", "-to", f"{end_s + TAIL_GUARD_S:.3f}", "-map", "0:v:0", "-map", "0:a:0", "-map_metadata", "-1",
        "-c", "copy", "-f", "mp4", str(tmp)]
    _run_ffmpeg(args, tmp, not isinstance(source, Path), cfg)
    try:
        return probe_media(tmp)
    except ClipError:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Probe:
    video_codec: str | None
    sample_rate: int | None
    duration_s: float


def probe_output(path: Path) -> Probe:
    """Streams and duration of a standardised clip, as ffprobe reads them."""
    args = ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,sample_rate:format=duration",
            "-of", "json", f"file:{path}"]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=FFPROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ClipError("ffmpeg_error", f"ffprobe took longer than {FFPROBE_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise ClipError("ffmpeg_error", f"ffprobe cannot read the standardised clip: {proc.stderr.strip()[-300:]}")
    data = json.loads(proc.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), {})
    audio = next((s for s in streams if s.get("codec_type") == "audio"), {})
    return Probe(video.get("codec_name"), int(audio["sample_rate"]) if audio.get("sample_rate") else None,
                 float(data.get("format", {}).get("duration") or 0.0))


def verify(path: Path, start_s: float, end_s: float, source_s: float | None) -> None:
    """Refuse a standardised clip that is not h264 + audio >= 16 kHz of about the asked duration
    (or of what the source has after `start_s`, when it is shorter); the file is removed then."""
    want = end_s - start_s if source_s is None else min(end_s, source_s) - start_s
    try:
        if want <= 0:
            raise ClipError("invalid_time", f"the source is {source_s:.2f} s long; the clip starts at {start_s:g} s")
        got = probe_output(path)
        if got.video_codec != "h264":
            raise ClipError("no_video" if got.video_codec is None else "ffmpeg_error",
                            f"standardised clip has video codec {got.video_codec!r}, not h264")
        if got.sample_rate is None:
            raise ClipError("no_audio", "standardised clip has no audio stream")
        if got.sample_rate < MIN_SAMPLE_RATE:
            raise ClipError("low_audio_rate", f"source audio is sampled at {got.sample_rate} Hz (< {MIN_SAMPLE_RATE})")
        if abs(got.duration_s - want) > DURATION_TOLERANCE_S:
            raise ClipError("truncated", f"standardised clip lasts {got.duration_s:.2f} s, expected {want:.2f} s")
    except ClipError:
        path.unlink(missing_ok=True)
        raise


def fetch_local(src: str | os.PathLike, clip_id: str, start_s: float, end_s: float, raw_dir: Path,
                cfg: FetchConfig = DEFAULT_FETCH) -> Fetched:
    """Standardise a local file into `raw_dir` (reusing an earlier fetch) and say where the clip starts."""
    dst = raw_path(raw_dir, clip_id)
    src = Path(src)
    if dst.exists() and dst.resolve() == src.resolve():
        return Fetched(dst, start_s)  # the demo world writes its clips straight into raw/
    if src.exists() and not src.is_file():
        raise ClipError("invalid_id", f"{src} is not a regular file (a folder, device or pipe)")
    info = probe_media(src)  # classifies missing / empty / garbage / truncated / no audio / no video
    if info.video_codec == "h264" and src.suffix.lower() in (".mp4", ".m4v", ".mov"):
        if not dst.exists():
            link_into_place(src, dst)
        return Fetched(dst, start_s, info)
    if not dst.exists():
        standardise([src], dst, start_s, end_s - start_s, cfg)
        verify(dst, start_s, end_s, info.duration_s or None)
    return Fetched(dst, 0.0)


def _backoff_s(attempt: int, cfg: FetchConfig, retry_after_s: float | None) -> float:
    """Retry-After when the host gave one, else exponential backoff; both with jitter so workers spread out."""
    if retry_after_s is not None:
        return retry_after_s * random.uniform(1.0, 1.1)
    return min(cfg.backoff_max_s, cfg.backoff_s * 2 ** attempt * random.uniform(0.5, 1.5))


def with_retries(attempt: Callable[[], Fetched], cfg: FetchConfig, gate: FetchGate,
                 sleep: Callable[[float], None] = time.sleep) -> Fetched:
    """Run `attempt` once, and again up to `cfg.retries` times while its failure is retriable."""
    n = 0
    while True:
        try:
            return attempt()
        except ClipError as exc:
            delay = _backoff_s(n, cfg, exc.retry_after_s)
            too_long = exc.retriable and delay > cfg.backoff_max_s
            if n < cfg.retries and exc.retriable and not too_long and not gate.stopped():
                sleep(delay)
                n += 1
                continue
            note = f" (Retry-After {delay:.0f} s is beyond fetch.backoff_max_s)" if too_long else ""
            note += f" (after {n + 1} attempts)" if n else ""
            raise ClipError(exc.kind, f"{exc}{note}", retry_after_s=exc.retry_after_s) from None


def _record(dst: Path, offset_s: float, how: str) -> None:
    """Say, beside `dst` and before it appears, where the clip starts inside it: a later run reusing the file
    must decode the same [start, end). `how`: kept (the source's bytes), copied (a stream-copied section) or
    encoded (a cut standardised by ffmpeg, starting at 0)."""
    atomic_write_bytes(dst.with_suffix(FETCH_RECORD_SUFFIX), json.dumps({"offset_s": offset_s, "how": how}).encode())


def _reused(dst: Path) -> Fetched:
    """A clip fetched by an earlier run (or put there by the user: no record, so a cut starting at 0)."""
    record = dst.with_suffix(FETCH_RECORD_SUFFIX)
    return Fetched(dst, json.loads(record.read_text())["offset_s"] if record.is_file() else 0.0)


def _keeps_bytes(info: MediaInfo, cfg: FetchConfig) -> bool:
    """h264 within fetch.max_height with audio an mp4 holds: already what a standardised clip is."""
    return (info.video_codec == "h264" and min(info.width, info.height) <= cfg.max_height
            and info.audio_codec in COPY_AUDIO and info.sample_rate >= MIN_SAMPLE_RATE)


def _copied(source: MediaInput | Path, dst: Path, start_s: float, end_s: float, source_end_s: float,
            cfg: FetchConfig) -> Fetched:
    """Stream copy of the section into `dst`, refused when it does not reach the clip's end (a cut-off read)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp.copy.mp4")
    info = copy_section(source, tmp, start_s, end_s, cfg)
    want = min(end_s, source_end_s or end_s) - DURATION_TOLERANCE_S
    if info.duration_s < want or info.video_start_s > start_s:
        tmp.unlink(missing_ok=True)
        raise ClipError("truncated", f"the copied section spans {info.video_start_s:.2f}-{info.duration_s:.2f} s, "
                                     f"the clip is {start_s:g}-{end_s:g} s", retriable=not isinstance(source, Path))
    _record(dst, start_s, "copied")
    os.replace(tmp, dst)
    return Fetched(dst, start_s, info)


def _from_whole(scratch: Path, dst: Path, start_s: float, end_s: float, cfg: FetchConfig) -> Fetched:
    """A source read whole: kept as it is when short and already fine, else its section copied or standardised."""
    info = probe_media(scratch)  # the bytes that arrived: not_media / truncated / no_audio / ... as for local files
    if info.duration_s and start_s >= info.duration_s:
        raise ClipError("invalid_time", f"the source is {info.duration_s:.2f} s long; the clip starts at {start_s:g} s")
    if not _keeps_bytes(info, cfg):
        _record(dst, 0.0, "encoded")
        standardise([scratch], dst, start_s, end_s - start_s, cfg)
        verify(dst, start_s, end_s, info.duration_s or None)
        return Fetched(dst, 0.0)
    with open(scratch, "rb") as f:
        iso = f.read(8)[4:8] == b"ftyp"  # mp4 / mov: the container raw/ promises
    if iso and info.duration_s <= end_s - start_s + KEEP_WHOLE_S:
        _record(dst, start_s, "kept")
        os.replace(scratch, dst)
        return Fetched(dst, start_s, info)
    return _copied(scratch, dst, start_s, end_s, info.duration_s, cfg)


def _from_ranges(source: MediaInput, dst: Path, start_s: float, end_s: float, cfg: FetchConfig) -> Fetched:
    """A host that seeks: only the section travels, stream-copied when fine, else standardised."""
    info = probe_remote(source, cfg)
    if _keeps_bytes(info, cfg):
        return _copied(source, dst, start_s, end_s, info.duration_s, cfg)
    _record(dst, 0.0, "encoded")
    reported = standardise([source], dst, start_s, end_s - start_s, cfg)
    verify(dst, start_s, end_s, reported or info.duration_s or None)
    return Fetched(dst, 0.0)


def fetch_direct(url: str, dst: Path, start_s: float, end_s: float, cfg: FetchConfig) -> Fetched | None:
    """A row's URL read as a media file; None when it is a page (yt-dlp's extractors find the media in it).

    The first answer says whether the host seeks; one that does not is read whole from that very answer,
    and one whose seeks fail anyway is read whole once more, within this attempt, instead of failing it."""
    jar = cookie_jar(cfg)
    opened, response = open_source(url, cfg, jar)
    scratch = scratch_path(dst.parent, dst.stem)
    try:
        with response:
            if not opened.media:
                return None
            if not opened.seekable:
                read_whole(response, opened, scratch, cfg)
        if opened.seekable:
            try:
                return _from_ranges(MediaInput(opened.url, cookie_headers(jar, opened.url)), dst, start_s, end_s, cfg)
            except ClipError as exc:
                if exc.kind not in SEEK_FAILURES:
                    raise
                download(opened.url, scratch, cfg, jar)
        return _from_whole(scratch, dst, start_s, end_s, cfg)
    finally:
        scratch.unlink(missing_ok=True)


def fetch_remote(clip_id: str, ytid: str | None, url: str | None, start_s: float, end_s: float, raw_dir: Path,
                 cfg: FetchConfig = DEFAULT_FETCH, gate: FetchGate | None = None) -> Fetched:
    """Fetch a YouTube id or http(s) URL's [start, end) into `raw_dir` (once: later runs reuse the file)."""
    dst = raw_path(raw_dir, clip_id)
    if dst.is_file():  # fetched by an earlier run or put there by the user
        return _reused(dst)
    source_url = clip_url(ytid, url)  # validated before it reaches yt-dlp
    gate = gate or FetchGate()
    cache_dir = Path(RunLayout.of_raw(raw_dir).yt_dlp_cache)
    direct = [url is not None]  # a row's own URL is tried as a media file first; a page goes to yt-dlp

    def attempt() -> Fetched:
        with gate.slot(host_of(source_url)):
            if direct[0]:
                fetched = fetch_direct(source_url, dst, start_s, end_s, cfg)
                if fetched is not None:
                    return fetched
                direct[0] = False  # a page stays a page: later attempts go to yt-dlp straight away
            source = extract(source_url, cfg, cache_dir)
            _record(dst, 0.0, "encoded")
            reported = standardise(list(source.inputs), dst, start_s, end_s - start_s, cfg)
        verify(dst, start_s, end_s, reported or source.duration_s)  # ffmpeg's is exact, YouTube's whole seconds
        return Fetched(dst, 0.0)

    return with_retries(attempt, cfg, gate)


def fetch_job(job: ClipJob, raw_dir: Path, fetch_cfg: FetchConfig = DEFAULT_FETCH, gate: FetchGate | None = None):
    """The clip's source as a local file under `raw_dir` (fetched once, reused by later runs)."""
    if job.path is not None:
        return fetch_local(job.path, job.clip_id, job.start_s, job.end_s, raw_dir, fetch_cfg)
    return fetch_remote(job.clip_id, job.ytid, job.url, job.start_s, job.end_s, raw_dir, fetch_cfg, gate)
