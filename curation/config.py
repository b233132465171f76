"""Typed, frozen configuration of a curation run: one TOML file, overridable by flags, saved with every output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from curation.demo_styles import PRESETS
from curation.localise import registry as scorer_registry
from manifests.typed_config import ConfigError as ConfigError  # re-exported: the error of this config
from manifests.typed_config import load_typed, typed_from_dict
from manifests.typed_config import parse_value as parse_value  # re-exported: flag values in TOML syntax

DATASETS = ("demo", "vggsound", "vegas", "csv")
SCORERS = tuple(scorer_registry.KINDS)  # one line each in curation.localise.registry
CHECKPOINT_FORMATS = ("auto", "native", "ezvsl", "slavc")
CONTRASTS = ("margin", "frame", "audio", "both")
CLIP_SCORES = ("score", "score_contrastive")
PRECISIONS = ("fp32", "bf16")
SHORT_CLIPS = ("tile", "reject")
PREPROCESSING = ("native", "ezvsl")


@dataclass(frozen=True)
class ClipKey:
    """How an option that changes a clip's decoded+scored result enters the per-clip cache key
    (`RunConfig.clip_key`). Every config class declares each of its options in `CLIP_KEY`: a `ClipKey`, or None
    for an option that changes no clip's result; a class whose `AFTER_SCORING` is true holds options decided after
    scoring, which `curation select` may change without re-scoring."""

    at: str | None = None  # its place in the key: "section.name" or a top-level "name" (None: its own section.name)
    # values with which the key leaves it out: an option added after the key existed, at the value that does what
    # runs did before it, leaves their keys (and cached clips) as they were
    omitted_at: tuple[Any, ...] = ()
    same: tuple[tuple[Any, Any], ...] = ()  # (value, value keyed instead): two values that give the same result
    only_if: tuple[str, Any] | None = None  # (option of the same class, value): keyed only while it has that value
    as_word: str | None = None  # keyed as this word instead of its value

    def entry(self, owner: Any, name: str, section: str) -> tuple[str, Any] | None:
        """(place in the key, value) of option `name` of `owner` (the config of `section`), or None when left out."""
        if self.only_if is not None and getattr(owner, self.only_if[0]) != self.only_if[1]:
            return None
        value = getattr(owner, name)
        if value in self.omitted_at:
            return None
        value = dict(self.same).get(value, value)
        return self.at or ".".join(filter(None, (section, name))), value if self.as_word is None else self.as_word


KEYED = ClipKey()  # keyed as it is, in its section's part of the key
_MOMENTS_SCORER = ("scorer", "moments")
ClipKeys = dict[str, ClipKey | None]


@dataclass(frozen=True)
class DemoConfig:
    clips: int = 320
    seed: int = 0
    duration_s: float = 8.0
    preset: str = "easy"  # how hard the world is: easy, medium, hard, twins (docs/demo_worlds.md)

    # they make clips, not results
    CLIP_KEY: ClassVar[ClipKeys] = dict.fromkeys(("clips", "seed", "duration_s", "preset"), None)


@dataclass(frozen=True)
class DecodeConfig:
    fps: float = 10.0  # the paper's frame rate (its top-10 frame indices are at 10 fps)
    short_side: int = 224  # frames are resized so the short side has this many pixels, aspect kept
    sample_rate: int = 16000
    window_s: float = 3.0  # audio window centred on each frame
    # a clip with less audio than `window_s`: `tile` scores it with its waveform repeated to fill each window, as
    # the EZ-VSL and Sound2Scene loaders do (np.tile), and records `audio_tiled` in clips.parquet; `reject`
    # fails it as `too_short` (the behaviour before this option existed)
    short_clips: str = "tile"

    # short_clips is never part of the key: it changes only clips with less audio than one window, so caches made
    # before it existed (which failed those clips `too_short`) and caches of either setting keep every other clip.
    # A cached summary of a short clip is reused only where it holds under the run's setting
    # (`curation.clip_cache.reusable`): a `too_short` failure is redone under `tile`, a tiled score under `reject`
    CLIP_KEY: ClassVar[ClipKeys] = {"fps": KEYED, "short_side": KEYED, "sample_rate": KEYED, "window_s": KEYED,
                                    "short_clips": None}


@dataclass(frozen=True)
class ScoreConfig:
    scorer: str = "ssl"  # learned localisation; `synchrony` is the training-free baseline, `none` scores 0
    grid: int = 7  # the synchrony baseline correlates audio energy with change in grid x grid regions
    checkpoint: str | None = None  # ssl: a trained model; none trains one on the run's clips first (ssl-train)
    # `auto` reads it from the file: `native` (ssl-train), `ezvsl` (EZ-VSL / FNAC best.pth), `slavc`; the run
    # records the format found (docs/localisers_and_moments.md)
    checkpoint_format: str = "auto"
    # frames per forward pass: a clip of up to this many (10 s at 10 fps) is one batch, ~4 % faster in the pipeline
    # than 64 + the rest (docs/benchmarks.md, "Learned scorer"); a batch never holds two clips' frames
    batch_size: int = 100
    # the cross-clip score (score_contrastive): `margin`, the own match minus the bank_quantile of the matches of
    # the bank's sounds with other bank moments' pictures (chance pairings; localise/bank.py), so >= 0 means better
    # than that share of them; or the own match minus the mean match with other clips' audio ("frame"), frames
    # ("audio"), or both. 0.96 chosen on demo world seed 0 (docs/localisation.md, "Calibrated margin")
    contrast: str = "margin"
    bank_quantile: float = 0.96
    # an ssl-train checkpoint made with restarts carries them all: the scorer averages the scores and margins of
    # its `ensemble` lowest-loss models (fewer when it holds fewer; 1 = the chosen model alone). Published
    # checkpoints are one model. Costs one forward pass per model. 3, chosen on demo world seed 0: models from
    # different seeds confuse different look-alikes and lose different categories (docs/localisation.md,
    # "Restarts and ensembles")
    ensemble: int = 3
    # a published localiser's reference bank: built from this many of the run's clips, one moment each (0: none,
    # no contrastive score); an ssl-train checkpoint carries its own (ssl.bank_size). `bank`: a bank file
    # (curation.localise.bank.save_bank) for this model, used instead
    bank_clips: int = 256
    bank: str | None = None
    save_maps: bool = False  # write every frame's heat map to OUT/maps/<clip_id>.npy (float16)
    moments: str | None = None  # scorer `moments`: an official top1_boxes_top10_moments.json to curate from
    moments_first_frame: int = 1  # number of a clip's first frame in that file (official: 1; localise/moments.py)
    # where the ssl scorer's model runs: `cpu`, `cuda` / `cuda:N`, or `auto` (CUDA when the scoring worker has it;
    # scores then depend on which worker scored: name the device for reproducible reruns). docs/scale.md
    device: str = "cpu"
    # `bf16`: the model runs under bfloat16 autocast (scores within ~1e-2 of fp32; docs/scale.md has the measure)
    precision: str = "fp32"

    # options added later leave the keys of runs that do not use them as they were (no rescoring after an update):
    # an ssl run's format is resolved before the key is made; other scorers never resolve `auto`
    CLIP_KEY: ClassVar[ClipKeys] = {
        "scorer": KEYED, "grid": KEYED, "checkpoint": KEYED, "checkpoint_format": ClipKey(same=(("auto", "native"),)),
        "batch_size": KEYED, "contrast": KEYED, "bank_quantile": KEYED, "ensemble": ClipKey(omitted_at=(1,)),
        "bank_clips": KEYED, "bank": KEYED, "save_maps": KEYED,  # moments files count only for the moments scorer
        "moments": ClipKey(only_if=_MOMENTS_SCORER), "moments_first_frame": ClipKey(only_if=_MOMENTS_SCORER),
        "device": ClipKey(omitted_at=("cpu",)), "precision": ClipKey(omitted_at=("fp32",))}


@dataclass(frozen=True)
class SSLConfig:
    """The localisation model trained by `ssl-train` (CPU-sized by default) and its training."""

    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    # audio window centred on the frame: 0.5 s, not EZ-VSL's 3 s, because a long window around a silent moment
    # holds sound from the neighbouring seconds (docs/localisation.md, "Audio window": 3 s, 1 s, 0.5 s)
    window_s: float = 0.5
    image_maxpool: bool = False
    image_size: int = 64
    # width of the model's per-pixel colour branch (0 = none): without it, some seeds merged the blue square with
    # the cyan diamond of the demo world and kept mismatched clips (docs/localisation.md, "Colour branch")
    colour_branch: int = 16
    dim: int = 64
    n_fft: int = 512
    hop: int = 320  # 20 ms
    n_mels: int = 64
    train_fps: float = 2.0  # frames sampled per second of each clip for training
    # one model of 1,200 steps on two threads (docs/localisation.md, "Training speed"; before: two restarts of 600
    # steps side by side, and before that three restarts of 1,600 steps one after another)
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    # probability that a training frame's foreground is pasted on another clip's background (0 = off); assumes
    # a mostly static camera, as the per-clip median background does
    background_swap: float = 1.0
    # brightness/contrast/saturation jitter of training frames, factors in 1 +- this (0 = none). Off: with it, every
    # model trained on the demo world confused the blue square with the cyan diamond (docs/localisation.md)
    colour_jitter: float = 0.0
    bank_size: int = 64  # moments of other clips kept with the model for the contrastive score
    # share of each batch's clips drawn as groups of a clip and `hard_negative_group - 1` clips that look like it
    # but sound different, as the model currently sees them (re-mined at every checkpoint step): hard negatives,
    # meant to tell look-alike categories apart; at 0.5 they raised AP but kept more look-alikes on demo world 1
    # (docs/localisation.md, "Tried and not adopted"), so off (0 = every clip at random)
    hard_negatives: float = 0.0
    hard_negative_group: int = 4
    # training moments (0 = every moment, the default): with > 0, a frame whose moving foreground (the difference
    # from the clip's median background, as background swap finds it) covers less than this share of it is not
    # paired, its object off screen; a frame whose camera moved counts as showing something
    moment_foreground: float = 0.0
    # with > 0, an audio window whose RMS is below this multiple of the training windows' quiet level (their 5th
    # percentile) is not paired, silence. 0.02 and 2.0 raised recall and cut mismatches on the `medium` demo world
    # but kept more no-object and mismatched clips on `easy` seeds 1 and 2 (docs/localisation.md, "Training
    # moments"): not default
    moment_loudness: float = 0.0
    # with > -1, a clip's moments pair only where its foreground's size and its loudness rise and fall together:
    # the correlation, over the moments the two rules above keep, of the square root of the foreground's share of
    # the frame and the log RMS of the window must exceed this (a clip with fewer than four such moments does not
    # pair). An object that approaches gets louder; an object shown while another sounds does not follow it
    # (docs/localisation.md, "Training moments"). -1 = off
    moment_synchrony: float = -1.0
    # from `clean_from` of the steps on, batches draw only the `clean_share` of clips whose sound and picture the
    # model finds most in agreement against every other clip's (re-judged at every checkpoint step): the clips
    # whose visible object is not what sounds stop teaching it that pairing (1 = every clip, always)
    clean_share: float = 1.0
    clean_from: float = 0.5
    # steps between checkpoints; hard negatives and cleaning are re-judged on the same steps, so a resumed
    # training re-judges with the same weights
    checkpoint_every: int = 100
    # trainings from different seeds (ssl.seed * restarts + k); the one whose loss ends lowest is the checkpoint's
    # model and carries the others as ensemble members (score.ensemble scores with several). The same settings
    # gave localisers of very different quality by seed alone (docs/localisation.md, "Restarts and ensembles")
    restarts: int = 1
    seed: int = 0
    # CPU threads of one training (its bits depend on it: the summation order); restarts side by side take
    # `threads` cores each
    threads: int = 2
    # restarts trained at once, each in its own process on `threads` cores; 0 = as many as the machine's cores hold
    # on the CPU, one at a time on CUDA or under torchrun. How they run, not what they learn: a restart is the same
    # bits alone or beside others, so the model's folder name leaves this out
    parallel_restarts: int = 0
    # at most this many clips train the model (a sample fixed by clip id); none = every usable clip
    max_clips: int | None = None
    # decoded clips held in memory at once (~1 MB each for 10-s clips): the training clips are split into chunks of
    # at most this many, each trained on for its share of the steps, so memory does not grow with the clip list
    buffer_clips: int = 2048
    device: str = "auto"  # `auto`: CUDA when this machine has it, else the CPU
    # `bf16`: forward and loss under bfloat16 autocast (weights and optimizer stay float32); the model and images
    # train channels_last whatever the precision (docs/localisation.md, "Training speed")
    precision: str = "fp32"
    # how frames and sound become model inputs: `native` (centre square, log-mel of `window_s`) or `ezvsl`, the
    # published EZ-VSL inputs (whole frame stretched bicubic, 257 x 200 scipy spectrogram of 3 s), which a
    # model of the published layout needs for `ssl-export --format ezvsl` (curation.localise.model)
    preprocess: str = "native"
    # a torchvision ResNet-18 state dict (e.g. ImageNet's resnet18-f37072fd.pth, given by the user, never
    # downloaded) that initialises the image trunk, as EZ-VSL does; needs widths = [64, 128, 256, 512]
    image_init: str | None = None

    # none in the per-clip key: the trained model's content (its digest) stands for them
    CLIP_KEY: ClassVar[ClipKeys] = dict.fromkeys((
        "widths", "window_s", "image_maxpool", "image_size", "colour_branch", "dim", "n_fft", "hop", "n_mels",
        "train_fps", "steps", "batch_size", "lr", "weight_decay", "temperature", "background_swap", "colour_jitter",
        "bank_size", "hard_negatives", "hard_negative_group", "moment_foreground", "moment_loudness",
        "moment_synchrony", "clean_share", "clean_from", "checkpoint_every", "restarts", "seed", "threads",
        "parallel_restarts", "max_clips", "buffer_clips", "device", "precision", "preprocess", "image_init"), None)

    def settings(self) -> dict:
        """The options as the name of a trained model's folder (OUT/ssl/<hash>) hashes them: options added after
        that name was introduced count only when set away from the value that trains as before they existed
        (`_LATER_SSL_OPTIONS`), so an update retrains only where what it trains differs."""
        settings = dict(self.__dict__)
        del settings["parallel_restarts"]
        for key, default in _LATER_SSL_OPTIONS.items():
            if settings[key] == default:
                del settings[key]
        return settings

    @property
    def moment_rules_read_foreground(self) -> bool:
        """A training-moment rule reads each frame's moving foreground (`moment_foreground`, `moment_synchrony`)."""
        return self.moment_foreground > 0 or self.moment_synchrony > -1

    @property
    def moment_rules_read_loudness(self) -> bool:
        """A training-moment rule reads each window's RMS (`moment_loudness`, `moment_synchrony`)."""
        return self.moment_loudness > 0 or self.moment_synchrony > -1


