"""The demo world: deterministic bytes, real h264 + AAC, truth that covers every moment kind."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from curation.demo import (
    CATEGORIES,
    FPS,
    HEIGHT,
    LOOKALIKE,
    MISMATCH_VARIANTS,
    WIDTH,
    _plan_tracks,
    generate_world,
    good_pair_mask,
)
from manifests.schema import CLIP_LIST_SCHEMA, TRUTH_SCHEMA


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A modest world: 24 clips of 3 s hold every clip kind and mismatch variant (exact rounded fractions)."""
    return generate_world(tmp_path_factory.mktemp("demo"), n_clips=24, seed=0, duration_s=3.0)


@pytest.fixture(scope="module")
def truth(world):
    return pq.read_table(world.truth_path).to_pandas()


def _kinds(world) -> dict[str, str]:
    return json.loads(world.world_json.read_text())["counts"]["clip_kinds"]


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = generate_world(tmp_path / "a", n_clips=5, seed=3, duration_s=2.0)
    b = generate_world(tmp_path / "b", n_clips=5, seed=3, duration_s=2.0, workers=1)
    c = generate_world(tmp_path / "c", n_clips=5, seed=4, duration_s=2.0)
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    for i in range(5):
        name = f"demo{i:05d}.mp4"
        assert (a.raw_dir / name).read_bytes() == (b.raw_dir / name).read_bytes()
    assert a.truth_path.read_bytes() != c.truth_path.read_bytes()
    assert (a.raw_dir / "demo00000.mp4").read_bytes() != (c.raw_dir / "demo00000.mp4").read_bytes()


def test_interrupted_run_resumes_to_the_same_bytes(tmp_path):
    a = generate_world(tmp_path / "a", n_clips=3, seed=1, duration_s=2.0)
    before = (a.raw_dir / "demo00001.mp4").read_bytes(), a.truth_path.read_bytes()
    (a.raw_dir / "demo00001.mp4").unlink()
    a.truth_path.unlink()
    generate_world(tmp_path / "a", n_clips=3, seed=1, duration_s=2.0)
    assert ((a.raw_dir / "demo00001.mp4").read_bytes(), a.truth_path.read_bytes()) == before


