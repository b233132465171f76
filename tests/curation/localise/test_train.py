import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from curation.clip_cache import ClipJob
from curation.config import ConfigError, load_config
from curation.decode import decode_clip
from curation.demo import generate_world
from curation.errors import CheckpointError
from curation.localise.checkpoint import load_checkpoint, load_members
from curation.localise.distributed import World
from curation.localise.score import LearnedScorer
from curation.localise.scorers import ensure_model
from curation.localise.train import (
    ClipViews,
    TrainingClips,
    TrainingSet,
    _agreeing,
    _augment_images,
    _batch_clips,
    _batch_frames,
    _Chunks,
    _swap_backgrounds,
    _trainer,
    active_moments,
    clip_backgrounds,
    final_loss,
    load_image_init,
    load_training_clips,
    parallel_restarts,
    size_loudness_correlation,
    train,
    train_restarts,
    training_set,
)
from manifests.readers import read_clip_table


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_clips, tiny_localiser):
    """The tiny localiser's world in an OUT of this module's, its settings (conftest.py's TINY_SSL)."""
    tiny = tiny_localiser.world
    out = demo_clips(tmp_path_factory.mktemp("sslworld"), tiny)
    generate_world(out, n_clips=tiny["demo.clips"], seed=tiny["demo.seed"], duration_s=tiny["demo.duration_s"])
    rows = read_clip_table(out / "raw" / "demo_clips.parquet").to_pylist()
    jobs = [ClipJob(r["clip_id"], r["path"], r["url"], r["start_s"], r["end_s"]) for r in rows]
    cfg = load_config(None, {"out": str(out), **tiny_localiser.settings})
    return out, cfg, load_training_clips(jobs, cfg, out / "raw", progress=False), jobs


def _ssl_train_args(out: Path, options: dict) -> list[str]:
    """`python -m curation ssl-train` on OUT with these options as --set assignments."""
    return [sys.executable, "-m", "curation", "ssl-train", "--out", str(out), "--quiet",
            *[f"--set={k}={v}".replace(" ", "") for k, v in options.items()]]


