"""Decode stage: a clip file -> frames at a fixed rate (decord) + 16 kHz mono audio (torchcodec).

torchcodec reads and resamples 10 s of audio in 6-15 ms, the fastest of the readers measured (docs/benchmarks.md,
"Why these decoders"); decord resizes while decoding, so frames never exist at full size in memory.
Every failure is a ClipError with its own kind, so a bad file is recorded, never a crash of the run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.config import DecodeConfig
from curation.errors import ClipError

# Leading bytes of containers we can recognise; a file that starts like one but will not open is truncated.
_CONTAINER_MAGIC = ((4, b"ftyp"), (0, b"\x1aE\xdf\xa3"), (0, b"RIFF"), (0, b"OggS"), (0, b"fLaC"),
                    (0, b"ID3"), (0, b"FLV"), (4, b"moov"), (4, b"mdat"), (4, b"free"))
_DURATION_TOLERANCE_S = 0.15


@dataclass(frozen=True)
class DecodedClip:
    """Frames at `times` (seconds from the clip's start) and the clip's mono audio."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    times: np.ndarray  # (T,) float64
    audio: np.ndarray  # (N,) float32 in [-1, 1]
    sample_rate: int
    window_s: float

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def window_starts(self) -> np.ndarray:
        """First sample of each frame's audio window: centred on the frame, shifted to stay inside the clip (0 for
        every frame of a clip shorter than the window)."""
        width = self.window_samples
        centre = np.round(self.times * self.sample_rate).astype(np.int64)
        return np.clip(centre - width // 2, 0, max(len(self.audio) - width, 0))

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def audio_tiled(self) -> bool:
        """The clip has less audio than one window (kept by `decode.short_clips = tile`): every window is the
        waveform tiled to the window's length."""
        return len(self.audio) < self.window_samples

    def audio_windows(self) -> np.ndarray:
        """(T, window_samples) view of the audio, one window per frame (no copy; a short clip's tiled copy)."""
        audio = tile_audio(self.audio, self.window_samples)
        view = np.lib.stride_tricks.sliding_window_view(audio, self.window_samples)
        return view[self.window_starts()]


def tile_audio(audio: np.ndarray, width: int) -> np.ndarray:
    """`audio` when it has at least `width` samples; else the waveform repeated and cut to exactly `width`, as the
    EZ-VSL and Sound2Scene loaders do (`np.tile`). Every front end that cuts windows from a short clip tiles it
    this way (`curation.localise.model.audio_windows`, `curation.localise.published.spectrograms`)."""
    if len(audio) >= width or len(audio) == 0:
        return audio
    return np.tile(audio, width // len(audio) + 1)[:width]


def _looks_like_container(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(16)
    return any(head[offset:offset + len(magic)] == magic for offset, magic in _CONTAINER_MAGIC)


def _iso_box_overrun(path: Path) -> bool:
    """True when an mp4/mov top-level box claims more bytes than the file has (a cut-off download)."""
    size = path.stat().st_size
    offset = 0
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size = int.from_bytes(header[:4], "big")
            if offset == 0 and header[4:8] != b"ftyp":
                return False  # not an ISO base media file
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                return False  # the last box runs to the end of the file by definition
            if box_size < 8:
                return True
            offset += box_size
    return offset > size


def _unopenable(path: Path, reason: str) -> ClipError:
    if _looks_like_container(path):
        return ClipError("truncated", f"container header found but the file does not open: {reason}")
    return ClipError("not_media", f"not an audio/video file: {reason}")


@dataclass(frozen=True)
class MediaInfo:
    """What the container headers say, read without decoding."""

    width: int
    height: int
    video_codec: str
    duration_s: float  # where the longer of video and audio ends, by the headers
    # A stream-copied section keeps its source's timeline (`curation.fetch.clip`): its first frame is not at 0.
    video_start_s: float = 0.0
    audio_codec: str = ""
    sample_rate: int = 0


def probe_media(path: str | os.PathLike) -> MediaInfo:
    """Open `path` in-process (no ffprobe start-up cost); ClipError for a missing, empty or unusable file."""
    from torchcodec.decoders import AudioDecoder, VideoDecoder

    path = Path(path)
    if not path.is_file():
        raise ClipError("missing_file", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise ClipError("empty_file", f"zero-byte file: {path}")
    if _iso_box_overrun(path):
        raise ClipError("truncated", f"the mp4 boxes claim more bytes than the file's {path.stat().st_size}")
    try:
        video = VideoDecoder(str(path), num_ffmpeg_threads=1).metadata
    except (RuntimeError, ValueError) as exc:
        video_error = str(exc).splitlines()[0]
        try:
            AudioDecoder(str(path))
        except (RuntimeError, ValueError):
            raise _unopenable(path, video_error) from None
        raise ClipError("no_video", f"no video stream: {video_error}") from None
    try:
        audio = AudioDecoder(str(path)).metadata
    except ValueError as exc:
        raise ClipError("no_audio", f"no audio stream: {exc}") from None
    except RuntimeError as exc:
        raise ClipError("decode_error", f"audio does not open: {exc}") from None
    video_start = video.begin_stream_seconds_from_header or 0.0
    duration = max(video_start + (video.duration_seconds_from_header or 0.0),
                   (audio.begin_stream_seconds_from_header or 0.0) + (audio.duration_seconds_from_header or 0.0))
    return MediaInfo(width=video.width, height=video.height, video_codec=video.codec or "", duration_s=duration,
                     video_start_s=video_start, audio_codec=audio.codec or "", sample_rate=audio.sample_rate or 0)


def _read_audio(path: Path, start_s: float, end_s: float, sample_rate: int) -> np.ndarray:
    """The [start, end) audio as float32 mono at `sample_rate`."""
    from torchcodec.decoders import AudioDecoder

    try:
        samples = AudioDecoder(str(path), sample_rate=sample_rate, num_channels=1).get_samples_played_in_range(
            start_s, end_s)
    except (RuntimeError, ValueError) as exc:
        raise ClipError("decode_error", f"audio decoding failed: {exc}") from None
    audio = samples.data.numpy()[0].astype(np.float32, copy=False)
    # Some decoders return a few samples past `end`; the clip is exactly [start, end).
    return audio[: int(round((end_s - start_s) * sample_rate))]


def _output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Aspect-preserving size with the short side `short_side`, both even (decord's yuv420 resize needs it)."""
    scale = short_side / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _read_frames(path: Path, times_abs: np.ndarray, size: tuple[int, int], first_s: float = 0.0) -> np.ndarray:
    """Frames at `times_abs` on the file's timeline, whose first frame is at `first_s`."""
    import decord

    try:
        reader = decord.VideoReader(str(path), width=size[0], height=size[1], num_threads=1)
        native_fps = reader.get_avg_fps()
        # Frame numbers on the source's grid, minus the first frame's: a copied section picks the same frames.
        first = round(first_s * native_fps)
        indices = np.clip(np.round(times_abs * native_fps).astype(np.int64) - first, 0, len(reader) - 1)
        return reader.get_batch(indices.tolist()).asnumpy()
    except (RuntimeError, decord.DECORDError) as exc:
        raise ClipError("decode_error", f"video decoding failed: {str(exc).splitlines()[0]}") from None


def read_frames(path: str | os.PathLike, start_s: float, times: np.ndarray, cfg: DecodeConfig,
                info: MediaInfo | None = None) -> np.ndarray:
    """Frames at `times` (seconds from `start_s`), sized as `decode_clip` sizes them: the same pixels, so a
    re-selection that decodes only a few frames matches a full decode."""
    info = info or probe_media(path)
    # decord counts frames from the file's first one; audio is read by timestamp, so both agree on `start_s`.
    return _read_frames(Path(path), start_s + np.asarray(times, dtype=np.float64),
                        _output_size(info.width, info.height, cfg.short_side), info.video_start_s)


def decode_clip(path: str | os.PathLike, start_s: float, end_s: float, cfg: DecodeConfig,
                info: MediaInfo | None = None) -> DecodedClip:
    """Decode [start_s, end_s) of `path` (`info`: its headers, if already probed); raises ClipError with a
    specific kind for every bad input. A clip with less audio than `cfg.window_s` is kept with its own waveform
    (its windows are tiled where they are cut, `DecodedClip.audio_tiled`) or fails `too_short`, by
    `cfg.short_clips`."""
    path = Path(path)
    info = info or probe_media(path)
    audio = _read_audio(path, start_s, end_s, cfg.sample_rate)
    got_s = len(audio) / cfg.sample_rate
    if got_s < (end_s - start_s) - _DURATION_TOLERANCE_S and info.duration_s - start_s > got_s + _DURATION_TOLERANCE_S:
        raise ClipError("truncated", f"header promises {info.duration_s:.2f} s but audio ends after "
                                     f"{start_s + got_s:.2f} s")
    if got_s < cfg.window_s and cfg.short_clips == "reject":
        raise ClipError("too_short", f"clip has {got_s:.2f} s of audio, the scoring window is {cfg.window_s} s "
                                     "(decode.short_clips = reject)")
    if len(audio) == 0:  # nothing to tile
        raise ClipError("no_audio", f"the audio stream has no samples in [{start_s:.2f}, {end_s:.2f}) s")
    n_frames = max(1, math.floor(got_s * cfg.fps + 1e-6))
    times = np.arange(n_frames, dtype=np.float64) / cfg.fps
    frames = read_frames(path, start_s, times, cfg, info)
    return DecodedClip(frames=frames, times=times, audio=audio, sample_rate=cfg.sample_rate,
                       window_s=cfg.window_s)
