"""Demo world presets: easy is the world as it was, the others take away the cues that name a category too easily
and keep the truth's meaning."""

from __future__ import annotations

import colorsys
import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.config import ConfigError, load_config
from curation.demo import (
    CATEGORIES,
    FPS,
    HEIGHT,
    WIDTH,
    Camera,
    ClipPlan,
    Scene,
    Track,
    _camera,
    _camera_views,
    _look,
    _plan_tracks,
    _render,
    _render_video,
    _scene,
    _sprite,
    _world_plan,
    generate_world,
    world_params,
    world_recipe,
)
from curation.demo_sheet import contact_sheet
from curation.demo_styles import PRESETS
from curation.errors import UsageError
from curation.outputs.evaluate import truth_metrics
from manifests.layout import RunLayout
from manifests.schema import TRUTH_SCHEMA

EASY_KEYS = {"n_clips", "seed", "duration_s", "width", "height", "fps", "sample_rate", "sprite_max", "kind_fractions",
             "mismatch_variants", "lookalike", "pulsing_fraction", "categories"}
# sha256 of the raw frames and audio of seed 0's first 16 clips (20 frames each: every kind and mismatch variant),
# as rendered before presets existed: the easy world must stay these bytes, so worlds on disk stay valid
EASY_RENDER_SHA256 = "87af68ed5e8f1e91fc4f0e68761193e1bc3ee25a334a6935a50872d912ad2ff2"


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """A small world of each preset: 6 clips of 2 s."""
    return {name: generate_world(tmp_path_factory.mktemp(name), n_clips=6, seed=0, duration_s=2.0, preset=name)
            for name in PRESETS}


def test_easy_params_are_the_worlds_before_presets_and_others_add_their_style():
    easy = world_params(320, 0, 8.0)
    assert set(easy) == EASY_KEYS and world_params(320, 0, 8.0, "easy") == easy
    assert easy["kind_fractions"] == {"normal": 0.52, "mismatched": 0.20, "no_object": 0.10, "two_source": 0.12,
                                      "sound_only": 0.06}
    assert easy["lookalike"] == [4, 5, 3, 2, 0, 1, 7, 6] and easy["mismatch_variants"] == ["random", "lookalike",
                                                                                           "crowd"]
    assert easy["categories"][0] == {"name": "red circle", "shape": "circle", "colour": [220, 40, 40],
                                     "texture": "solid", "timbre": "sine", "pitch_hz": 330.0, "pulse_hz": 2.0}
    hard = world_params(320, 0, 8.0, "hard")
    assert set(hard) == EASY_KEYS | {"preset", "style"} and hard["preset"] == "hard"
    assert hard["style"]["crf"] == 32 and hard["style"]["hue_spread_deg"] == 180.0


def test_easy_renders_exactly_what_it_rendered_before_presets():
    recipe = world_recipe("easy")
    digest = hashlib.sha256()
    for index, plan in enumerate(_world_plan(0, 16, recipe.style)):
        rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(index,)))
        tracks = _plan_tracks(rng, plan.kind, plan.category, 20, plan.variant, recipe.lookalike)
        frames, audio = _render(rng, tracks, plan, recipe, 0, index)
        digest.update(frames)
        digest.update(audio.tobytes())
    assert digest.hexdigest() == EASY_RENDER_SHA256


def test_the_easy_preset_is_the_default_byte_for_byte(tmp_path):
    a = generate_world(tmp_path / "a", n_clips=2, seed=0, duration_s=2.0)
    b = generate_world(tmp_path / "b", n_clips=2, seed=0, duration_s=2.0, preset="easy")
    for name in ("demo00000.mp4", "demo00001.mp4", "truth.parquet"):
        assert (a.raw_dir / name).read_bytes() == (b.raw_dir / name).read_bytes()
    assert json.loads(a.world_json.read_text())["preset"] == "easy"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_makes_a_world_with_the_truth_of_every_frame(worlds, preset):
    world = worlds[preset]
    truth = pq.read_table(world.truth_path)
    assert truth.schema.remove_metadata().equals(TRUTH_SCHEMA)
    truth = truth.to_pandas()
    assert len(truth) == 6 * 2 * FPS and (truth.groupby("clip_id").size() == 2 * FPS).all()
    meta = json.loads(world.world_json.read_text())
    assert meta["preset"] == preset and meta["params"] == world_params(6, 0, 2.0, preset)
    kinds = pd.Series(meta["counts"]["clip_kinds"])
    assert not truth[truth.clip_id.map(kinds) == "sound_only"].visible.any()
    normal = truth[truth.clip_id.map(kinds) == "normal"]
    assert (normal.visible & normal.sounding & normal.matched).any()
    assert sum(meta["counts"]["backgrounds"].values()) == 6


def test_another_presets_folder_and_unknown_presets_are_refused(worlds, tmp_path):
    with pytest.raises(UsageError, match="differing: .*preset"):
        generate_world(worlds["hard"].raw_dir.parent, n_clips=6, seed=0, duration_s=2.0, preset="medium")
    with pytest.raises(UsageError, match="easy, medium, hard, twins"):
        generate_world(tmp_path / "x", n_clips=2, seed=0, duration_s=2.0, preset="extreme")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="demo.preset: must be one of easy, medium, hard, twins"):
        load_config(None, {"demo.preset": "extreme"})