_LATER_SSL_OPTIONS = {"precision": "fp32", "preprocess": "native", "image_init": None, "moment_foreground": 0.0,
                      "moment_loudness": 0.0, "moment_synchrony": -1.0}


@dataclass(frozen=True)
class SelectConfig:
    top_k: int = 3  # moments kept per clip: best frame -> `jpg`, the others -> `top2.jpg` ...
    min_gap_s: float = 0.5  # kept moments are at least this far apart (no near-duplicate frames)
    # a moment scores the lowest frame score within +-moment_window_s/2 (0 = its own): frames at the border of
    # a sounding stretch, whose audio window still (or already) holds the sound, rank below its middle
    moment_window_s: float = 0.4
    # what ranks clips: `score` or `score_contrastive` (falls back to `score` where the scorer has none). The
    # margin (score.contrast) is calibrated: 0 = as good as the best 4 % of chance pairings of other clips
    clip_score: str = "score_contrastive"
    # drop clips whose clip score is below this: with the margin, a threshold that holds whatever share of the
    # clips is good (a quantile alone keeps mismatched clips when good ones are fewer; docs/localisation.md)
    min_clip_score: float | None = 0.0
    keep_quantile: float | None = 0.65  # keep this top fraction of scored clips (None keeps all)
    # rank and cut within each label (keep_quantile of each label's clips), so no label is emptied by one
    # global threshold; min_per_label keeps at least that many of a label's best clips whatever the quantile
    per_label: bool = False
    min_per_label: int = 0

    # the moments chosen in a clip are part of its result (at the key's top level, as when the key was introduced);
    # which clips are kept is decided across clips, after every clip's result
    AFTER_SCORING: ClassVar[bool] = True
    CLIP_KEY: ClassVar[ClipKeys] = {
        "top_k": ClipKey(at="top_k"), "min_gap_s": ClipKey(at="min_gap_s"),
        "moment_window_s": ClipKey(at="moment_window_s"), "clip_score": ClipKey(at="clip_score"),
        "min_clip_score": None, "keep_quantile": None, "per_label": None, "min_per_label": None}


