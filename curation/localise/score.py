"""Score stage: per-frame audio-visual correspondence (higher = the sound comes from what is on screen).

A scorer maps a decoded clip (frames + one audio window per frame) to a score per frame and optionally a
coarse heat map per frame. Scorers are loaded once per worker process (`localise.scorers.load_scorer`); the kinds
here (`NoneKind`, `SynchronyKind`) are lines of `localise.registry`.
"""

from __future__ import annotations

import numpy as np

from curation.config import ScoreConfig
from curation.decode import DecodedClip
from curation.localise.bank import bank_matches, load_bank, null_threshold
from curation.localise.clip_scores import ClipScores
from curation.localise.device import DeviceScorer, FrameScores, ModelInputs
from curation.localise.scorers import Scorer, ScorerKind


class NoScorer(Scorer):
    """Scores every frame 0: selection then keeps the earliest spaced moments of every clip (a speed baseline)."""

    model_id = "none"

    def score(self, clip: DecodedClip) -> ClipScores:
        return ClipScores(scores=np.zeros(len(clip.times), dtype=np.float32))


class NoneKind(ScorerKind):
    def build(self, score: ScoreConfig) -> Scorer:
        return NoScorer()


def _sliding_pearson(x: np.ndarray, y: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Pearson correlation of x (T,) with each column of y (T, R) over windows [s, s + width)."""
    windows = starts[:, None] + np.arange(width)[None, :]  # (T, width)
    xw = x[windows]  # (T, width)
    yw = y[windows]  # (T, width, R)
    xc = xw - xw.mean(axis=1, keepdims=True)
    yc = yw - yw.mean(axis=1, keepdims=True)
    cov = np.einsum("tw,twr->tr", xc, yc)
    norm = np.sqrt((xc**2).sum(axis=1))[:, None] * np.sqrt((yc**2).sum(axis=1))
    return np.where(norm > 1e-12, cov / np.maximum(norm, 1e-12), 0.0)


class SynchronyScorer(Scorer):
    """Training-free audio-visual synchrony (Hershey & Movellan, "Audio Vision", NIPS 2000).

    Per frame, the audio energy envelope and the visual change of each grid region are correlated over the
    frame's audio window; the mutual information of that Gaussian model, -1/2 log(1 - rho^2), counted only
    for positive correlation (a region that changes when the sound gets louder), is the region's score; the
    frame's score is its best region, and the map is the correlation per region.
    """

    def __init__(self, grid: int):
        self.grid = grid
        self.model_id = f"synchrony-hm2000-grid{grid}"

    def _region_change(self, frames: np.ndarray) -> np.ndarray:
        """(T, grid*grid) mean absolute brightness change per region between consecutive frames.

        Computed on every second pixel in integers: region means of change need no full-resolution floats,
        and this keeps the baseline cheaper than decoding.
        """
        grey = frames[:, ::2, ::2].astype(np.int16).sum(axis=3)  # R+G+B, at most 765
        t, h, w = grey.shape
        g = self.grid
        hh, ww = (h // g) * g, (w // g) * g
        grey = grey[:, :hh, :ww]
        diff = np.empty_like(grey)
        diff[1:] = np.abs(grey[1:] - grey[:-1])
        diff[0] = diff[1] if t > 1 else 0
        cells = diff.reshape(t, g, hh // g, g, ww // g).sum(axis=(2, 4), dtype=np.float64)
        return cells.reshape(t, g * g) / (3.0 * (hh // g) * (ww // g))

    def _energy(self, clip: DecodedClip) -> np.ndarray:
        """Log RMS of the audio in the frame interval around each frame time."""
        half = int(round(clip.sample_rate * (clip.times[1] - clip.times[0]) / 2)) if len(clip.times) > 1 else 1
        centre = np.round(clip.times * clip.sample_rate).astype(np.int64)
        lo = np.clip(centre - half, 0, len(clip.audio) - 1)
        hi = np.clip(centre + half, lo + 1, len(clip.audio))
        power = np.concatenate([[0.0], np.cumsum(clip.audio.astype(np.float64) ** 2)])
        return np.log(np.sqrt((power[hi] - power[lo]) / (hi - lo)) + 1e-4)

    def score(self, clip: DecodedClip) -> ClipScores:
        n = len(clip.times)
        fps = 1.0 / (clip.times[1] - clip.times[0]) if n > 1 else 1.0
        width = min(n, max(2, int(round(clip.window_s * fps))))
        starts = np.clip(np.arange(n) - width // 2, 0, n - width)
        rho = _sliding_pearson(self._energy(clip), self._region_change(clip.frames), starts, width)
        positive = np.clip(rho, 0.0, 0.999)
        mutual_info = -0.5 * np.log1p(-(positive**2))
        return ClipScores(scores=mutual_info.max(axis=1).astype(np.float32),
                          maps=rho.reshape(n, self.grid, self.grid).astype(np.float32))


class SynchronyKind(ScorerKind):
    def build(self, score: ScoreConfig) -> Scorer:
        return SynchronyScorer(score.grid)


class LearnedScorer(DeviceScorer):
    """The EZ-VSL-style localisation model trained by ssl-train (published checkpoints: `localise.published`):
    raw score = the best map position's cosine similarity with the frame's own audio. The contrastive score
    compares that with the bank of other clips' moments stored with the model: by default the calibrated margin
    of `localise.bank` (is this picture among the best matches of this sound, and this sound among the best
    matches of this picture?); the older modes subtract the mean match of the frame with the bank's audio (a
    frame that matches any sound is not evidence) and/or of the audio with the bank's frames. With
    `score.ensemble` > 1, the checkpoint's best restarts each score the frame against their own banks and the
    scores, maps and margins are averaged: models from different seeds err on different categories. Runs on
    `score.device` in `score.precision` (`curation.localise.device`)."""

    def __init__(self, cfg: ScoreConfig):
        import torch

        from curation.errors import CheckpointError
        from curation.localise.checkpoint import file_digest, load_members
        from curation.localise.model import audio_front_end

        if not cfg.checkpoint:
            raise ValueError("score.checkpoint is required for the ssl scorer (train one with ssl-train)")
        torch.set_num_threads(1)  # one worker process per core
        members = load_members(cfg.checkpoint, cfg.ensemble)
        digest = file_digest(cfg.checkpoint)
        if cfg.bank:  # a bank built from other clips replaces the one trained with the model
            if len(members) > 1:
                raise CheckpointError(f"score.bank is one model's bank, and {cfg.checkpoint} scores as an ensemble of "
                                      f"{len(members)}: leave score.bank empty or set score.ensemble = 1")
            members = [(members[0][0], load_bank(cfg.bank, digest))]
        self.models = [model for model, _ in members]
        self.model = self.models[0]
        self.front = audio_front_end(self.model.cfg).eval()
        self.place([*self.models, self.front], cfg.device, cfg.precision, cfg.batch_size)
        self.banks = [None if bank is None else {name: b.to(self.device) for name, b in bank.items()}
                      for _, bank in members]
        self.contrast = cfg.contrast
        if cfg.contrast == "margin":
            self.thresholds = [None if bank is None else null_threshold(bank, cfg.bank_quantile) for bank in self.banks]
        ensemble = f"-ens{len(members)}" if len(members) > 1 else ""
        self.model_id = f"ssl-native-{digest[:12]}{ensemble}"

    def _resized(self, frames: np.ndarray):
        """(T, H, W, 3) uint8 frames -> (T, 3, S, S) uint8 model inputs, as the model was trained
        (`curation.localise.model.model_images`)."""
        from curation.localise.model import model_images

        return model_images(frames, self.model.cfg)

    def _windows(self, audio, times):
        from curation.localise.model import audio_windows

        cfg = self.model.cfg
        return audio_windows(audio.to(self.device), times.to(self.device), cfg.window_s, cfg.sample_rate)

    def _contrastive(self, k: int, own, image_maps, vectors):
        """Model k's own match against its bank: minus the calibrated threshold (`curation.localise.bank`,
        "margin"), or minus the mean match of the frame with the bank's audio ("frame"), of the audio with the
        bank's frames ("audio"), or both."""
        if self.contrast == "margin":
            return own - self.thresholds[k]
        audio_side, frame_side = (m.mean(dim=1) for m in bank_matches(image_maps, vectors, self.banks[k]))
        return own - {"frame": frame_side, "audio": audio_side, "both": (frame_side + audio_side) / 2}[self.contrast]

    def forward(self, images, waves) -> FrameScores:
        """The per-batch math: images (B, 3, S, S) in [0, 1] and audio windows (B, S) on the device -> per frame
        the map's best position, the map, and the contrastive score, each the mean over the ensemble's models."""
        spectrograms = self.front(waves)
        best, maps, contrast = [], [], []
        for k, model in enumerate(self.models):
            image_maps = model.image_maps(images)
            vectors = model.audio_vectors(spectrograms)
            loc = model.localization(image_maps, vectors)
            best.append(loc.flatten(1).amax(dim=1))
            maps.append(loc)
            if self.banks[k] is not None:
                contrast.append(self._contrastive(k, best[-1], image_maps, vectors))
        if len(self.models) == 1:
            return FrameScores(best[0], maps[0], contrast[0] if contrast else None)
        import torch

        whole = len(contrast) == len(self.models)
        return FrameScores(torch.stack(best).mean(dim=0), torch.stack(maps).mean(dim=0),
                           torch.stack(contrast).mean(dim=0) if whole else None)

    def batch(self, clip: DecodedClip, rows: slice):
        """`forward`'s inputs for some of a clip's frames (the per-clip path)."""
        import torch

        return (self.device_images(self._resized(clip.frames[rows])),
                self._windows(torch.from_numpy(clip.audio), torch.from_numpy(clip.times[rows])))

    def inputs(self, clip: DecodedClip) -> ModelInputs:
        """A clip's model inputs for a scoring worker: the resized frames and the waveform."""
        import torch

        return ModelInputs(self._resized(clip.frames), torch.from_numpy(clip.audio), torch.from_numpy(clip.times))

    def frame_audio(self, inputs: ModelInputs):
        return self._windows(inputs.audio, inputs.times)