def _hue_deg(colour) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in colour))[0] * 360


def test_hue_spread_turns_each_clips_colour_within_the_spread_and_pools_textures():
    medium, easy = world_recipe("medium"), world_recipe("easy")
    looks = [_look(medium, np.random.default_rng(i), 0) for i in range(12)]
    turns = [(_hue_deg(look.colour) - _hue_deg(CATEGORIES[0].colour) + 180) % 360 - 180 for look in looks]
    assert len({look.colour for look in looks}) > 6 and max(np.abs(turns)) <= 30.5 and np.std(turns) > 5
    assert len({look.texture for look in looks}) > 1
    assert {_look(easy, np.random.default_rng(i), 0) for i in range(5)} == {
        (CATEGORIES[0].shape, CATEGORIES[0].colour, CATEGORIES[0].texture)}


def test_shared_looks_give_each_shape_and_colour_to_two_categories():
    cats = world_recipe("medium").categories
    looks = [(c.shape, c.colour) for c in cats]
    assert len(set(looks)) == len(cats)  # no two categories share both
    for part in (0, 1):
        assert sorted(pd.Series([look[part] for look in looks]).value_counts()) == [2, 2, 2, 2]
    assert [c.name for c in cats] == [c.name for c in CATEGORIES]  # names (and sounds' timbres) stay
    assert world_recipe("medium").lookalike == (1, 0, 3, 2, 5, 4, 7, 6)  # look-alike: the shape partner


def test_sound_overlap_pulls_pitches_together():
    def spread(name):
        return np.ptp(np.log([c.pitch_hz for c in world_recipe(name).categories]))

    assert spread("hard") < spread("medium") < spread("easy")


def test_camera_motion_moves_the_background_and_carries_objects_that_stay_on_screen():
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    camera = _camera(rng, 40)
    views, shift = _camera_views(bg, camera, 40)
    assert np.abs(views[0].astype(int) - views[-1].astype(int)).mean() > 20
    assert np.abs(shift[0] - shift[-1]).max() > 1
    static, still = _camera_views(bg, None, 40)
    assert (static[-1] == bg).all() and not still.any()
    # a largest object pushed into the corners: it stays whole on screen in every frame
    n = 20
    xy = np.array([[0.0, 0.0], [1.0, 1.0]] * (n // 2))
    track = Track(0, None, np.ones(n, bool), np.zeros(n, bool), np.ones(n, np.float32), xy)
    look = _look(world_recipe("easy"), rng, 0)
    black = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    scene = Scene(black, [look], Camera(np.full(n, 1.2), np.linspace([120, 95], [168, 129], n)), 0.0, rng)
    frames = np.frombuffer(_render_video(rng, [track], [np.zeros(n)], scene), np.uint8).reshape(n, HEIGHT, WIDTH, 3)
    _, alpha = _sprite(look, 140)
    assert ((frames.max(axis=3) > 0).sum(axis=(1, 2)) == (alpha > 0).sum()).all()


def test_twins_share_a_categorys_scene_and_differ_in_their_paths():
    recipe = world_recipe("twins")
    plan = ClipPlan("normal", None, 3, False, "plain")
    tracks = [Track(3, 3, np.ones(20, bool), np.ones(20, bool), np.ones(20, np.float32), np.zeros((20, 2)))]
    a, b = _scene(recipe, plan, tracks, 0, 1), _scene(recipe, plan, tracks, 0, 2)
    other = _scene(recipe, plan._replace(category=4), tracks, 0, 1)
    assert (a.backdrop == b.backdrop).all() and not (a.backdrop == other.backdrop).all()
    paths = [_plan_tracks(np.random.default_rng(i), "normal", 3, 20)[0].xy for i in (1, 2)]
    assert not np.allclose(*paths)


def test_contact_sheet_and_evaluate_name_the_preset(worlds, tmp_path):
    world = worlds["medium"]
    sheet = Image.open(contact_sheet(world, tmp_path / "sheet.png"))
    assert sheet.size == (3 * (WIDTH // 2 + 2) - 2, 14 + 6 * (HEIGHT // 2 + 14 + 2))
    # evaluate on made-up scores of the world's frames, every clip kept
    truth = pq.read_table(world.truth_path).to_pandas()
    layout = RunLayout(str(world.raw_dir.parent))
    frames = truth[["clip_id", "t"]].assign(score=np.linspace(0, 1, len(truth)), score_moment=0.5,
                                             score_contrastive=None, selected=True)
    (world.raw_dir.parent / "manifests").mkdir(exist_ok=True)
    frames.to_parquet(layout.frames_manifest)
    pd.DataFrame({"clip_id": truth.clip_id.unique(), "status": "ok"}).to_parquet(layout.clips_manifest)
    assert truth_metrics(layout.out)["preset"] == "medium"