@dataclass(frozen=True)
class FilterConfig:
    """Data-quality filters (docs/quality_filters.md): always recorded in clips.parquet, `reject_*` also drop.

    They are decided from per-clip signals at selection time, so `curation select` can change them."""

    still_motion: float = 1.0  # still: the moving part of the thumbnail changes less than this (grey levels)
    silent_db: float = -50.0  # silent: 90 % of the clip's 100-ms blocks are below this level (dBFS)
    dup_hamming: int = 10  # two frames' smooth pictures match when their 64-bit hashes differ in <= this many bits
    dup_frames: float = 0.8  # duplicates: this fraction of the overlapping frames match at one alignment
    dup_detail: float = 0.6  # two frames' fine detail matches: this fraction of the more detailed one's agrees
    dup_peaks: float = 0.4  # two sounds with peaks match: this fraction of the sparser one's peaks coincide
    dup_audio_corr: float = 0.9  # two sounds without peaks: their loudness envelopes correlate this much there
    dup_min_overlap_s: float = 3.0  # ... over at least this long a stretch
    dup_spectrum_db: float = 10.0  # ... and no quarter-tone band of their mean spectra differs by more (dB)
    reject_still: bool = True
    reject_silent: bool = False
    reject_duplicates: bool = True  # one representative (the smallest clip_id) of each group is kept
    reject_overlaps: bool = False

    AFTER_SCORING: ClassVar[bool] = True
    CLIP_KEY: ClassVar[ClipKeys] = dict.fromkeys((
        "still_motion", "silent_db", "dup_hamming", "dup_frames", "dup_detail", "dup_peaks", "dup_audio_corr",
        "dup_min_overlap_s", "dup_spectrum_db", "reject_still", "reject_silent", "reject_duplicates",
        "reject_overlaps"), None)


