"""The wiring: clip list -> Dask tasks (fetch/decode/score/select per clip) -> selection -> shards + manifests.

Only this module knows the engine. Per-clip work lives in `clip_task`; every clip's result is a cache file,
so a rerun after any interruption skips finished clips and ends with the same shards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from curation import provenance
from curation.clip_task import CachedClip, ClipJob, ClipOutcome, cache_path, process_group, read_cached, warm_up
from curation.config import RunConfig
from curation.errors import require_tools
from curation.select import keep_clips
from curation.write import build_sample, remove_stale_shards, write_shard_set, write_wids_index
from manifests.io import write_json, write_parquet
from manifests.readers import ClipList, read_clip_list, read_clip_table, read_vggsound
from manifests.schema import CLIPS_SCHEMA, FRAMES_SCHEMA, SHARDS_SCHEMA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    out: Path
    raw: Path
    cache: Path
    manifests: Path
    shards: Path

    @classmethod
    def for_config(cls, cfg: RunConfig) -> RunPaths:
        out = Path(cfg.out).resolve()
        return cls(out=out, raw=out / "raw", cache=out / "cache" / cfg.clip_stage_fingerprint(),
                   manifests=out / "manifests", shards=out / "shards")


@dataclass(frozen=True)
class RunSummary:
    counts: dict[str, int]  # per status
    error_kinds: dict[str, int]
    n_clips: int
    n_shards: int
    n_samples: int
    seconds: float
    clips_per_s: float
    duplicates_dropped: int
    paths: RunPaths


def load_clip_list(cfg: RunConfig, paths: RunPaths) -> ClipList:
    """The run's clip list; for the demo world, generate it first (a no-op when it already exists)."""
    if cfg.dataset == "demo":
        from curation.demo import generate_world

        generate_world(paths.out, n_clips=cfg.demo.clips, seed=cfg.demo.seed, duration_s=cfg.demo.duration_s)
        return ClipList(table=read_clip_table(paths.raw / "demo_clips.parquet"), bad_rows=[], duplicates_dropped=0)
    if cfg.dataset == "vggsound":
        return read_vggsound(cfg.meta)
    return read_clip_list(cfg.meta)


def _jobs(table: pa.Table) -> list[ClipJob]:
    cols = table.select(["clip_id", "path", "url", "start_s", "end_s"]).to_pylist()
    return [ClipJob(**row) for row in cols]


def _groups(jobs: list[ClipJob], size: int) -> Iterator[list[ClipJob]]:
    for i in range(0, len(jobs), size):
        yield jobs[i:i + size]


@contextlib.contextmanager
def _client(cfg: RunConfig) -> Iterator:
    """A client of the configured cluster; a LocalCluster started here is shut down on exit."""
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)  # cluster chatter would hide the progress bar
    if cfg.dask.scheduler:
        with Client(cfg.dask.scheduler, timeout="30s") as client:
            yield client
        return
    workers = cfg.dask.workers or os.cpu_count() or 1
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=cfg.dask.memory_limit,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _run_tasks(jobs: list[ClipJob], cfg: RunConfig, paths: RunPaths,
               progress: bool) -> tuple[dict[str, ClipOutcome], float]:
    """Map `process_group` over the clips with a bounded number of tasks in flight.

    Returns the outcomes and the moment the cluster was ready (to time processing without start-up)."""
    from dask.distributed import as_completed

    outcomes: dict[str, ClipOutcome] = {}
    groups = list(_groups(jobs, cfg.dask.clips_per_task))
    bar = tqdm(total=len(jobs), unit="clip", disable=not progress, desc="curate", smoothing=0.1)
    with _client(cfg) as client:
        client.run(warm_up, cfg.score)
        ready = time.perf_counter()
        n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        limit = n_workers * cfg.dask.tasks_in_flight_per_worker
        pending = iter(groups)
        in_flight = {}
        queue = as_completed()

        def submit_next() -> None:
            group = next(pending, None)
            if group is not None:
                fut = client.submit(process_group, group, cfg, str(paths.raw), str(paths.cache),
                                    retries=cfg.dask.retries, pure=False)
                in_flight[fut] = group
                queue.add(fut)

        for _ in range(limit):
            submit_next()
        for fut in queue:
            group = in_flight.pop(fut)
            try:
                results = fut.result()
            except Exception as exc:  # the worker died or the task failed on every retry
                results = [ClipOutcome(j.clip_id, scored=False, error_kind="worker_lost",
                                       error=f"{type(exc).__name__}: {exc}") for j in group]
            for outcome in results:
                outcomes[outcome.clip_id] = outcome
            bar.update(len(results))
            bar.set_postfix(ok=sum(o.scored for o in outcomes.values()),
                            failed=sum(not o.scored for o in outcomes.values()), refresh=False)
            submit_next()
    bar.close()
    return outcomes, ready


