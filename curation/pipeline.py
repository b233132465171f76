"""The wiring: clip list -> Dask tasks (fetch/decode/score/select per clip) -> selection -> shards + manifests.

Only this module knows the engine. Per-clip work lives in `clip_task`; every clip's result is a cache file,
so a rerun after any interruption skips finished clips and ends with the same shards; `reselect` re-runs
only the selection from those files.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from curation import storage
from curation.clip_task import (
    ClipJob,
    ClipOutcome,
    cache_path,
    import_decoders,
    process_group,
    read_outcome,
    reselect_group,
    warm_up,
)
from curation.config import RunConfig, config_from_dict
from curation.errors import UsageError, require_tools
from curation.fetch_control import ClusterGate, StopCounter, forget_transient_failures
from curation.mirror import extract_archive, plan_source, resolve_source, source_jobs
from curation.outcomes import Outcomes
from curation.outputs import RunPaths, RunSummary, finish, format_summary, label_index_of, pending_clips_table
from curation.published import resolve_checkpoint
from curation.ssl_train import ensure_model
from manifests.io import parquet_bytes
from manifests.readers import ClipList, read_clip_list, read_clip_table, read_vggsound
from manifests.vegas import read_vegas

__all__ = ["RunPaths", "RunSummary", "format_summary", "reselect", "run"]
log = logging.getLogger(__name__)


# glibc malloc in the LocalCluster's workers (README, Benchmark). Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536,
# which hands every freed block back to the OS, so each clip's tensors were page-faulted afresh (a 2x slower
# scorer). glibc's adaptive default is not enough either: a task runs in a thread of its own, whose malloc arena
# still gave memory back between clips (4,300-5,000 page faults per clip inside the scorer). One arena and fixed
# thresholds keep freed memory for reuse: blocks under 32 MiB (a decoded 10-s clip) come from the heap and up to
# 256 MiB of free heap is kept; with the warm-up's blank clip a worker's scorer then faults 20-90 times per clip.
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                     "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def load_clip_list(cfg: RunConfig, out: str | Path) -> ClipList:
    """The run's clip list; for the demo world, generate it first (a no-op when it already exists)."""
    if cfg.dataset == "demo" and storage.is_url(str(out)):
        return ClipList(table=_demo_world_on_store(cfg, str(out)), bad_rows=[], duplicates_dropped=0)
    if cfg.dataset == "demo":
        from curation.demo import generate_world

        generate_world(out, n_clips=cfg.demo.clips, seed=cfg.demo.seed, duration_s=cfg.demo.duration_s)
        return ClipList(table=read_clip_table(Path(out) / "raw" / "demo_clips.parquet"), bad_rows=[],
                        duplicates_dropped=0)
    if cfg.dataset == "vggsound":
        return read_vggsound(cfg.meta)
    if cfg.dataset == "vegas":
        return read_vegas(cfg.meta, cfg.label_map)
    return read_clip_list(cfg.meta)


def _demo_world_on_store(cfg: RunConfig, out: str):
    """The demo world for an OUT on an object store: generated in a scratch folder and uploaded to `OUT/raw`
    once (its clip list last, so a listed world is complete); rows read the uploaded clips."""
    from curation.demo import generate_world, world_params

    listing, world_json = storage.join(out, "raw", "demo_clips.parquet"), storage.join(out, "raw", "demo_world.json")
    if storage.exists(listing) and json.loads(storage.read_bytes(world_json))["params"] != world_params(
            cfg.demo.clips, cfg.demo.seed, cfg.demo.duration_s):
        raise UsageError(f"{out} holds a demo world with other parameters; choose another OUT")
    with tempfile.TemporaryDirectory(prefix="s2s-demo-") as scratch:
        if not storage.exists(listing):
            world = generate_world(scratch, n_clips=cfg.demo.clips, seed=cfg.demo.seed, duration_s=cfg.demo.duration_s)
            for path in sorted(world.raw_dir.iterdir()):
                if path != world.clips_path:
                    storage.put_file(path, storage.join(out, "raw", path.name))
            storage.put_file(world.clips_path, listing)
        storage.get_file(listing, Path(scratch) / "demo_clips.parquet")
        table = read_clip_table(Path(scratch) / "demo_clips.parquet")
    paths = [storage.join(out, "raw", Path(p).name) for p in table.column("path").to_pylist()]
    return table.set_column(table.column_names.index("path"), "path", pa.array(paths, pa.string()))