@dataclass(frozen=True)
class WriteConfig:
    samples_per_shard: int = 256
    jpeg_quality: int = 90
    name: str | None = None  # shard name prefix; default `<dataset>-<split>`

    AFTER_SCORING: ClassVar[bool] = True
    # a clip's result holds its chosen frames as JPEG (at the key's top level, as when the key was introduced)
    CLIP_KEY: ClassVar[ClipKeys] = {"samples_per_shard": None, "jpeg_quality": ClipKey(at="jpeg_quality"),
                                    "name": None}


@dataclass(frozen=True)
class DaskConfig:
    scheduler: str | None = None  # address of an existing cluster; None starts a LocalCluster
    workers: int | None = None  # LocalCluster worker processes; None = one per core
    clips_per_task: int = 4
    tasks_in_flight_per_worker: int = 2
    retries: int = 2
    memory_limit: str = "6GB"
    # a Dask worker resource (e.g. "GPU") that scoring needs: CPU workers fetch, decode and prepare the model's
    # inputs, a worker offering the resource (`dask worker ... --resources GPU=1`; one of a LocalCluster's workers
    # offers it) scores each task's clips in batches across clips, CPU workers finish (docs/scale.md).
    # None: each task scores its own clips where it runs (the default, fastest on CPU-only clusters)
    score_resource: str | None = None

    # with a scoring resource, batches go across clips: a clip's scores may differ from per-clip batches' in the
    # last bits, so the two layouts never share cache files
    CLIP_KEY: ClassVar[ClipKeys] = {
        "scheduler": None, "workers": None, "clips_per_task": None, "tasks_in_flight_per_worker": None,
        "retries": None, "memory_limit": None,
        "score_resource": ClipKey(at="score.batches", omitted_at=(None, ""), as_word="across_clips")}