def test_training_loss_decreases_on_a_tiny_run(tiny_localiser):
    """The tiny localiser of conftest.py: train() on the decoded clips with this module's settings, trained once."""
    log = [json.loads(line) for line in tiny_localiser.checkpoint.with_name("loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 31))
    losses = np.array([entry["loss"] for entry in log])
    assert losses[-10:].mean() < losses[:10].mean() - 0.1


@pytest.mark.parametrize("judged", [{}, {"ssl.hard_negatives": 0.5, "ssl.hard_negative_group": 2,
                                         "ssl.clean_share": 0.75, "ssl.clean_from": 0.3}],
                         ids=["plain", "hard-negatives-and-cleaning"])
def test_a_killed_training_resumes_to_the_same_weights(world, tiny_localiser, tmp_path, judged):
    out, cfg, data, _ = world
    settings = {**tiny_localiser.settings, **judged}
    cfg = load_config(None, {"out": str(out), **settings})
    whole = train(data, cfg, tmp_path / "whole" / "model.pt", progress=False)
    args = _ssl_train_args(out, {**tiny_localiser.world, **settings})
    before = set((out / "ssl").glob("*/model.pt"))  # each parametrisation trains into its own settings' folder
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not set((out / "ssl").glob("*/model.pt")) - before and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (partial,) = set((out / "ssl").glob("*/model.pt")) - before
    assert load_checkpoint(partial)[2]["step"] < 30, "the run must be killed partway"
    train(data, cfg, partial, progress=False)
    steps = [json.loads(line)["step"] for line in (partial.parent / "loss.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))
    a, b = load_checkpoint(whole)[0].state_dict(), load_checkpoint(partial)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_restarts_trained_side_by_side_end_when_their_parent_is_killed(world, tiny_localiser):
    """SIGKILL reaches the parent alone (not its process group): the restarts it started must not train on."""
    out, settings = world[0], tiny_localiser.settings
    args = _ssl_train_args(out, {**tiny_localiser.world, **settings, "ssl.restarts": 2, "ssl.parallel_restarts": 2,
                                 "ssl.steps": 100000, "ssl.seed": 7})
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    children: set[int] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(children) < 2 and proc.poll() is None:
        time.sleep(0.1)
        children = {int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()}
        children = {pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()}
    assert len(children) == 2, proc.stderr.read().decode() if proc.poll() is not None else children
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.2)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive


def test_one_chunk_trains_exactly_as_the_clips_decoded_in_memory(world, tmp_path):
    _, cfg, data, jobs = world
    cfg = replace(cfg, ssl=replace(cfg.ssl, steps=5))
    in_memory = train(data, cfg, tmp_path / "memory" / "model.pt", progress=False)
    chunked = train(training_set(jobs, cfg, tmp_path / "raw"), cfg, tmp_path / "chunked" / "model.pt", progress=False)
    a, b = load_checkpoint(in_memory)[0].state_dict(), load_checkpoint(chunked)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_long_list_is_trained_chunk_by_chunk_with_at_most_buffer_clips_decoded(world, tmp_path):
    _, cfg, _, jobs = world
    cfg = replace(cfg, ssl=replace(cfg.ssl, steps=6, buffer_clips=4, checkpoint_every=100))
    clips = training_set(jobs, cfg, tmp_path / "raw")
    assert [len(c) for c in clips.chunks] == [4, 4]
    assert sorted(j.clip_id for c in clips.chunks for j in c) == sorted(j.clip_id for j in jobs)
    chunks = _Chunks(clips, cfg, progress=False)
    try:
        seen = [chunks.at(step)[0].clip_ids for step in range(6)]
    finally:
        chunks.close()
    assert all(len(ids) == 4 for ids in seen)
    assert seen[0] == seen[2] != seen[3] == seen[5]  # each chunk trains for its share of the steps, in order
    assert train(clips, cfg, tmp_path / "model.pt", progress=False).is_file()


def test_max_clips_takes_the_same_sample_whatever_the_list_order(world, tmp_path):
    _, cfg, _, jobs = world
    cfg = replace(cfg, ssl=replace(cfg.ssl, max_clips=5))
    forward = training_set(jobs, cfg, tmp_path)
    backward = training_set(jobs[::-1], cfg, tmp_path)
    assert sorted(j.clip_id for j in forward.chunks[0]) == sorted(j.clip_id for j in backward.chunks[0])
    assert len(forward.chunks) == 1 and len(forward.chunks[0]) == 5


def test_checkpoint_round_trip_gives_identical_scores(tiny_localiser, tmp_path):
    cfg, jobs, checkpoint = tiny_localiser.cfg, tiny_localiser.jobs, tiny_localiser.checkpoint
    model, bank, _ = load_checkpoint(checkpoint)
    assert bank["audio"].shape == (4, 16) and bank["image"].shape == (4, 16, 2, 2)
    clip = decode_clip(jobs[0].path, 0.0, 3.0, cfg.decode)
    first = LearnedScorer(replace(cfg.score, checkpoint=str(checkpoint))).score(clip)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(Path(checkpoint).read_bytes())
    second = LearnedScorer(replace(cfg.score, checkpoint=str(copy))).score(clip)
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.contrastive, second.contrastive)
    assert first.maps.shape == (30, 2, 2) and np.all(np.abs(first.scores) <= 1.0 + 1e-5)


def test_ensure_model_trains_once_and_reuses(world):
    out, cfg, _, jobs = world
    # one restart after the other in this process (side by side: test_restarts_keep_...), spawning no Python
    cfg = replace(cfg, ssl=replace(cfg.ssl, restarts=2, parallel_restarts=1))
    resolved, digest = ensure_model(cfg, jobs, out, progress=False)
    checkpoint = Path(resolved.score.checkpoint)
    assert checkpoint.is_file() and checkpoint.is_relative_to(out / "ssl")
    assert len(json.loads(checkpoint.with_name("restarts.json").read_text())["runs"]) == 2
    stamp = checkpoint.stat().st_mtime_ns
    again, digest_again = ensure_model(cfg, jobs, out, progress=False)
    assert digest_again == digest and checkpoint.stat().st_mtime_ns == stamp
    unchanged, none = ensure_model(replace(cfg, score=replace(cfg.score, scorer="synchrony")), jobs, out)
    assert none is None and unchanged.score.checkpoint is None


def _scene(backdrop: int, squares: list[tuple[int, int] | None], side: int = 16) -> torch.Tensor:
    frames = torch.full((len(squares), 3, side, side), backdrop, dtype=torch.uint8)
    for frame, corner in zip(frames, squares, strict=True):
        if corner is not None:
            frame[:, corner[0]:corner[0] + 3, corner[1]:corner[1] + 3] = 250
    return frames


def test_background_swap_moves_the_foreground_onto_another_clips_backdrop():
    moving = _scene(50, [(2, 2), (8, 8), (2, 10)])  # a square that moves: the median is the bare backdrop
    empty = _scene(150, [None, None, None])  # object off screen all along
    busy = _scene(100, [None, None, None])
    busy[1, :, :12] = 220  # most of the frame changes: a camera move, never swapped
    data = TrainingClips(frames=torch.cat([moving, empty, busy]), frame_clip=torch.arange(3).repeat_interleave(3),
                         frame_t=torch.zeros(9), audio=[torch.zeros(10)] * 3, clip_ids=["a", "b", "c"])
    backgrounds, foreground = clip_backgrounds(data)
    assert torch.equal(backgrounds[0], torch.full((3, 16, 16), 50, dtype=torch.uint8))
    assert torch.equal(backgrounds[1], empty[0])
    assert foreground[0].sum() == 5 * 5 and foreground[0, 1:6, 1:6].all()  # the 3x3 square grown by a pixel
    assert not foreground[3:6].any()
    frames = data.frames[[0, 3, 7]]
    swapped = _swap_backgrounds(frames, torch.tensor([0, 1, 2]), backgrounds, foreground[[0, 3, 7]], 1.0,
                                torch.Generator().manual_seed(0))
    square = torch.zeros(16, 16, dtype=torch.bool)
    square[2:5, 2:5] = True
    assert (swapped[0][:, square] == 250).all()
    assert set(swapped[0][:, ~foreground[0]].unique().tolist()) <= {100, 150}  # another clip's backdrop
    assert set(swapped[1].unique().tolist()) <= {50, 100} and not torch.equal(swapped[1], frames[1])
    assert torch.equal(swapped[2], frames[2])
    kept = _swap_backgrounds(frames, torch.tensor([0, 1, 2]), backgrounds, foreground[[0, 3, 7]], 0.0,
                             torch.Generator().manual_seed(0))
    assert torch.equal(kept, frames)


def test_training_pairs_leave_out_moments_that_show_nothing_or_sound_nothing():
    """Moments 0 and 1 of each clip show their square and sound; moment 2 sounds with nothing on screen, moment 3
    shows the square in silence. Clip 4's square never sounds: it keeps no pair to train on."""
    rate, tone = 16000, torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 440) * 0.3
    quiet = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 1e-3
    sounding, silent = torch.cat([tone, quiet]), torch.cat([quiet, quiet])
    frames = torch.cat([_scene(40 * c + 20, [(2, 2), (8, 8), None, (2, 10)]) for c in range(5)])
    data = TrainingClips(frames=frames, frame_clip=torch.arange(5).repeat_interleave(4),
                         frame_t=torch.tensor([0.25, 0.5, 0.75, 1.5]).repeat(5), audio=[sounding] * 4 + [silent],
                         clip_ids=list("abcde"))
    ssl = load_config(None, {"ssl.window_s": 0.5, "ssl.batch_size": 16, "ssl.moment_foreground": 0.02,
                             "ssl.moment_loudness": 2.0}).ssl
    _, foreground = clip_backgrounds(data)
    active = active_moments(data, foreground, ssl, rate)
    assert active.frames.view(5, 4).tolist() == [[True, True, False, False]] * 4 + [[False] * 4]
    assert active.clips.tolist() == [True] * 4 + [False]
    for seed in range(3):
        drawn = _batch_frames(data, ssl, torch.Generator().manual_seed(seed), None, None, active)
        assert sorted(drawn.tolist()) == [0, 1, 4, 5, 8, 9, 12, 13]
    assert active_moments(data, foreground, replace(ssl, moment_foreground=0.0), rate).frames.view(5, 4)[0].tolist() \
        == [True, True, True, False]  # the off-screen sound trains where the foreground is not asked for
    off = replace(ssl, moment_foreground=0.0, moment_loudness=0.0)
    assert active_moments(data, foreground, off, rate) is None  # every moment
    assert active_moments(data, foreground, replace(ssl, moment_loudness=1e6), rate) is None  # too few: all train


def test_synchrony_pairs_only_clips_whose_object_grows_louder_as_it_grows():
    """Clips 0-3: the square's side and the tone's level rise and fall together (an object that approaches);
    clip 4: the same square, but the sound fades as it grows (a source other than the one shown)."""
    rate, sides = 16000, [2, 4, 6, 8, 5, 3]
    tone = torch.sin(torch.arange(rate) / rate * 2 * torch.pi * 440)
    frames, audio = [], []
    for c in range(5):
        clip = torch.full((6, 3, 32, 32), 30 * c + 20, dtype=torch.uint8)
        for k, side in enumerate(sides):  # corners in turn: the median over the clip is the bare backdrop
            y, x = (k % 2) * 22, (k // 2 % 2) * 22
            clip[k, :, y:y + side, x:x + side] = 250
        frames.append(clip)
        levels = [side / 20 for side in sides] if c < 4 else [0.1 / side for side in sides]
        audio.append(torch.cat([tone * level for level in levels]))  # one second per moment
    data = TrainingClips(frames=torch.cat(frames), frame_clip=torch.arange(5).repeat_interleave(6),
                         frame_t=(torch.arange(6) + 0.5).repeat(5), audio=audio, clip_ids=list("abcde"))
    _, foreground = clip_backgrounds(data)
    ssl = load_config(None, {"ssl.window_s": 0.5, "ssl.batch_size": 8, "ssl.moment_synchrony": 0.0}).ssl
    active = active_moments(data, foreground, ssl, rate)
    assert active.clips.tolist() == [True] * 4 + [False]
    assert active.frames.view(5, 6).all(dim=1).tolist() == [True] * 4 + [False]
    area = foreground.float().mean(dim=(1, 2))
    levels = torch.tensor([[side / 20 for side in sides]] * 4 + [[0.1 / side for side in sides]]).flatten()
    rho = size_loudness_correlation(data, area, levels, torch.ones(30, dtype=torch.bool))
    assert (rho[:4] > 0.9).all() and rho[4] < -0.9
    three = torch.ones(30, dtype=torch.bool)
    three[3:6] = False  # clip 0 keeps three moments: too few to correlate
    assert torch.isnan(size_loudness_correlation(data, area, levels, three)[0])
    assert active_moments(data, foreground, replace(ssl, moment_synchrony=-1.0), rate) is None  # off: every moment


def test_each_clips_frames_are_found_in_frame_order_even_when_clips_interleave():
    """How frames are decoded decides the order of `frame_clip`; a batch draws a clip's frames by their index."""
    frame_clip = torch.tensor([2, 0, 2, 1, 0, 2, 0])
    data = TrainingClips(frames=torch.zeros(7, 3, 4, 4, dtype=torch.uint8), frame_clip=frame_clip,
                         frame_t=torch.zeros(7), audio=[torch.zeros(10)] * 4, clip_ids=list("abcd"))
    assert [rows.tolist() for rows in data.clip_rows] == [[1, 4, 6], [3], [0, 2, 5], []]


def _views(pairs: list[tuple[int, int]]) -> ClipViews:
    """Views of clips whose (object, sound) categories are `pairs`, each category its own direction (+ a little
    per-clip spread so no two clips tie)."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.eye(8)
    objects = torch.stack([basis[o] for o, _ in pairs]) + 0.05 * torch.rand(len(pairs), 8, generator=gen)
    sounds = torch.stack([basis[s] for _, s in pairs]) + 0.05 * torch.rand(len(pairs), 8, generator=gen)
    return ClipViews(torch.nn.functional.normalize(objects, dim=1), torch.nn.functional.normalize(sounds, dim=1))


def test_the_clip_whose_object_is_not_what_sounds_disagrees_most_and_is_left_out():
    views = _views([(0, 0), (0, 0), (1, 1), (1, 1), (2, 2), (2, 2), (3, 3), (0, 1)])  # the last: a 0 shown, a 1 heard
    disagreement = views.disagreement()
    assert int(disagreement.argmax()) == 7
    assert disagreement[:7].max() < disagreement[7]
    assert _agreeing(disagreement, 0.8).tolist() == [True] * 7 + [False]
    assert _agreeing(disagreement, 0.1).sum() == 4  # never fewer than 4 clips to train on


def test_hard_negatives_look_alike_but_sound_different():
    # objects 0 and 1 look alike (close directions), sounds 0 and 1 do not; object 2 looks like neither
    objects = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0], [1.0, 0.25, 0], [1.0, 0.3, 0],
                                                          [0.2, 1.0, 0], [0.25, 1.0, 0], [0, 0, 1.0]]), dim=1)
    sounds = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0], [0, 1.0, 0],
                                                         [0, 1.0, 0.1], [0, 0, 1.0], [0, 0, 1.0]]), dim=1)
    views = ClipViews(objects, sounds)
    # clip 0's most alike pictures are clips 1 and 2; clip 1 sounds like it, clip 2 does not
    assert views.neighbours(1, pool=2)[0].tolist() == [2]
    assert views.neighbours(1, pool=1)[0].tolist() == [1]  # a pool of one: the nearest picture whatever it sounds


def test_hard_negative_batches_group_each_clip_with_its_neighbours_and_draw_only_eligible_clips():
    neighbours = torch.tensor([[c for c in range(4 * (k // 4), 4 * (k // 4) + 4) if c != k] for k in range(16)])
    cfg = replace(load_config(None, {"ssl.batch_size": 16}).ssl, hard_negatives=1.0, hard_negative_group=4)
    clips = _batch_clips(16, cfg, torch.Generator().manual_seed(1), neighbours, None)
    assert len(clips) == 8 and len(set(clips.tolist())) == 8
    assert [len({c // 4 for c in clips[i:i + 4].tolist()}) for i in (0, 4)] == [1, 1]  # two whole look-alike groups
    eligible = torch.arange(16) % 2 == 0
    for seed in range(5):
        drawn = _batch_clips(16, cfg, torch.Generator().manual_seed(seed), neighbours, eligible)
        assert len(drawn) == 8 and eligible[drawn].all() and len(set(drawn.tolist())) == 8
    plain = replace(cfg, hard_negatives=0.0)
    assert torch.equal(_batch_clips(16, plain, torch.Generator().manual_seed(1), neighbours, None),
                       torch.randperm(16, generator=torch.Generator().manual_seed(1))[:8])


def test_training_frames_keep_their_colours_unless_colour_jitter_is_asked_for():
    blue, cyan = torch.tensor([40, 80, 230], dtype=torch.uint8), torch.tensor([40, 210, 220], dtype=torch.uint8)
    frames = torch.stack([c[:, None, None].expand(3, 20, 20) for c in (blue, cyan) * 4])
    plain = _augment_images(frames, 16, torch.Generator().manual_seed(0), colour_jitter=0.0)
    assert torch.allclose(plain, (frames[:, :, :16, :16].float() / 255), atol=1e-5)  # only crops and flips
    jittered = _augment_images(frames, 16, torch.Generator().manual_seed(0), colour_jitter=0.3)
    assert (jittered - plain).abs().amax() > 0.05


def test_restarts_keep_the_training_whose_loss_ended_lowest(world, tmp_path):
    _, cfg, data, _ = world
    # seeds 2 and 3, trained side by side in two processes
    cfg = replace(cfg, ssl=replace(cfg.ssl, restarts=2, seed=1, parallel_restarts=2))
    chosen = train_restarts(data, cfg, tmp_path / "model.pt", progress=False)
    record = json.loads((tmp_path / "restarts.json").read_text())
    assert [run["seed"] for run in record["runs"]] == [2, 3]
    losses = {run["restart"]: run["final_loss"] for run in record["runs"]}
    k = record["chosen"]
    assert k == min(losses, key=losses.get) and losses[0] != losses[1]
    assert record["by_loss"] == [k, 1 - k]
    assert final_loss(tmp_path / "loss.jsonl", cfg.ssl.steps) == pytest.approx(losses[k], abs=1e-5)
    single = train(data, replace(cfg, ssl=replace(cfg.ssl, restarts=1, seed=2 + k)), tmp_path / "single" / "model.pt",
                   progress=False)  # a restart is exactly the training with its seed, alone in this process
    a, b = load_checkpoint(single)[0].state_dict(), load_checkpoint(chosen)[0].state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    # the chosen file carries the other restart as an ensemble member, with its bank
    (best, best_bank), (other, other_bank) = load_members(chosen, 3)
    restart = load_checkpoint(tmp_path / "restarts" / str(1 - k) / "model.pt")
    assert all(torch.equal(other.state_dict()[name], restart[0].state_dict()[name]) for name in a)
    assert torch.equal(other_bank["audio"], restart[1]["audio"]) and not torch.equal(other_bank["audio"],
                                                                                      best_bank["audio"])
    assert len(load_members(chosen, 1)) == 1
    # finished restarts are assembled again without decoding or training (a clip list that cannot be read)
    first = chosen.read_bytes()
    chosen.unlink()
    unreadable = TrainingSet(((ClipJob("gone", str(tmp_path / "gone.mp4"), None, 0.0, 1.0),),),
                             tmp_path / "raw")
    assert train_restarts(unreadable, cfg, tmp_path / "model.pt", progress=False).read_bytes() == first


def test_a_model_is_found_under_the_settings_name_it_had_before_later_options(world):
    """OUT/ssl/<hash>: options added later (precision, preprocess, image_init, moment_*) count only away from the
    value that trains as before them, so a model trained before they existed is reused, not retrained
    (70a4fba7fa4c: the name of the demo defaults of then, three restarts of 1,600 steps on two threads, when those
    options did not exist)."""
    _, cfg, _, _ = world
    default = replace(load_config(None, {}).ssl, steps=1600, restarts=3, threads=2)
    assert hashlib.sha256(json.dumps([default.settings(), 16000]).encode()).hexdigest()[:12] == "70a4fba7fa4c"
    assert "preprocess" not in default.settings()
    assert replace(default, preprocess="ezvsl").settings()["preprocess"] == "ezvsl"
    assert "moment_loudness" not in default.settings()
    assert replace(default, moment_loudness=2.0).settings()["moment_loudness"] == 2.0
    assert "moment_synchrony" not in default.settings()
    assert replace(default, moment_synchrony=0.3).settings()["moment_synchrony"] == 0.3



def test_restarts_run_side_by_side_as_the_cores_hold_without_renaming_the_model():
    """How restarts run is not what they learn: the model's folder name ignores it; 0 counts the cores."""
    ssl = replace(load_config(None, {}).ssl, device="cpu", threads=1)
    assert replace(ssl, parallel_restarts=3).settings() == ssl.settings()
    cores = len(os.sched_getaffinity(0))
    assert parallel_restarts(ssl, World()) == cores
    assert parallel_restarts(replace(ssl, threads=2), World()) == max(1, cores // 2)
    assert parallel_restarts(replace(ssl, parallel_restarts=3), World()) == 3
    assert parallel_restarts(replace(ssl, parallel_restarts=3), World(0, 2, 0)) == 1  # torchrun: ranks, not restarts
    assert parallel_restarts(replace(ssl, device="cuda"), World()) == 1


VGGSOUND_TOML = Path(__file__).resolve().parents[3] / "configs" / "vggsound.toml"
TINY_TRUNKS = {"ssl.widths": [4, 8, 8, 16], "ssl.image_size": 32, "ssl.image_maxpool": False, "ssl.dim": 16,
               "ssl.batch_size": 8, "ssl.steps": 4, "ssl.bank_size": 4, "ssl.threads": 1, "ssl.buffer_clips": 8,
               "ssl.precision": "fp32", "ssl.device": "cpu"}


def test_the_real_size_preset_trains_at_tiny_size_on_the_published_inputs(world, tmp_path):
    out, _, _, jobs = world
    cfg = load_config(VGGSOUND_TOML, {"dataset": "demo", "meta": None, "out": str(out), **TINY_TRUNKS})
    assert (cfg.ssl.preprocess, cfg.ssl.window_s, cfg.ssl.temperature, cfg.ssl.colour_branch) == ("ezvsl", 3.0, 0.03, 0)
    full = load_config(VGGSOUND_TOML, {"meta": "clips.csv"}).ssl
    assert (full.widths, full.image_size, full.image_maxpool, full.dim) == ((64, 128, 256, 512), 224, True, 512)
    checkpoint = train(training_set(jobs, cfg, out / "raw"), cfg, tmp_path / "model.pt", progress=False)
    scorer = LearnedScorer(replace(cfg.score, checkpoint=str(checkpoint)))
    assert scorer.model.cfg.preprocess == "ezvsl"
    clip = decode_clip(jobs[0].path, 0.0, 3.0, cfg.decode)
    images, waves = scorer.batch(clip, slice(0, 2))
    assert images.shape == (2, 3, 32, 32) and scorer.front(waves).shape == (2, 1, 257, 200)
    result = scorer.score(clip)
    assert result.scores.shape == (len(clip.times),) and np.isfinite(result.scores).all()


def test_a_bf16_training_step_runs_and_keeps_float32_weights(world, tmp_path):
    _, cfg, data, _ = world
    cfg = replace(cfg, ssl=replace(cfg.ssl, steps=2, precision="bf16"))
    model, _, blob = load_checkpoint(train(data, cfg, tmp_path / "model.pt", progress=False))
    assert blob["step"] == 2 and all(p.dtype == torch.float32 for p in model.parameters())
    losses = [json.loads(line)["loss"] for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_the_image_trunk_starts_from_a_given_torchvision_resnet18(world, tmp_path):
    out, _, _, _ = world
    torch.manual_seed(5)
    imagenet = torchvision.models.resnet18(weights=None)  # built here, never downloaded
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    cfg = load_config(None, {"out": str(out), "ssl.widths": [64, 128, 256, 512], "ssl.colour_branch": 0,
                             "ssl.image_init": str(tmp_path / "resnet18.pth")})
    model = _trainer(cfg, None, tmp_path / "model.pt").model
    theirs = imagenet.state_dict()
    for key, value in model.imgnet.state_dict().items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(CheckpointError, match="missing keys|unexpected keys"):
        load_image_init(model, str(tmp_path / "resnet34.pth"))
    with pytest.raises(ConfigError, match="ssl.image_init"):
        load_config(None, {"ssl.image_init": str(tmp_path / "resnet18.pth")})  # the CPU model's widths