def upload_local_rows(jobs: list[ClipJob], out: str) -> list[ClipJob]:
    """Jobs whose local `path` (a file only the client sees) is uploaded to `OUT/inputs/<clip_id><suffix>`
    (once: an object already there is reused) and read from there by the workers."""
    staged = []
    for job in jobs:
        if job.path is not None and not storage.is_url(job.path) and os.path.isfile(job.path):
            target = storage.join(out, "inputs", f"{job.clip_id}{Path(job.path).suffix}")
            if not storage.exists(target):
                storage.put_file(job.path, target)
            job = replace(job, path=target)
        staged.append(job)
    return staged


def _refuse_on_store(cfg: RunConfig) -> None:
    """What a run with OUT on an object store does not do yet (docs/scale.md), said before any work."""
    if cfg.source.path:
        raise UsageError(f"SOURCE= with OUT={cfg.out}: read archives into a local OUT, or upload the clips and "
                         "list them as url/path rows")
    if (cfg.score.scorer == "ssl" and cfg.score.checkpoint) or cfg.score.scorer == "moments":
        raise UsageError(f"score.checkpoint / score.moments with OUT={cfg.out}: the workers cannot see a client's "
                         "file; leave the checkpoint empty (the run trains one into OUT/ssl/) or use a local OUT")


def run_jobs(clip_list: ClipList) -> list[ClipJob]:
    """One job per valid row of the clip list."""
    cols = clip_list.table.select(["clip_id", "path", "url", "ytid", "start_s", "end_s"]).to_pylist()
    return [ClipJob(**row) for row in cols]


def _groups(jobs: list[ClipJob], size: int) -> Iterator[list[ClipJob]]:
    for i in range(0, len(jobs), size):
        yield jobs[i:i + size]


