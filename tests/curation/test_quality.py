"""Data-quality filters on small in-memory clips (the planted-world measurement is `bench.quality`)."""

import base64

import numpy as np

from curation.clip_cache import ClipSummary
from curation.config import FilterConfig, SelectConfig
from curation.quality import (
    alignments,
    candidate_pairs,
    fingerprint,
    is_duplicate,
    judge,
    measure,
    overlaps,
    signals_dict,
)
from curation.select import keep_clips
from curation.summary_table import SummaryTable, measured_clips

SR, FPS = 16000, 10.0


def _footage(seed: int, seconds: float = 12.0) -> np.ndarray:
    """A textured scene panned slowly to the right, 10 fps, 64 x 112 px."""
    rng = np.random.default_rng(seed)
    scene = np.kron(rng.integers(0, 256, (8, 40, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    return np.stack([scene[:, i:i + 112] for i in range(int(seconds * FPS))])


def _sound(seed: int, seconds: float = 12.0) -> np.ndarray:
    """Noise bursts of random length and level (a distinctive envelope)."""
    rng = np.random.default_rng(seed)
    levels = np.repeat(rng.uniform(0.01, 0.5, int(seconds * 4)), SR // 4)
    return (levels * rng.standard_normal(len(levels))).astype(np.float32)


def _signals(frames, audio, start_s=0.0, seconds=10.0, gain=1.0):
    f0, a0 = int(start_s * FPS), int(start_s * SR)
    return signals_dict(measure(frames[f0:f0 + int(seconds * FPS)], gain * audio[a0:a0 + int(seconds * SR)], SR))


def test_still_and_silent_signals():
    frames, audio = _footage(0), _sound(0)
    still = np.repeat(frames[:1], 100, axis=0) + np.random.default_rng(1).integers(0, 2, (100, 64, 112, 3),
                                                                                     dtype=np.uint8)
    cfg = FilterConfig()
    assert _signals(frames, audio)["motion"] > 10 * cfg.still_motion
    assert measure(still, audio[:10 * SR], SR).motion < cfg.still_motion
    assert _signals(frames, audio)["loud_db"] > -20
    assert _signals(frames, audio, gain=1e-3)["loud_db"] < cfg.silent_db
    assert measure(frames[:100], np.zeros(10 * SR, np.float32), SR).loud_db < cfg.silent_db


def test_duplicates_survive_shift_recut_and_gain_but_other_footage_or_sound_do_not():
    frames, audio = _footage(0), _sound(0)
    original = fingerprint(_signals(frames, audio))
    cfg = FilterConfig()
    copies = {"shifted": _signals(frames, audio, start_s=0.7), "recut": _signals(frames, audio, 2.0, 8.0),
              "quieter": _signals(frames, audio, gain=0.2)}
    for name, signals in copies.items():
        assert is_duplicate(original, fingerprint(signals), cfg, FPS), name
    others = {"other footage": _signals(_footage(1), audio), "other sound": _signals(frames, _sound(1)),
              "other tone": _signals(frames, 0.1 * np.sin(np.arange(12 * SR) / SR * 2 * np.pi * 440))}
    for name, signals in others.items():
        assert not is_duplicate(original, fingerprint(signals), cfg, FPS), name



def _rhythm(seed: int, seconds: float = 12.0) -> np.ndarray:
    """One sound, many recordings: a 220-Hz square tone pulsing 2.5 times a second, from a phase of its own."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    gate = np.sin(np.pi * (2.5 * t + rng.uniform())) ** 2
    tone = np.sign(np.sin(2 * np.pi * 220 * t + rng.uniform(0, 2 * np.pi)))
    return (0.2 * gate * tone + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def _plain(seed: int, seconds: float = 12.0) -> np.ndarray:
    """A flat grey scene with a small square wandering on a path of its own (the twins world's low detail)."""
    rng = np.random.default_rng(seed)
    frames = np.full((int(seconds * FPS), 64, 112, 3), 120, dtype=np.uint8)
    for f, (y, x) in enumerate(rng.integers(0, [52, 100], size=(len(frames), 2))):
        frames[f, y:y + 12, x:x + 12] = 200
    return frames


def test_distinct_recordings_of_one_rhythm_in_one_plain_scene_are_not_duplicates():
    """The rhythm's peaks fit an alignment one period away as well: they identify nothing, and the plain picture
    cannot; a copy of detailed footage with the same rhythm is still found by its picture."""
    cfg = FilterConfig()
    a, b = (fingerprint(_signals(_plain(seed), _rhythm(seed))) for seed in (0, 1))
    sounds = [sound_at()[0] for _, sound_at in alignments(a, b, cfg, FPS)]
    assert any(sound.consistent for sound in sounds) and not any(sound.identifies for sound in sounds)
    assert not is_duplicate(a, b, cfg, FPS)
    frames, audio = _footage(0), _rhythm(0)
    assert is_duplicate(fingerprint(_signals(frames, audio)), fingerprint(_signals(frames, audio, start_s=0.7)),
                        cfg, FPS)

def test_index_finds_the_copy_among_distinct_clips_without_pairing_everything():
    fps = {f"c{i:02d}": fingerprint(_signals(_footage(i), _sound(i))) for i in range(12)}
    fps["c03_copy"] = fingerprint(_signals(_footage(3), _sound(3), start_s=1.0))
    pairs = candidate_pairs(fps)
    assert ("c03", "c03_copy") in pairs and len(pairs) < 10
    assert candidate_pairs({}) == set() and judge([], {}, FilterConfig(), FPS).dup_group == {}


def test_judge_groups_rejects_and_records():
    frames, audio = _footage(0), _sound(0)
    signals = {"b": _signals(frames, audio), "a": _signals(frames, audio, start_s=0.5),
               "s": signals_dict(measure(np.repeat(frames[:1], 100, axis=0), audio[:10 * SR], SR)),
               "q": _signals(_footage(2), audio, gain=1e-4)}
    windows = [("b", "ytid_______", 0.0, 10.0), ("a", "ytid_______", 9.0, 19.0), ("s", None, 0.0, 10.0),
               ("q", "other______", 0.0, 10.0)]
    v = judge(windows, signals, FilterConfig(), FPS)
    assert v.dup_group == {"a": "a", "b": "a"} and v.overlap_of == {"a": "b"}
    still = dict(zip(v.ids, v.still.tolist(), strict=True))
    silent = dict(zip(v.ids, v.silent.tolist(), strict=True))
    assert still == {"b": False, "a": False, "s": True, "q": False} and silent["q"] and not silent["b"]
    assert {cid: kind for cid, (kind, _) in v.rejected.items()} == {"b": "duplicate", "s": "still"}
    everything = FilterConfig(reject_silent=True, reject_overlaps=True, reject_duplicates=False, reject_still=False)
    assert {cid: kind for cid, (kind, _) in judge(windows, signals, everything, FPS).rejected.items()} == \
        {"q": "silent", "a": "overlap"}


def test_overlaps_take_the_earliest_earlier_window():
    windows = [("x3", "y", 8.0, 12.0), ("x1", "y", 0.0, 5.0), ("x2", "y", 4.0, 9.0), ("x4", "y", 12.0, 14.0),
               ("z", "other", 0.0, 20.0), ("n", None, 0.0, 5.0)]
    assert overlaps(windows) == {"x2": "x1", "x3": "x2"}


def test_per_label_selection_keeps_each_labels_top_fraction_and_the_floor():
    scores = {f"a{i}": 0.9 - i / 100 for i in range(8)} | {f"b{i}": 0.1 - i / 100 for i in range(4)}
    labels = {cid: cid[0] for cid in scores}
    cfg = SelectConfig(keep_quantile=0.5)
    assert keep_clips(scores, cfg, labels) == {f"a{i}" for i in range(6)}
    per_label = SelectConfig(keep_quantile=0.25, per_label=True)
    assert keep_clips(scores, per_label, labels) == {"a0", "a1", "b0"}
    floor = SelectConfig(keep_quantile=0.25, per_label=True, min_per_label=3, min_clip_score=0.085)
    assert keep_clips(scores, floor, labels) == {"a0", "a1", "a2", "b0", "b1"}


def test_signals_of_an_older_version_are_judged_still_and_silent_but_never_compared():
    """Cache files written before the detail and peak signals existed hold smooth-picture hashes and a 16-band
    spectrum: such a clip is not comparable (never grouped), its motion and loudness still judge it."""
    frames, audio = _footage(0), _sound(0)
    new, copy = _signals(frames, audio), _signals(frames, audio, start_s=0.5)
    old = {k: new[k] for k in ("motion", "loud_db", "vhash", "flat", "aenv", "seconds")}
    old["aspec"] = base64.b64encode(np.zeros(16, np.int8).tobytes()).decode()
    assert judge([], {"a": new, "b": copy}, FilterConfig(), FPS).dup_group == {"a": "a", "b": "a"}
    v = judge([], {"a": {**old, "loud_db": -70.0}, "b": copy}, FilterConfig(reject_silent=True), FPS)
    assert v.dup_group == {} and v.silent.tolist() == [True, False]
    assert {cid: kind for cid, (kind, _) in v.rejected.items()} == {"a": "silent"}
    summaries = [ClipSummary("a", scored=True, quality=old), ClipSummary("b", scored=True, quality=copy)]
    table = SummaryTable(summaries).table()
    fps, _ = measured_clips(table)
    assert len(fps.clip(0).hashes) == 0 and len(fps.clip(1).hashes) == len(fingerprint(copy).hashes)
