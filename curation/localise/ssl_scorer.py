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
import tempfile
from dataclasses import replace
from pathlib import Path

from curation import storage
from curation.config import ConfigError, RunConfig, ScoreConfig
from curation.localise.checkpoint import file_digest
from curation.localise.device import resolve_device
from curation.localise.distributed import join
from curation.localise.published import PublishedScorer, checkpoint_format, ensure_bank, resolve_checkpoint
from curation.localise.score import LearnedScorer
from curation.localise.scorers import Scorer, ScorerKind
from curation.localise.train import is_finished, sample_clips, train_restarts, training_device, training_set
from curation.results import ClipJob
from curation.staging import stage_in


class SSLKind(ScorerKind):
    def check(self, cfg: RunConfig) -> RunConfig:
        """A given checkpoint loads here (its format made concrete), and a LocalCluster, which scores on this
        machine, has the configured device."""
        if cfg.score.checkpoint:
            cfg = resolve_checkpoint(cfg)
        if not cfg.dask.scheduler:
            resolve_device(cfg.score.device)
        return cfg

    def prepare(self, cfg: RunConfig, jobs: list[ClipJob], out: str | Path,
                progress: bool) -> tuple[RunConfig, str | None]:
        if cfg.score.checkpoint:
            resolved = ensure_bank(resolve_checkpoint(cfg), jobs, out)  # a wrong file fails before it is digested
            return resolved, file_digest(storage.local_copy(cfg.score.checkpoint))
        return trained_model(cfg, jobs, out, progress)

    def build(self, score: ScoreConfig) -> Scorer:
        if score.checkpoint and storage.is_url(score.checkpoint):  # a model in OUT on an object store
            score = replace(score, checkpoint=storage.local_copy(score.checkpoint))
        if score.bank and storage.is_url(score.bank):
            score = replace(score, bank=storage.local_copy(score.bank))
        fmt = checkpoint_format(score.checkpoint) if score.checkpoint and score.checkpoint_format == "auto" \
            else score.checkpoint_format
        if fmt in ("ezvsl", "slavc"):
            return PublishedScorer(replace(score, checkpoint_format=fmt))
        return LearnedScorer(score)


def trained_model(cfg: RunConfig, jobs: list[ClipJob], out: str | Path,
                  progress: bool = True) -> tuple[RunConfig, str | None]:
    """The run's config with `score.checkpoint` the model trained on `jobs` with the run's `ssl` settings (trained
    now unless `OUT/ssl/<settings>/model.pt` has finished), and its sha256 (None on the other ranks under torchrun)."""
    settings = json.dumps([cfg.ssl.settings(), cfg.decode.sample_rate], default=list)
    name = hashlib.sha256(settings.encode()).hexdigest()[:12]
    world = join(training_device(cfg.ssl))
    if storage.is_url(str(out)):
        if world.size > 1:
            raise ConfigError(["out: ssl-train under torchrun writes its model to a local OUT (each rank decodes its "
                               "own clips from OUT/raw); train into a local folder, then copy the model"])
        checkpoint, digest = _model_on_store(cfg, jobs, str(out), name, progress)
    else:
        checkpoint = Path(out) / "ssl" / name / "model.pt"
        if not world.from_main(world.is_main and is_finished(checkpoint, cfg.ssl.steps)):
            train_restarts(training_set(jobs, cfg, Path(out) / "raw", world), cfg, checkpoint,
                           progress and world.is_main)
        digest = file_digest(checkpoint) if world.is_main else None
    return replace(cfg, score=replace(cfg.score, checkpoint=str(checkpoint), checkpoint_format="native")), digest


def _model_on_store(cfg: RunConfig, jobs: list[ClipJob], out: str, name: str, progress: bool) -> tuple[str, str]:
    """`trained_model` with OUT on an object store: the client downloads the training clips (at most
    `ssl.max_clips`) into a scratch folder, trains there, and uploads the finished checkpoint and its loss log
    to `OUT/ssl/<settings>/` (the checkpoint last: its presence means finished). Returns its URL and sha256."""
    url = storage.join(out, "ssl", name, "model.pt")
    with tempfile.TemporaryDirectory(prefix="s2s-ssl-") as scratch:
        local = Path(scratch) / "ssl" / name / "model.pt"
        if storage.exists(url):
            storage.get_file(url, local)
        if not is_finished(local, cfg.ssl.steps):
            staged = [replace(j, path=stage_in(j.clip_id, j.path, out, Path(scratch))[0])
                      for j in sample_clips(jobs, cfg.ssl.max_clips)]
            train_restarts(training_set(staged, cfg, Path(scratch) / "raw"), cfg, local, progress)
            storage.put_file(local.with_name("loss.jsonl"), storage.join(out, "ssl", name, "loss.jsonl"))
            if local.with_name("restarts.json").exists():
                storage.put_file(local.with_name("restarts.json"), storage.join(out, "ssl", name, "restarts.json"))
            storage.put_file(local, url)
        return url, file_digest(local)