@contextlib.contextmanager
def _client(cfg: RunConfig, running=None) -> Iterator:
    """A client of the configured cluster (`running`: one this run already has); a LocalCluster started here is
    shut down on exit."""
    import dask
    from dask.distributed import Client, LocalCluster

    if running is not None:
        yield running
        return
    logging.getLogger("distributed").setLevel(logging.ERROR)  # cluster chatter would hide the progress bar
    if cfg.dask.scheduler:
        with Client(cfg.dask.scheduler, timeout="30s") as client:
            yield client
        return
    workers = cfg.dask.workers or os.cpu_count() or 1
    # Environment values set in the shell still win. The workers' statistical profiler (a stack sample every
    # 10 ms) only feeds the dashboard, which is off: without it the scorer ran ~5 % faster (README, Benchmark).
    settings = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_MALLOC_ENV.items()}
    with dask.config.set({**settings, "distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=cfg.dask.memory_limit,
                         dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _run_tasks(client, task: Callable, jobs: list[ClipJob], cfg: RunConfig, args: tuple, progress: bool,
               warm: Callable[[], object], desc: str = "curate",
               stop: StopCounter | None = None) -> tuple[Outcomes, float]:
    """Map `task(group, cfg, *args)` over groups of clips with a bounded number of tasks in flight, after
    `warm()` has run once on every worker; once `stop` says so, nothing more is submitted (clips never submitted
    stay pending).

    Returns the outcomes and the moment the cluster was ready (to time processing without start-up)."""
    from dask.distributed import as_completed

    outcomes = Outcomes()
    bar = tqdm(total=len(jobs), unit="clip", disable=not progress, desc=desc, smoothing=0.1)
    client.run(warm)
    ready = time.perf_counter()
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    pending = _groups(jobs, cfg.dask.clips_per_task)
    in_flight = {}
    queue = as_completed()
    done: Counter[bool] = Counter()

    def submit_next() -> None:
        group = None if stop is not None and stop.reason else next(pending, None)
        if group is not None:
            fut = client.submit(task, group, cfg, *args, retries=cfg.dask.retries, pure=False)
            in_flight[fut] = group
            queue.add(fut)

    for _ in range(n_workers * cfg.dask.tasks_in_flight_per_worker):
        submit_next()
    for fut in queue:
        group = in_flight.pop(fut)
        try:
            results = fut.result()
        except Exception as exc:  # the worker died or the task failed on every retry
            results = [ClipOutcome(j.clip_id, scored=False, error_kind="worker_lost",
                                   error=f"{type(exc).__name__}: {exc}") for j in group]
        outcomes.add(results)  # as columns: the client keeps no Python object per clip
        if stop is not None:
            stop.record(results)
        bar.update(len(results))
        done.update(o.scored for o in results)  # running counts: a sum over all outcomes per task is quadratic
        bar.set_postfix(ok=done[True], failed=done[False], refresh=False)
        submit_next()
    bar.close()
    return outcomes, ready


def _dask_mapper(client, cfg: RunConfig) -> Callable[[Callable, list], Iterable]:
    """`map` over the cluster for the write wave: results in item order, a bounded number of tasks in flight
    (so the client holds a few results at a time, whatever the run's size)."""
    window = max(1, len(client.scheduler_info(n_workers=-1)["workers"])) * cfg.dask.tasks_in_flight_per_worker

    def mapper(fn: Callable, items: list) -> Iterator:
        remaining = iter(items)
        futures = deque(client.submit(fn, item, retries=cfg.dask.retries, pure=False)
                        for item in itertools.islice(remaining, window))
        while futures:
            result = futures.popleft().result()
            for item in itertools.islice(remaining, 1):
                futures.append(client.submit(fn, item, retries=cfg.dask.retries, pure=False))
            yield result

    return mapper


def _from_source(cfg: RunConfig, jobs: list[ClipJob], raw: Path, progress: bool, stack: contextlib.ExitStack):
    """Bring SOURCE's clips into `raw` (docs/mirrors.md): one task per archive to read, each archive streamed once.

    Returns jobs reading the clips that are now there, failed outcomes for the others, a note for run.json, and
    the cluster when one was started (kept in `stack` for the clip wave)."""
    from dask.distributed import as_completed

    started = time.perf_counter()
    plan = plan_source(resolve_source(cfg.source.path), jobs, raw)
    passes, lost, client = [], {}, None
    if plan.archives:
        bar = tqdm(total=len(plan.archives), unit="archive", disable=not progress, desc="read archives")
        client = stack.enter_context(_client(cfg))
        [wanted] = client.scatter([plan.wanted])  # one copy per worker, not one per task
        futures = {client.submit(extract_archive, archive, wanted, str(raw), str(raw / "source_index"),
                                 retries=cfg.dask.retries, pure=False): archive for archive in plan.archives}
        for fut in as_completed(futures):
            try:
                passes.append(fut.result())
            except Exception as exc:  # the worker died, or the store failed on every retry
                lost[futures[fut]] = f"{type(exc).__name__}: {exc}"
            bar.update(1)
        bar.close()
    ready, failed = source_jobs(plan, jobs, raw, lost)
    note = {"archives": len(plan.source.archives), "archives_read": len(plan.archives),
            "archives_skipped": plan.skipped, "loose_clips": len(plan.source.clips),
            "extracted": sum(p.extracted for p in passes), "lost": lost,
            "damaged": {p.archive: p.damaged for p in passes if p.damaged},
            "seconds": round(time.perf_counter() - started, 3)}
    return ready, {o.clip_id: o for o in failed}, note, client


def _remove_temp_files(paths: RunPaths) -> None:
    """Temp files a killed run left behind (finished files are only ever renamed into place)."""
    if storage.is_url(paths.out):
        return  # an object store holds no temp objects: a write is one upload, seen only once complete
    for folder in map(Path, (paths.raw, paths.cache, paths.manifests, paths.shards)):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)


def run(cfg: RunConfig, progress: bool = True) -> RunSummary:
    """Curate `cfg`'s clip list into shards and manifests under `cfg.out`."""
    with contextlib.ExitStack() as stack:  # a cluster started for SOURCE's archives serves the clips too
        return _run(cfg, progress, stack)


def _run(cfg: RunConfig, progress: bool, stack: contextlib.ExitStack) -> RunSummary:
    started = time.perf_counter()
    require_tools("ffmpeg", "ffprobe")
    if cfg.score.scorer == "ssl" and cfg.score.checkpoint:
        cfg = resolve_checkpoint(cfg)  # a wrong file fails now, before the clip list or the demo world is built
    out = storage.resolve(cfg.out)
    if storage.is_url(out):
        _refuse_on_store(cfg)
    clip_list = load_clip_list(cfg, out)
    jobs = run_jobs(clip_list)
    unreached, source_note, client = {}, None, None
    if cfg.source.path:
        jobs, unreached, source_note, client = _from_source(cfg, jobs, Path(out) / "raw", progress, stack)
    cfg, digest = ensure_model(cfg, jobs, out, progress)  # trains the localisation model when none is given
    if storage.is_url(out):  # after training, which reads the client's own files where it has them
        jobs = upload_local_rows(jobs, out)
    paths = RunPaths.for_config(cfg, digest)
    _remove_temp_files(paths)
    storage.write_bytes(storage.join(paths.manifests, "clips.parquet"),
                        parquet_bytes(pending_clips_table(clip_list, label_index_of(clip_list))))
    retried = forget_transient_failures(paths.cache, [j.clip_id for j in jobs]) if cfg.fetch.retry_failed else 0
    gate = ClusterGate(cfg.fetch) if any(j.path is None for j in jobs) else None  # url / YouTube rows
    stop = StopCounter(cfg.fetch.stop_after, gate.request_stop if gate else None)
    loaded = time.perf_counter()
    with _client(cfg, client) as client:
        outcomes, ready = _run_tasks(client, process_group, jobs, cfg, (paths.raw, paths.cache, gate),
                                     progress, functools.partial(warm_up, cfg), stop=stop)
        timings = {"load_and_model_s": loaded - started, "cluster_start_s": ready - loaded,
                   "process_s": time.perf_counter() - ready}
        outcomes.add(unreached.values())
        score_s, n_scored = outcomes.total("score_s"), outcomes.total("scored")
        frames = outcomes.total("n_frames", scored_only=True)
        summary = finish(cfg, paths, clip_list, outcomes, timings, _dask_mapper(client, cfg), model_digest=digest,
                         scorer_frames_per_s_per_worker=round(frames / score_s, 2) if score_s else None,
                         scorer_page_faults_per_clip=round(outcomes.total("score_page_faults", scored_only=True)
                                                           / n_scored, 1) if n_scored else None,
                         fetch={"stopped": stop.reason, "retried_failed": retried}, source=source_note)
    notes = [f"retry-failed: {retried} clips with a transient failure fetched again"] if cfg.fetch.retry_failed else []
    return replace(summary, notes=tuple(notes + ([stop.reason] if stop.reason else [])))


def reselect(out: str | os.PathLike, overrides: dict, progress: bool = True) -> RunSummary:
    """Re-run selection on a finished run with new `select.*`/`write.*`/`filters.*` options, without re-scoring.

    Clip scores come from the run's per-clip results; only newly chosen frames are decoded from `raw/`."""
    started = time.perf_counter()
    if storage.is_url(str(out)):
        raise UsageError(f"curation select: {out} is on an object store; re-select a run with a local OUT")
    out = Path(out).resolve()
    record = json.loads((out / "manifests" / "run.json").read_text())
    data = dict(record["config"], out=str(out))
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        if section not in ("select", "write", "filters"):
            raise ValueError(f"{dotted}: re-selection only changes select.*, write.* and filters.* options")
        data.setdefault(section, {})[key] = value
    cfg = config_from_dict(data)
    clip_list = load_clip_list(cfg, out)
    old_cache = out / "cache" / record["cache_dir"]
    paths = RunPaths.for_config(cfg, record.get("model_digest"))
    jobs = [j for j in run_jobs(clip_list) if os.path.exists(cache_path(old_cache, j.clip_id))]
    loaded = time.perf_counter()
    record = dict(model_digest=record.get("model_digest"), reselected_from=record["cache_dir"])
    if paths.cache == str(old_cache):  # only clip selection or shard options changed: no cluster needed
        outcomes = Outcomes(read_outcome(cache_path(old_cache, j.clip_id)) for j in jobs)
        timings = {"load_s": loaded - started, "cluster_start_s": 0.0, "process_s": time.perf_counter() - loaded}
        return finish(cfg, paths, clip_list, outcomes, timings, **record)
    with _client(cfg) as client:  # selection needs no model: warm the decoders only
        outcomes, ready = _run_tasks(client, reselect_group, jobs, cfg, (paths.raw, str(old_cache), paths.cache),
                                     progress, import_decoders, desc="reselect")
        timings = {"load_s": loaded - started, "cluster_start_s": ready - loaded,
                   "process_s": time.perf_counter() - ready}
        return finish(cfg, paths, clip_list, outcomes, timings, _dask_mapper(client, cfg), **record)
