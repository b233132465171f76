"""What makes a demo world easy or hard: the knobs of `curation.demo` and its named presets (docs/demo_worlds.md).

In the default world (`easy`) every category has one colour, shape, texture and sound, so a model can name a
category from its hue alone; real categories are not like that. Each knob takes away one such cue or adds a
nuisance a real clip has (busy or moving backgrounds, overlapping sounds, compression, noise). The defaults of
`WorldStyle` are the easy world exactly. Pure data: no numpy, so `curation.config` can check a preset name cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from curation.errors import UsageError

NOISE_RMS = 0.01  # -40 dBFS background noise, always present
KIND_FRACTIONS = {"normal": 0.52, "mismatched": 0.20, "no_object": 0.10, "two_source": 0.12,
                  "sound_only": 0.06}
# `gradient` (muted gradient, smooth noise, soft blobs: the easy world's), `texture` (tiles of fine patterns),
# `clutter` (a gradient under many static distractor objects), `plain` (two flat colours blended, low detail)
BACKGROUNDS = ("gradient", "texture", "clutter", "plain")


@dataclass(frozen=True)
class WorldStyle:
    """The knobs of a demo world; the defaults make the easy world (docs/demo_worlds.md says what each does)."""

    hue_spread_deg: float = 0.0  # each object's hue turned by a clip-random angle in +-this
    shared_looks: bool = False  # 8 categories over 4 shapes x 4 colours: neither alone names a category
    texture_pool: bool = False  # each object's texture drawn per clip from all textures, not the category's
    backgrounds: dict[str, float] = field(default_factory=lambda: {"gradient": 1.0})  # kind -> share of clips
    category_scenes: bool = False  # a category's clips share one background (drawn per category, not per clip)
    camera_motion: float = 0.0  # share of clips whose camera pans and zooms slowly; the objects move with it
    sound_overlap: float = 0.0  # 0..1: pitches pulled to two shared bands, rhythms to a partner category's
    sound_bed_rms: float = 0.0  # level of a category-neutral wind under every clip (0 = none)
    crf: int = 23  # x264 quality of the mp4s (higher: fewer bits, more artefacts)
    video_noise: float = 0.0  # sigma of per-frame pixel noise, in 0..255 levels
    audio_noise_rms: float = NOISE_RMS  # level of the background noise under every clip
    kind_fractions: dict[str, float] = field(default_factory=lambda: dict(KIND_FRACTIONS))  # clip kind -> share

    def __post_init__(self) -> None:
        for name, shares, kinds in (("backgrounds", self.backgrounds, BACKGROUNDS),
                                    ("kind_fractions", self.kind_fractions, tuple(KIND_FRACTIONS))):
            if not set(shares) <= set(kinds) or abs(sum(shares.values()) - 1.0) > 1e-9:
                raise ValueError(f"WorldStyle.{name}: shares of {', '.join(kinds)} summing to 1, got {shares}")


PRESETS: dict[str, WorldStyle] = {
    "easy": WorldStyle(),
    "medium": WorldStyle(hue_spread_deg=30.0, shared_looks=True, texture_pool=True,
                         backgrounds={"gradient": 0.5, "texture": 0.35, "clutter": 0.15}, sound_overlap=0.3,
                         crf=28, video_noise=3.0, audio_noise_rms=0.015),
    "hard": WorldStyle(hue_spread_deg=180.0, texture_pool=True,
                       backgrounds={"texture": 0.5, "clutter": 0.5}, camera_motion=0.3, sound_overlap=0.8,
                       sound_bed_rms=0.02, crf=32, video_noise=6.0, audio_noise_rms=0.02,
                       kind_fractions={"normal": 0.40, "mismatched": 0.28, "no_object": 0.10, "two_source": 0.10,
                                       "sound_only": 0.12}),
    # distinct clips that share a category's sound and one low-detail scene: the hardest case for a duplicate
    # filter (each clip still has its own object path and its own sound realisation)
    "twins": WorldStyle(backgrounds={"plain": 1.0}, category_scenes=True,
                        kind_fractions={"normal": 1.0, "mismatched": 0.0, "no_object": 0.0, "two_source": 0.0,
                                        "sound_only": 0.0}),
}


def preset_style(name: str) -> WorldStyle:
    """The style of a named preset; an unknown name is a UsageError that lists the names."""
    if name not in PRESETS:
        raise UsageError(f"unknown demo world preset {name!r}: choose one of {', '.join(PRESETS)} "
                         "(PRESET=, --demo-preset, demo --preset)")
    return PRESETS[name]