@dataclass(frozen=True)
class FetchConfig:
    """Fetching url / YouTube clips (yt-dlp + ffmpeg); docs/youtube_and_vegas.md, "Options", explains each option."""

    format: str | None = None  # yt-dlp format selector; none = h264 <= max_height first, then any codec
    max_height: int = 360  # preferred video height; stored clips have at most this short side
    margin_s: float = 1.0  # decoding starts this much before the cut (pre-roll), never the stored clip
    socket_timeout_s: float = 20.0  # every network read (yt-dlp and ffmpeg) gives up after this long
    timeout_s: float = 300.0  # the whole section download + standardisation of one clip
    retries: int = 3  # further attempts for network / timeout / rate_limited / server_error
    backoff_s: float = 2.0  # first retry delay; doubles each attempt, +-50 % jitter
    backoff_max_s: float = 120.0  # longest wait before a retry (a longer Retry-After fails the clip now)
    cookies: str | None = None  # Netscape cookies.txt, read only (never written back)
    proxy: str | None = None  # http://[user:pass@]host:port, used by yt-dlp and ffmpeg
    per_host: int = 4  # concurrent fetches per host across the whole Dask cluster
    rate_limit: float | None = None  # fetch starts per second per host across the cluster (none: no limit)
    stop_after: int = 10  # consecutive rate_limited / bot_check clips that stop the run (0: never)
    retry_failed: bool = False  # refetch clips whose cached failure is transient (RETRY_FAILED=1)
    js_runtimes: str | None = None  # yt-dlp JavaScript runtimes for YouTube, e.g. "deno,node" (none: yt-dlp's)
    max_download_mb: int = 2048  # largest source read whole from a host that cannot seek (HTTP ranges)

    # none in the per-clip key: they change how a clip is fetched into OUT/raw/, which later runs reuse as it is
    CLIP_KEY: ClassVar[ClipKeys] = dict.fromkeys((
        "format", "max_height", "margin_s", "socket_timeout_s", "timeout_s", "retries", "backoff_s", "backoff_max_s",
        "cookies", "proxy", "per_host", "rate_limit", "stop_after", "retry_failed", "js_runtimes", "max_download_mb"),
        None)


