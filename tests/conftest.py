"""Shared test fixtures: real media made by ffmpeg's lavfi sources, the shared real data folder, demo worlds
encoded once per test run and a tiny localiser trained once per test run."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

SHARED_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

# the tiny localiser's settings: a 16-d model that trains its 30 steps in about a second
TINY_SSL = {"ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.dim": 16, "ssl.n_mels": 16, "ssl.hop": 640,
            "ssl.batch_size": 8, "ssl.steps": 30, "ssl.bank_size": 4, "ssl.threads": 1, "ssl.checkpoint_every": 10,
            "ssl.lr": 0.003, "ssl.restarts": 1}
TINY_WORLD = {"demo.clips": 8, "demo.seed": 3, "demo.duration_s": 3.0}


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


@pytest.fixture(scope="session")
def bad_media(tmp_path_factory) -> dict[str, Path]:
    """One file per bad-input case, keyed by the error kind it must produce (made once per test run: tests only
    read them)."""
    tmp_path = tmp_path_factory.mktemp("bad_media")
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


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory) -> Callable[[Path, dict], Path]:
    """`demo_clips(out, overrides)`: the encoded clips of the demo world that `load_config(None, overrides)` names,
    put in out/raw (returns out). Each world is made once per test run (rendering and encoding its clips is most of
    its cost); a run or `generate_world` on out finishes the world there as it finishes a killed one: its
    parameters came along, so other ones are refused, the clips are kept, the clip list and truth are written for
    out."""
    from curation.config import load_config
    from curation.demo import generate_world

    made = {}

    def into(out: Path, overrides: dict) -> Path:
        demo = load_config(None, overrides).demo
        key = (demo.clips, demo.seed, demo.duration_s, demo.preset)
        if key not in made:
            made[key] = generate_world(tmp_path_factory.mktemp("demo_world"), n_clips=demo.clips, seed=demo.seed,
                                       duration_s=demo.duration_s, preset=demo.preset)
        world = made[key]
        raw = Path(out) / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for path in world.raw_dir.iterdir():
            if path.name not in (world.clips_path.name, world.truth_path.name):
                shutil.copy2(path, raw / path.name)
        return Path(out)

    return into


@pytest.fixture(scope="session")
def tiny_localiser(tmp_path_factory, demo_clips) -> SimpleNamespace:
    """TINY_SSL trained once per test run on the 8-clip world of TINY_WORLD, for tests that read a trained model or
    its loss.jsonl (beside it): `settings`, `world` (the TINY_* dicts), `out` (the world's OUT), `cfg`, `jobs`,
    `checkpoint`. Nothing may write into `out`: tests that train or curate do it in folders of their own."""
    from curation.clip_cache import ClipJob
    from curation.config import load_config
    from curation.demo import generate_world
    from curation.localise.train import load_training_clips, train
    from manifests.readers import read_clip_table

    out = demo_clips(tmp_path_factory.mktemp("tiny_localiser"), TINY_WORLD)
    cfg = load_config(None, {"out": str(out), **TINY_WORLD, **TINY_SSL})
    world = generate_world(out, n_clips=cfg.demo.clips, seed=cfg.demo.seed, duration_s=cfg.demo.duration_s,
                           preset=cfg.demo.preset)
    jobs = [ClipJob(r["clip_id"], r["path"], r["url"], r["start_s"], r["end_s"])
            for r in read_clip_table(world.clips_path).to_pylist()]
    checkpoint = train(load_training_clips(jobs, cfg, world.raw_dir, progress=False), cfg, out / "model" / "model.pt",
                       progress=False)
    return SimpleNamespace(settings=TINY_SSL, world=TINY_WORLD, out=out, cfg=cfg, jobs=jobs, checkpoint=checkpoint)
