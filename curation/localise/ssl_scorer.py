"""The `ssl` scorer kind: a localisation model, the native one `ssl-train` makes or a published EZ-VSL / FNAC /
SLAVC checkpoint, told apart by the file.

At a run's start a given checkpoint is checked (and a published one gets its reference bank,
`published.ensure_bank`); with none given, a model is trained on the run's clips into `OUT/ssl/<settings>/` once
and reused by later runs with the same settings. Each worker builds `score.LearnedScorer` or
`published.PublishedScorer` from the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from curation import storage
from curation.clip_cache import ClipJob
from curation.config import ConfigError, RunConfig, ScoreConfig
from curation.localise.checkpoint import file_digest
from curation.localise.device import resolve_device
from curation.localise.distributed import join
from curation.localise.published import PublishedScorer, checkpoint_format, ensure_bank, resolve_checkpoint
from curation.localise.score import LearnedScorer
from curation.localise.scorers import Scorer, ScorerKind
from curation.localise.train import is_finished, sample_clips, train_restarts, training_device, training_set


class SSLKind(ScorerKind):
    def check(self, cfg: RunConfig) -> RunConfig:
        """A given checkpoint loads here (its format made concrete), and a LocalCluster, which scores on this
        machine, has the configured device."""
        if cfg.score.checkpoint:
            cfg = resolve_checkpoint(cfg)
        if not cfg.dask.scheduler:
            resolve_device(cfg.score.device)
        return cfg

    def prepare(self, cfg: RunConfig, jobs: list[ClipJob], out: storage.RunFolder,
                progress: bool) -> tuple[RunConfig, str | None]:
        if cfg.score.checkpoint:
            resolved = ensure_bank(resolve_checkpoint(cfg), jobs, out)  # a wrong file fails before it is digested
            return resolved, file_digest(storage.local_copy(cfg.score.checkpoint))
        return trained_model(cfg, jobs, out, progress)

    def build(self, score: ScoreConfig) -> Scorer:
        # torch loads local files: a model or bank on an object store is downloaded once per machine
        score = replace(score, **{name: storage.local_copy(getattr(score, name))
                                  for name in ("checkpoint", "bank") if getattr(score, name)})
        fmt = checkpoint_format(score.checkpoint) if score.checkpoint and score.checkpoint_format == "auto" \
            else score.checkpoint_format
        if fmt in ("ezvsl", "slavc"):
            return PublishedScorer(replace(score, checkpoint_format=fmt))
        return LearnedScorer(score)


def trained_model(cfg: RunConfig, jobs: list[ClipJob], out: str | Path | storage.RunFolder,
                  progress: bool = True) -> tuple[RunConfig, str | None]:
    """The run's config with `score.checkpoint` the model trained on `jobs` with the run's `ssl` settings (trained
    now unless `OUT/ssl/<settings>/model.pt` has finished), and its sha256 (None on the other ranks under torchrun).

    Trained by this process in a workspace of OUT: OUT itself when local; with OUT on an object store a scratch
    folder, into which the training clips (at most `ssl.max_clips`) are downloaded and from which the loss log and
    then the checkpoint (its presence means finished) are uploaded."""
    folder = storage.run_folder(out)
    settings = json.dumps([cfg.ssl.settings(), cfg.decode.sample_rate], default=list)
    model = folder.layout.ssl_model(hashlib.sha256(settings.encode()).hexdigest()[:12])
    world = join(training_device(cfg.ssl))
    with folder.workspace("s2s-ssl-") as ws:
        if world.size > 1 and not ws.in_place:
            raise ConfigError(["out: ssl-train under torchrun writes its model to a local OUT (each rank decodes its "
                               "own clips from OUT/raw); train into a local folder, then copy the model"])
        checkpoint = Path(ws.pull(model.model))
        if not world.from_main(world.is_main and is_finished(checkpoint, cfg.ssl.steps)):
            # a scratch folder gets only the sample training may read; a local OUT has every clip in place
            wanted = jobs if ws.in_place else sample_clips(jobs, cfg.ssl.max_clips)
            staged = [replace(j, path=ws.bring_clip(j.clip_id, j.path)[0]) for j in wanted]
            train_restarts(training_set(staged, cfg, Path(ws.layout.raw), world), cfg, checkpoint,
                           progress and world.is_main)
            for location in (model.loss_log, model.restarts_record, model.model):  # the checkpoint last
                if Path(ws.local(location)).exists():
                    ws.commit(location)
        digest = file_digest(checkpoint) if world.is_main else None
    return replace(cfg, score=replace(cfg.score, checkpoint=model.model, checkpoint_format="native")), digest
