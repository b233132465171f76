"""Shared test fixtures: real media made by ffmpeg's lavfi sources, the shared real data folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def make_av(path: Path, seconds: float, *, size: str = "320x240", video: bool = True, audio: bool = True,
            vcodec: str = "libx264", freq: int = 440, faststart: bool = False) -> Path:
    """A real clip: ffmpeg test pattern video and/or a sine tone."""
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=44100:duration={seconds}"]
    if video:
        args += ["-c:v", vcodec, "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac"]
    if faststart:
        args += ["-movflags", "+faststart"]
    subprocess.run(args + [str(path)], check=True)
    return path


@pytest.fixture
def shared_real() -> Path:
    if not SHARED_REAL.is_dir():
        pytest.skip("../shared/data/real is not beside this checkout")
    return SHARED_REAL


@pytest.fixture
def bad_media(tmp_path: Path) -> dict[str, Path]:
    """One file per bad-input case, keyed by the error kind it must produce."""
    good = make_av(tmp_path / "good.mp4", 5)
    cases = {
        "empty_file": tmp_path / "empty.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "not_media": tmp_path / "garbage.mp4",
        "no_audio": make_av(tmp_path / "silent_film.mp4", 5, audio=False),
        "no_video": make_av(tmp_path / "audio_only.m4a", 5, video=False),
        "too_short": make_av(tmp_path / "short.mp4", 2),
        "missing_file": tmp_path / "does_not_exist.mp4",
    }
    cases["empty_file"].write_bytes(b"")
    cases["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["not_media"].write_bytes(bytes(range(256)) * 100)
    return cases


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on 127.0.0.1, one per test module that uses it (tests/s3_server.py): a server living for
    the whole session would still be running when other modules check that a run leaves no process behind."""
    from s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server, with this test's environment (and the Dask workers it starts) pointed at it."""
    import s3fs

    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep an earlier endpoint
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()