def _samples(clip_rows: list[dict], cfg: RunConfig, paths: RunPaths, label_index: dict[str, int]) -> Iterator[dict]:
    for row in clip_rows:
        cached = read_cached(cache_path(paths.cache, row["clip_id"]))
        best = int(cached.selected[0])
        meta = {key: row[key] for key in ("clip_id", "dataset", "ytid", "start_s", "end_s", "label", "split")}
        meta.update(frame_t=float(cached.times[best]), score=float(cached.scores[best]), rank=1,
                    ssl_model=cached.model_id,
                    moments=[{"t": float(cached.times[i]), "score": float(cached.scores[i])}
                             for i in cached.selected])
        yield build_sample(row["clip_id"], cached.jpgs, cached.flac, label_index[row["label"]], meta)


def _write_shards(kept_rows: list[dict], cfg: RunConfig, paths: RunPaths, label_index: dict[str, int]):
    by_split: dict[str | None, list[dict]] = {}
    for row in sorted(kept_rows, key=lambda r: r["clip_id"]):
        by_split.setdefault(row["split"], []).append(row)
    infos, written = [], set()
    for split in sorted(by_split, key=lambda s: s or ""):
        name = cfg.write.name or cfg.dataset
        name = f"{name}-{split}" if split else name
        split_infos = write_shard_set(_samples(by_split[split], cfg, paths, label_index), paths.shards, name,
                                      split, cfg.write.samples_per_shard)
        index = write_wids_index(paths.shards, name, split_infos)
        written.update([i.shard for i in split_infos] + [index.name])
        infos.extend(split_infos)
    paths.shards.mkdir(parents=True, exist_ok=True)
    remove_stale_shards(paths.shards, written)
    return infos


def _frame_rows(cached: dict[str, CachedClip], kept: set[str]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in FRAMES_SCHEMA.names}
    for clip_id in sorted(cached):
        clip = cached[clip_id]
        chosen = set(clip.selected.tolist()) if clip_id in kept else set()
        columns["clip_id"].extend([clip_id] * len(clip.times))
        columns["t"].extend(clip.times.tolist())
        columns["score"].extend(clip.scores.tolist())
        columns["rank"].extend(clip.ranks.tolist())
        columns["selected"].extend(i in chosen for i in range(len(clip.times)))
    return pa.table(columns, schema=FRAMES_SCHEMA)


def _clip_rows(clip_list: ClipList, outcomes: dict[str, ClipOutcome], kept: set[str],
               shard_of: dict[str, str], label_index: dict[str, int]) -> list[dict]:
    rows = []
    for row in clip_list.table.to_pylist():
        o = outcomes.get(row["clip_id"])
        status = "pending" if o is None else "failed" if not o.scored else "ok" if row["clip_id"] in kept \
            else "rejected"
        rows.append(dict(row, status=status, error_kind=o.error_kind if o else None,
                         error=o.error if o else None, clip_score=o.clip_score if o else None,
                         shard=shard_of.get(row["clip_id"]), n_frames=o.n_frames if o else 0,
                         label_index=label_index.get(row["label"])))
    failed = zip(clip_list.failed_table().to_pylist(), clip_list.error_kinds, clip_list.reasons, strict=True)
    for row, kind, reason in failed:
        rows.append(dict(row, status="failed", error_kind=kind, error=reason, clip_score=None, shard=None,
                         n_frames=0, label_index=None))
    return rows