def test_mp4s_are_real_h264_aac_and_decode(world):
    decord = pytest.importorskip("decord")
    decoders = pytest.importorskip("torchcodec.decoders")
    path = str(world.raw_dir / "demo00001.mp4")
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", path],
        capture_output=True, check=True).stdout)
    codecs = {s["codec_type"]: s["codec_name"] for s in probe["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}
    assert float(probe["format"]["duration"]) == pytest.approx(3.0, abs=0.1)
    frames = decord.VideoReader(path).get_batch(list(range(30))).asnumpy()
    assert frames.shape == (30, HEIGHT, WIDTH, 3) and frames.std() > 5
    audio = decoders.AudioDecoder(path, sample_rate=16000, num_channels=1).get_all_samples().data.numpy()
    assert audio.shape[0] == 1 and abs(audio.shape[1] - 48000) < 1600
    assert 0.0 < np.abs(audio).max() < 1.0


def test_tables_have_the_contract_schemas(world, truth):
    assert pq.read_schema(world.truth_path).remove_metadata().equals(TRUTH_SCHEMA)
    clips = pq.read_table(world.clips_path)
    assert clips.schema.remove_metadata().equals(CLIP_LIST_SCHEMA)
    clips = clips.to_pandas()
    assert len(truth) == 24 * 3 * FPS
    assert (truth.groupby("clip_id").size() == 3 * FPS).all()
    assert set(clips.label) <= {c.name for c in CATEGORIES}
    assert list(clips.split == "test") == [i % 5 == 0 for i in range(24)]
    assert all(world.raw_dir.joinpath(p).exists() for p in clips.path)


def test_every_moment_kind_appears(world, truth):
    kinds = pd.Series(_kinds(world))
    assert set(kinds) == {"normal", "mismatched", "no_object", "two_source", "sound_only"}
    t = truth.assign(kind=truth.clip_id.map(kinds), good=good_pair_mask(truth))
    sounding = t[t.sounding]
    assert t.good.any()
    assert (~t.visible & t.sounding).any()  # off-screen but sounding
    assert (t.visible & ~t.sounding).any()  # visible but silent
    assert (sounding.sound_category.notna()).all() and t[~t.sounding].sound_category.isna().all()
    mis = sounding[sounding.kind == "mismatched"]
    assert len(mis) and (mis.sound_category != mis.category).all() and not mis.matched.any()
    assert (sounding[sounding.kind == "no_object"].sound_category == -1).all()
    two = t[t.kind == "two_source"]
    assert two.category2.notna().all() and (two.visible & two.visible2.astype(bool) & two.good).any()
    assert not t[t.kind == "sound_only"].visible.any()
    for _, clip in t[t.kind == "normal"].groupby("clip_id"):
        assert 0.3 <= clip.good.mean() < 1.0


def test_mismatch_variants_and_pulsing_are_recorded_with_their_truth(world, truth):
    counts = json.loads(world.world_json.read_text())["counts"]
    kinds, variants = counts["clip_kinds"], counts["clip_variants"]
    mismatched = sorted(cid for cid, kind in kinds.items() if kind == "mismatched")
    assert counts["kinds"]["mismatched"] == 5 and sorted(variants) == mismatched  # round(0.2 * 24)
    assert counts["mismatch_variants"] == {"random": 2, "lookalike": 2, "crowd": 1}
    assert set(variants.values()) == set(MISMATCH_VARIANTS)
    # half of each kind's clips (rounded down) pulse with their sound: 7 of 13 normal, 2 of 5 mismatched, ...
    pulsing = pd.Series(counts["clip_pulsing"])
    per_kind = pulsing.groupby(pd.Series(kinds)).agg(["sum", "size"])
    assert (per_kind["sum"] == per_kind["size"] // 2).all() and counts["pulsing_clips"] == int(pulsing.sum())
    sounding = truth[truth.sounding & truth.clip_id.isin(mismatched)]
    for clip_id, clip in sounding.groupby("clip_id"):
        assert not clip.matched.any() and (clip.sound_category != clip.category).all()
        if variants[clip_id] == "lookalike":
            assert (clip.sound_category == LOOKALIKE[int(clip.category.iloc[0])]).all()


def test_lookalikes_pair_up_and_crowds_show_silent_objects_of_neither_category():
    assert all(LOOKALIKE[LOOKALIKE[c]] == c != LOOKALIKE[c] for c in range(len(CATEGORIES)))
    for seed in range(6):
        tracks = _plan_tracks(np.random.default_rng(seed), "mismatched", 2, 40, "crowd")
        heard = tracks[1].sound
        extra = tracks[2:]
        assert tracks[0].sound is None and tracks[1].look is None and heard not in (2, None)
        assert 1 <= len(extra) <= 2 and all(tr.visible.all() and not tr.on.any() for tr in extra)
        assert len({2, heard, *(tr.look for tr in extra)}) == 2 + len(extra)


def test_loudness_follows_scale(world, truth):
    from torchcodec.decoders import AudioDecoder

    kinds = _kinds(world)
    rms, scale = [], []
    for clip_id, clip in truth[truth.sounding].groupby("clip_id"):
        if kinds[clip_id] != "normal":
            continue
        audio = AudioDecoder(str(world.raw_dir / f"{clip_id}.mp4"), sample_rate=16000,
                             num_channels=1).get_all_samples().data.numpy()[0]
        for t, s in zip(clip.t, clip.scale, strict=True):
            # skip the 20 ms gate ramps at segment edges: use the middle of the frame
            window = audio[int(t * 16000) + 200: int(t * 16000) + 1400]
            rms.append(np.sqrt(np.mean(window**2)))
            scale.append(s)
    ranks = pd.DataFrame({"rms": rms, "scale": scale}).rank()
    assert ranks.corr().loc["rms", "scale"] > 0.5


def test_rerun_skips_and_other_params_refused(world):
    start = time.perf_counter()
    again = generate_world(world.raw_dir.parent, n_clips=24, seed=0, duration_s=3.0)
    assert time.perf_counter() - start < 1.0 and again == world
    with pytest.raises(ValueError, match="another output folder"):
        generate_world(world.raw_dir.parent, n_clips=24, seed=1, duration_s=3.0)