@dataclass(frozen=True)
class SourceConfig:
    """Where already-downloaded clips lie (docs/mirrors.md): a folder, an archive or a glob of archives, local
    or an fsspec URL (`s3://bucket/vggsound_*.tar.gz`); none: fetch each clip from its url / YouTube."""

    path: str | None = None

    CLIP_KEY: ClassVar[ClipKeys] = {"path": None}  # where a clip is read from, not what is made of it


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "demo"
    meta: str | None = None  # the clip list (not needed for the demo world)
    label_map: str | None = None  # vegas: AudioSet class_labels_indices.csv (default: beside the segment csv)
    out: str = "work/demo"
    demo: DemoConfig = field(default_factory=DemoConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    dask: DaskConfig = field(default_factory=DaskConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    source: SourceConfig = field(default_factory=SourceConfig)

    # what the run reads and where it writes, not what is made of a clip; each section declares its own options
    CLIP_KEY: ClassVar[ClipKeys] = {"dataset": None, "meta": None, "label_map": None, "out": None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def clip_key(self, model_digest: str | None = None) -> dict[str, Any]:
        """What keys the per-clip cache: every option that changes a clip's decoded+scored result, as its class's
        `CLIP_KEY` declares it (the decode and score sections, per-clip selection), and the scoring model's content."""
        key: dict[str, Any] = {"model": model_digest}
        for dotted, spec in CLIP_KEY_OPTIONS.items():
            section, _, name = dotted.rpartition(".")
            entry = spec.entry(getattr(self, section) if section else self, name, section)
            if entry is not None:
                *parents, leaf = entry[0].split(".")
                place = key
                for part in parents:
                    place = place.setdefault(part, {})
                place[leaf] = entry[1]
        return key

    def clip_stage_fingerprint(self, model_digest: str | None = None) -> str:
        """Hash of `clip_key` (keys the per-clip cache: OUT/cache/<fingerprint>/)."""
        return hashlib.sha256(json.dumps(self.clip_key(model_digest), sort_keys=True).encode()).hexdigest()[:12]


def _declared_options() -> tuple[dict[str, ClipKey], tuple[str, ...]]:
    """(dotted option -> ClipKey for every option in the per-clip key, sections decided after scoring), from the
    classes' declarations; an option that a class does not declare (or a declaration of no option) is an error."""
    keyed, after_scoring = {}, []
    sections = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)
                if f.default_factory is not dataclasses.MISSING}
    for section, cls in {"": RunConfig, **sections}.items():
        names = [f.name for f in dataclasses.fields(cls) if not (cls is RunConfig and f.name in sections)]
        missing, unknown = sorted(set(names) - set(cls.CLIP_KEY)), sorted(set(cls.CLIP_KEY) - set(names))
        if missing or unknown:
            raise TypeError(f"{cls.__name__}.CLIP_KEY must declare exactly its options: missing {missing}, "
                            f"unknown {unknown}")
        keyed.update({".".join(filter(None, (section, name))): cls.CLIP_KEY[name] for name in names
                      if cls.CLIP_KEY[name] is not None})
        if getattr(cls, "AFTER_SCORING", False):
            after_scoring.append(section)
    return keyed, tuple(after_scoring)


# the options in the per-clip cache key, and the sections `curation select` may change without re-scoring
CLIP_KEY_OPTIONS, AFTER_SCORING_SECTIONS = _declared_options()


_Need = Callable[[bool, str], None]  # records a problem (the message) when the condition is false


def _check(cfg: RunConfig, problems: list[str]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(cfg.dataset in DATASETS, f"dataset: must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    need(cfg.dataset not in DATASETS or cfg.dataset == "demo" or bool(cfg.meta),
         f"meta: a clip list is required for dataset {cfg.dataset!r} (META= / --meta path/to/list)")
    need(cfg.source.path is None or cfg.dataset != "demo", "source.path: the demo world makes its own clips")
    need(cfg.demo.clips >= 1, "demo.clips: must be >= 1")
    need(cfg.demo.preset in PRESETS, f"demo.preset: must be one of {', '.join(PRESETS)}, got {cfg.demo.preset!r}")
    _check_decode(cfg, need)
    _check_score(cfg, need)
    _check_ssl(cfg, need)
    _check_select(cfg, need)
    _check_filters(cfg.filters, need)
    need(cfg.write.samples_per_shard >= 1, "write.samples_per_shard: must be >= 1")
    need(1 <= cfg.write.jpeg_quality <= 100, "write.jpeg_quality: must be in 1..100")
    _check_dask(cfg, need)
    _check_fetch(cfg.fetch, need)


def _check_decode(cfg: RunConfig, need: _Need) -> None:
    need(cfg.decode.fps > 0, "decode.fps: must be > 0")
    need(16 <= cfg.decode.short_side <= 2048, "decode.short_side: must be in 16..2048")
    need(cfg.decode.sample_rate >= 8000, "decode.sample_rate: must be >= 8000")
    need(cfg.decode.window_s > 0, "decode.window_s: must be > 0")
    need(cfg.decode.short_clips in SHORT_CLIPS,
         f"decode.short_clips: must be one of {', '.join(SHORT_CLIPS)}, got {cfg.decode.short_clips!r}")


def _check_score(cfg: RunConfig, need: _Need) -> None:
    need(cfg.score.scorer in SCORERS, f"score.scorer: must be one of {', '.join(SCORERS)}")
    need(cfg.score.grid >= 1, "score.grid: must be >= 1")
    need(cfg.score.checkpoint_format in CHECKPOINT_FORMATS,
         f"score.checkpoint_format: must be one of {', '.join(CHECKPOINT_FORMATS)}")
    need(cfg.score.contrast in CONTRASTS, f"score.contrast: must be one of {', '.join(CONTRASTS)}")
    need(cfg.score.batch_size >= 1, "score.batch_size: must be >= 1")
    need(0 <= cfg.score.bank_quantile <= 1, "score.bank_quantile: must be in 0..1")
    need(cfg.score.ensemble >= 1, "score.ensemble: must be >= 1")
    need(cfg.score.bank_clips >= 0, "score.bank_clips: must be >= 0")
    missing = scorer_registry.missing_input(cfg.score)  # e.g. SCORER=moments needs MOMENTS=
    need(missing is None, str(missing))
    need(cfg.score.checkpoint_format in ("auto", "native") or bool(cfg.score.checkpoint),
         f"score.checkpoint_format: {cfg.score.checkpoint_format} needs CHECKPOINT= the published file")
    need(cfg.score.moments_first_frame in (0, 1), "score.moments_first_frame: must be 0 or 1")
    need(re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.score.device) is not None,
         f"score.device: must be cpu, cuda, cuda:N or auto, got {cfg.score.device!r}")
    need(cfg.score.precision in PRECISIONS, f"score.precision: must be one of {', '.join(PRECISIONS)}, "
         f"got {cfg.score.precision!r}")
    on_cpu = cfg.score.device == "cpu" and cfg.score.precision == "fp32"
    need(scorer_registry.runs_model(cfg.score.scorer) or on_cpu,
         f"score.device / score.precision: only the {scorer_registry.model_scorers()} scorer runs a model "
         f"({cfg.score.scorer} runs on the CPU)")


def _check_ssl(cfg: RunConfig, need: _Need) -> None:
    need(all(w >= 1 for w in cfg.ssl.widths), "ssl.widths: must be positive")
    need(cfg.ssl.image_size >= 32, "ssl.image_size: must be >= 32")
    need(cfg.ssl.steps >= 1 and cfg.ssl.batch_size >= 4, "ssl.steps/batch_size: must be >= 1 / >= 4")
    need(cfg.ssl.train_fps > 0, "ssl.train_fps: must be > 0")
    need(0 <= cfg.ssl.background_swap <= 1, "ssl.background_swap: must be in 0..1")
    need(0 <= cfg.ssl.hard_negatives <= 1, "ssl.hard_negatives: must be in 0..1")
    need(0 <= cfg.ssl.colour_jitter < 1, "ssl.colour_jitter: must be in [0, 1)")
    need(cfg.ssl.colour_branch >= 0, "ssl.colour_branch: must be >= 0")
    need(cfg.ssl.restarts >= 1, "ssl.restarts: must be >= 1")
    need(cfg.ssl.parallel_restarts >= 0, "ssl.parallel_restarts: must be >= 0 (0: as many as the cores hold)")
    need(0 <= cfg.ssl.moment_foreground < 1, "ssl.moment_foreground: must be in [0, 1)")
    need(cfg.ssl.moment_loudness >= 0, "ssl.moment_loudness: must be >= 0")
    need(-1 <= cfg.ssl.moment_synchrony < 1, "ssl.moment_synchrony: must be in [-1, 1)")
    need(0 < cfg.ssl.clean_share <= 1 and 0 <= cfg.ssl.clean_from < 1,
         "ssl.clean_share / clean_from: must be in (0, 1] / [0, 1)")
    need(2 <= cfg.ssl.hard_negative_group <= cfg.ssl.batch_size // 2,
         "ssl.hard_negative_group: must be in 2..batch_size/2")
    need(0 < cfg.ssl.window_s <= cfg.decode.window_s, "ssl.window_s: must be > 0 and <= decode.window_s")
    need(cfg.ssl.max_clips is None or cfg.ssl.max_clips >= 4, "ssl.max_clips: must be >= 4 (or none)")
    need(cfg.ssl.buffer_clips >= 4, "ssl.buffer_clips: must be >= 4")
    need(cfg.ssl.device in ("auto", "cpu", "cuda") or cfg.ssl.device.startswith("cuda:"),
         "ssl.device: auto, cpu, cuda or cuda:N")
    need(cfg.ssl.precision in PRECISIONS, f"ssl.precision: must be one of {', '.join(PRECISIONS)}")
    need(cfg.ssl.preprocess in PREPROCESSING, f"ssl.preprocess: must be one of {', '.join(PREPROCESSING)}")
    need(cfg.ssl.preprocess != "ezvsl" or (cfg.ssl.window_s == 3.0 and cfg.decode.sample_rate == 16000),
         "ssl.preprocess = ezvsl: EZ-VSL's front end takes 3 s of 16 kHz audio (ssl.window_s = 3.0, "
         "decode.sample_rate = 16000)")
    need(cfg.ssl.image_init is None or tuple(cfg.ssl.widths) == (64, 128, 256, 512),
         "ssl.image_init: a torchvision ResNet-18 file needs ssl.widths = [64, 128, 256, 512]")
    need(cfg.ssl.image_init is None or Path(cfg.ssl.image_init).is_file(),
         f"ssl.image_init: no such file {cfg.ssl.image_init!r}")


def _check_select(cfg: RunConfig, need: _Need) -> None:
    need(cfg.select.top_k >= 1, "select.top_k: must be >= 1")
    need(cfg.select.min_gap_s >= 0, "select.min_gap_s: must be >= 0")
    need(cfg.select.moment_window_s >= 0, "select.moment_window_s: must be >= 0")
    need(cfg.select.clip_score in CLIP_SCORES, f"select.clip_score: must be one of {', '.join(CLIP_SCORES)}")
    q = cfg.select.keep_quantile
    need(q is None or 0 < q <= 1, "select.keep_quantile: must be in (0, 1] or empty")
    need(cfg.select.min_per_label >= 0, "select.min_per_label: must be >= 0")


def _check_dask(cfg: RunConfig, need: _Need) -> None:
    need(cfg.dask.workers is None or cfg.dask.workers >= 1, "dask.workers: must be >= 1")
    need(cfg.dask.clips_per_task >= 1, "dask.clips_per_task: must be >= 1")
    need(cfg.dask.tasks_in_flight_per_worker >= 1, "dask.tasks_in_flight_per_worker: must be >= 1")
    need(cfg.dask.retries >= 0, "dask.retries: must be >= 0")
    need(cfg.dask.score_resource is None or re.fullmatch(r"[A-Za-z_][\w-]*", cfg.dask.score_resource) is not None,
         "dask.score_resource: a Dask resource name like GPU, or empty")
    need(cfg.dask.score_resource is None or scorer_registry.runs_model(cfg.score.scorer),
         f"dask.score_resource: only the {scorer_registry.model_scorers()} scorer runs on a scoring worker "
         f"({cfg.score.scorer} scores where it decodes); leave it empty")


def _check_filters(f: FilterConfig, need) -> None:
    need(f.still_motion >= 0, "filters.still_motion: must be >= 0")
    need(-120 <= f.silent_db <= 0, "filters.silent_db: must be in -120..0 (dBFS)")
    need(0 <= f.dup_hamming <= 32, "filters.dup_hamming: must be in 0..32")
    need(0 < f.dup_frames <= 1, "filters.dup_frames: must be in (0, 1]")
    need(0 < f.dup_detail <= 1, "filters.dup_detail: must be in (0, 1]")
    need(0 < f.dup_peaks <= 1, "filters.dup_peaks: must be in (0, 1]")
    need(-1 <= f.dup_audio_corr <= 1, "filters.dup_audio_corr: must be in -1..1")
    need(f.dup_min_overlap_s > 0, "filters.dup_min_overlap_s: must be > 0")
    need(f.dup_spectrum_db > 0, "filters.dup_spectrum_db: must be > 0")


def _check_fetch(f: FetchConfig, need) -> None:
    need(16 <= f.max_height <= 4320, "fetch.max_height: must be in 16..4320")
    need(f.margin_s >= 0, "fetch.margin_s: must be >= 0")
    need(f.socket_timeout_s > 0 and f.timeout_s > 0, "fetch.socket_timeout_s / fetch.timeout_s: must be > 0")
    need(f.retries >= 0, "fetch.retries: must be >= 0")
    need(0 <= f.backoff_s <= f.backoff_max_s, "fetch.backoff_s: must be in 0..fetch.backoff_max_s")
    need(f.cookies is None or Path(f.cookies).is_file(), f"fetch.cookies: no such file {f.cookies!r}")
    # ffmpeg reads the media itself and speaks only http proxies: any other kind would leak the real address.
    need(f.proxy is None or re.fullmatch(r"http://[^\s/]+/?", f.proxy) is not None,
         "fetch.proxy: must be http://[user:pass@]host:port (ffmpeg supports no other proxy kind)")
    need(f.per_host >= 1, "fetch.per_host: must be >= 1")
    need(f.rate_limit is None or f.rate_limit > 0, "fetch.rate_limit: must be > 0 or empty")
    need(f.stop_after >= 0, "fetch.stop_after: must be >= 0")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """A config from its dict form (as saved in run.json), checked like a file."""
    return typed_from_dict(RunConfig, data, _check)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                assignments: list[str] | None = None) -> RunConfig:
    """Config from an optional TOML file, then `overrides` (dotted keys), then `key=value` assignments."""
    return load_typed(RunConfig, _check, path, overrides, assignments)