def _remove_temp_files(paths: RunPaths) -> None:
    """Temp files a killed run left behind (finished files are only ever renamed into place)."""
    for folder in (paths.raw, paths.cache, paths.manifests, paths.shards):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)


def run(cfg: RunConfig, progress: bool = True) -> RunSummary:
    """Curate `cfg`'s clip list into shards and manifests under `cfg.out`."""
    started = time.perf_counter()
    require_tools("ffmpeg")
    paths = RunPaths.for_config(cfg)
    _remove_temp_files(paths)
    clip_list = load_clip_list(cfg, paths)
    labels = sorted(set(clip_list.table.column("label").to_pylist()))
    label_index = {label: i for i, label in enumerate(labels)}
    pending = _clip_rows(clip_list, {}, set(), {}, label_index)
    write_parquet(paths.manifests / "clips.parquet", pa.Table.from_pylist(pending, schema=CLIPS_SCHEMA))
    loaded = time.perf_counter()

    outcomes, ready = _run_tasks(_jobs(clip_list.table), cfg, paths, progress)
    processed = time.perf_counter()

    cached = {cid: read_cached(cache_path(paths.cache, cid)) for cid, o in outcomes.items() if o.scored}
    kept = keep_clips({cid: c.outcome.clip_score for cid, c in cached.items()}, cfg.select)
    kept_rows = [r for r in clip_list.table.to_pylist() if r["clip_id"] in kept]
    infos = _write_shards(kept_rows, cfg, paths, label_index)
    shard_of = {cid: info.shard for info in infos for cid in info.clip_ids}
    rows = _clip_rows(clip_list, outcomes, kept, shard_of, label_index)
    write_parquet(paths.manifests / "frames.parquet", _frame_rows(cached, kept))
    write_parquet(paths.manifests / "shards.parquet",
                  pa.Table.from_pylist([{k: getattr(i, k) for k in SHARDS_SCHEMA.names} for i in infos],
                                       schema=SHARDS_SCHEMA))
    write_parquet(paths.manifests / "clips.parquet", pa.Table.from_pylist(rows, schema=CLIPS_SCHEMA))
    write_json(paths.shards / "labels.json", labels)
    finished = time.perf_counter()

    counts = Counter(r["status"] for r in rows)
    kinds = Counter(r["error_kind"] for r in rows if r["error_kind"])
    summary = RunSummary(counts=dict(counts), error_kinds=dict(kinds), n_clips=len(rows), n_shards=len(infos),
                         n_samples=sum(i.n_samples for i in infos), seconds=finished - started,
                         clips_per_s=len(outcomes) / max(processed - ready, 1e-9),
                         duplicates_dropped=clip_list.duplicates_dropped, paths=paths)
    write_json(paths.manifests / "run.json", provenance.run_record(
        cfg, summary, timings={"load_s": loaded - started, "cluster_start_s": ready - loaded,
                               "process_s": processed - ready,
                               "select_write_s": finished - processed, "total_s": finished - started},
        labels=labels, bad_rows=[{"row": b.row, "error_kind": b.error_kind, "reason": b.reason}
                                 for b in clip_list.bad_rows]))
    return summary


def format_summary(summary: RunSummary) -> str:
    """The end-of-run report: counts per status and per error kind, and where the outputs are."""
    c = summary.counts
    lines = [f"curated {summary.n_clips} clips in {summary.seconds:.1f} s ({summary.clips_per_s:.2f} clips/s "
             f"once the cluster was up): ok {c.get('ok', 0)}, rejected {c.get('rejected', 0)}, "
             f"failed {c.get('failed', 0)}, pending {c.get('pending', 0)}"]
    if summary.duplicates_dropped:
        lines.append(f"  duplicate rows dropped: {summary.duplicates_dropped}")
    for kind, n in sorted(summary.error_kinds.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  failed {kind}: {n}")
    lines.append(f"shards:    {summary.paths.shards} ({summary.n_shards} shards, {summary.n_samples} samples)")
    lines.append(f"manifests: {summary.paths.manifests}/{{clips,frames,shards}}.parquet, run.json")
    return "\n".join(lines)
