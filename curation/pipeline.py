"""The wiring: clip list -> Dask tasks (fetch/decode/score/select per clip) -> selection -> shards + manifests.

Only this module knows the engine. Per-clip work lives in `clip_task`; every clip's result is a cache file,
so a rerun after any interruption skips finished clips and ends with the same shards; `reselect` re-runs
only the selection from those files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from curation import storage
from curation.clip_cache import ClipJob, ClipSummary, cache_path, read_summary
from curation.clip_task import import_decoders, process_group, reselect_group, warm_up
from curation.config import AFTER_SCORING_SECTIONS, RunConfig, config_from_dict
from curation.errors import UsageError, require_tools
from curation.fetch.control import ClusterGate, StopCounter, forget_transient_failures
from curation.fetch.mirror import extract_archive, plan_source, resolve_source, source_jobs
from curation.localise.scorers import check_scorer, ensure_model
from curation.outputs.assemble import RunPaths, RunSummary, finish, format_summary, label_index_of, pending_clips_table
from curation.provenance import read_run_record
from curation.scoring_workers import finish_group, model_inputs, prepare_group, score_inputs
from curation.scoring_workers import warm_up as split_warm_up
from curation.staging import stage_inputs
from curation.summary_table import SummaryTable
from manifests.io import parquet_bytes
from manifests.layout import name_of
from manifests.readers import ClipList, read_clip_list, read_clip_table, read_vggsound
from manifests.vegas import read_vegas

__all__ = ["RunPaths", "RunSummary", "format_summary", "reselect", "run"]
log = logging.getLogger(__name__)


# glibc malloc in the LocalCluster's workers (docs/benchmarks.md). Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536,
# which hands every freed block back to the OS, so each clip's tensors were page-faulted afresh (a 2x slower
# scorer). glibc's adaptive default is not enough either: a task runs in a thread of its own, whose malloc arena
# still gave memory back between clips (4,300-5,000 page faults per clip inside the scorer). One arena and fixed
# thresholds keep freed memory for reuse: blocks under 32 MiB (a decoded 10-s clip) come from the heap and up to
# 256 MiB of free heap is kept; with the warm-up's blank clip a worker's scorer then faults 20-90 times per clip.
WORKER_MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                     "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
SCORING_WORKER_WAIT_S = 30.0  # a cluster's scoring workers may still be joining when a run starts


def load_clip_list(cfg: RunConfig, out: str | os.PathLike | storage.RunFolder) -> ClipList:
    """The run's clip list; for the demo world, generate it first (a no-op when it already exists)."""
    if cfg.dataset == "demo":
        return ClipList(table=_demo_world(cfg, storage.run_folder(out)), bad_rows=[], duplicates_dropped=0)
    if cfg.dataset == "vggsound":
        return read_vggsound(cfg.meta)
    if cfg.dataset == "vegas":
        return read_vegas(cfg.meta, cfg.label_map)
    return read_clip_list(cfg.meta)


def _demo_world(cfg: RunConfig, folder: storage.RunFolder) -> pa.Table:
    """The demo world's clip list. A local OUT holds the world in place (made, reused or resumed there); for an
    object store it is made in a scratch folder and uploaded to `OUT/raw` once (its clip list last, so a listed
    world is complete), and its rows read the uploaded clips."""
    from curation.demo import generate_world, world_params

    layout, demo = folder.layout, cfg.demo
    with folder.workspace("s2s-demo-") as ws:
        if ws.in_place:
            world = generate_world(layout.out, n_clips=demo.clips, seed=demo.seed, duration_s=demo.duration_s,
                                   preset=demo.preset)
            return read_clip_table(world.clips_path)
        if not storage.exists(layout.demo_clips):
            world = generate_world(ws.layout.out, n_clips=demo.clips, seed=demo.seed, duration_s=demo.duration_s,
                                   preset=demo.preset)
            for path in sorted(world.raw_dir.iterdir()):
                if path != world.clips_path:
                    ws.commit(storage.join(layout.raw, path.name))
            ws.commit(layout.demo_clips)
        elif json.loads(storage.read_bytes(layout.demo_world))["params"] != world_params(
                demo.clips, demo.seed, demo.duration_s, demo.preset):
            raise UsageError(f"{layout.out} holds a demo world with other parameters; choose another OUT")
        table = read_clip_table(ws.pull(layout.demo_clips))
    paths = [layout.raw_clip(Path(p).stem) for p in table.column("path").to_pylist()]
    return table.set_column(table.column_names.index("path"), "path", pa.array(paths, pa.string()))


def upload_local_rows(jobs: list[ClipJob], out: storage.RunFolder) -> list[ClipJob]:
    """Jobs whose `path` is a file only the client sees (OUT on an object store) read an upload of it, at
    `OUT/inputs/<clip_id><suffix>` (made once: an object already there is reused)."""
    return [replace(job, path=out.share(job.path, out.layout.input_clip(job.clip_id, Path(job.path).suffix)))
            if out.client_only(job.path) else job for job in jobs]


def run_jobs(clip_list: ClipList) -> list[ClipJob]:
    """One job per valid row of the clip list."""
    cols = clip_list.table.select(["clip_id", "path", "url", "ytid", "start_s", "end_s"]).to_pylist()
    return [ClipJob(**row) for row in cols]


def _cluster_event(name: str):
    """The run's cluster-wide stop flag (lives on the scheduler; any worker may set or read it)."""
    from dask.distributed import Event

    return Event(name)


def _cluster_semaphore(max_leases: int, name: str):
    """A host's cluster-wide fetch slots (lives on the scheduler; a dead worker's lease expires)."""
    from dask.distributed import Semaphore

    return Semaphore(max_leases=max_leases, name=name)


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
    # 10 ms) only feeds the dashboard, which is off: without it the scorer ran ~5 % faster (docs/benchmarks.md).
    settings = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_MALLOC_ENV.items()}
    scoring = 1 if cfg.dask.score_resource else 0
    with dask.config.set({**settings, "distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=workers - scoring, threads_per_worker=1, processes=True,
                         memory_limit=cfg.dask.memory_limit, dashboard_address=None,
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        if scoring:
            _add_scoring_worker(cluster, cfg.dask.score_resource)
            client.wait_for_workers(workers)
        yield client


def _add_scoring_worker(cluster, name: str) -> None:
    """One more LocalCluster worker, offering the resource `name` (the machine's one scoring worker); its nanny
    starts it again with the resource if it dies."""
    spec = copy.deepcopy(cluster.new_spec)
    spec["options"]["resources"] = {name: 1}
    cluster.worker_spec[f"scoring-{name}"] = spec
    cluster.scale(len(cluster.worker_spec))


def _task_submitter(client, task: Callable, cfg: RunConfig, args: tuple) -> Callable[[list[ClipJob]], object]:
    """Submits `task(group, cfg, *args)`: one task per group of clips."""
    return lambda group: client.submit(task, group, cfg, *args, retries=cfg.dask.retries, pure=False)


def _split_submitter(client, cfg: RunConfig, folder: storage.RunFolder, cache: str,
                     gate) -> Callable[[list[ClipJob]], object]:
    """Submits a group as four tasks (curation.scoring_workers): prepare on any worker, pick out the model inputs
    there, score them on a worker offering `dask.score_resource`, finish where the decoded clips are (Dask runs a
    task where its largest input lies). Returns the future of the group's clip summaries."""
    options = {"retries": cfg.dask.retries, "pure": False}

    def submit(group: list[ClipJob]):
        prepared = client.submit(prepare_group, group, cfg, folder, cache, gate, **options)
        inputs = client.submit(model_inputs, prepared, **options)
        scores = client.submit(score_inputs, inputs, cfg, resources={cfg.dask.score_resource: 1}, **options)
        return client.submit(finish_group, prepared, scores, cfg, folder, cache, **options)

    return submit


def _ensure_scoring_worker(client, cfg: RunConfig) -> list[str]:
    """The workers offering `dask.score_resource` (a LocalCluster started for this run has one). A cluster where none
    offers it within SCORING_WORKER_WAIT_S is a one-line error: its scoring tasks would wait forever."""
    name = cfg.dask.score_resource
    deadline = time.monotonic() + SCORING_WORKER_WAIT_S
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        offering = sorted(a for a, w in workers.items() if w.get("resources", {}).get(name, 0) >= 1)
        if offering or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not offering:
        raise UsageError(f"dask.score_resource = {name}: no worker of {cfg.dask.scheduler} offers it; start the "
                         f"scoring workers with `dask worker {cfg.dask.scheduler} --nthreads 1 --resources {name}=1`")
    return offering


def _warm_split(cfg: RunConfig, dask_worker=None) -> str:
    """`scoring_workers.warm_up` on each worker, as a scoring worker where it offers the resource."""
    return split_warm_up(cfg, dask_worker.state.total_resources.get(cfg.dask.score_resource, 0) >= 1)


def _run_tasks(client, submit_group: Callable[[list[ClipJob]], object], jobs: list[ClipJob], cfg: RunConfig,
               progress: bool, warm: Callable[[], object], desc: str = "curate",
               stop: StopCounter | None = None) -> tuple[SummaryTable, float]:
    """Submit each group of clips (`submit_group(group)` -> the future of its clip summaries) with a bounded
    number of groups in flight, after `warm()` has run once on every worker; once `stop` says so, nothing more is
    submitted (clips never submitted stay pending).

    Returns the summary table and the moment the cluster was ready (to time processing without start-up)."""
    from dask.distributed import as_completed

    clip_summaries = SummaryTable()
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
            fut = submit_group(group)
            in_flight[fut] = group
            queue.add(fut)

    for _ in range(n_workers * cfg.dask.tasks_in_flight_per_worker):
        submit_next()
    for fut in queue:
        group = in_flight.pop(fut)
        try:
            summaries = fut.result()
        except Exception as exc:  # the worker died or the task failed on every retry
            summaries = [ClipSummary(j.clip_id, scored=False, error_kind="worker_lost",
                                     error=f"{type(exc).__name__}: {exc}") for j in group]
        clip_summaries.add(summaries)  # as columns: the client keeps no Python object per clip
        if stop is not None:
            stop.record(summaries)
        bar.update(len(summaries))
        done.update(s.scored for s in summaries)  # running counts: a sum over all summaries per task is quadratic
        bar.set_postfix(ok=done[True], failed=done[False], refresh=False)
        submit_next()
    bar.close()
    return clip_summaries, ready


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


def _from_source(cfg: RunConfig, jobs: list[ClipJob], folder: storage.RunFolder, progress: bool,
                 stack: contextlib.ExitStack):
    """Bring SOURCE's clips into OUT's raw folder (docs/mirrors.md): one task per archive to read, each archive
    streamed once. Archives only the client sees (on its own disk, with OUT on an object store: no worker may rely
    on seeing that disk) are read by the client itself while the workers read the others.

    Returns jobs reading the clips that are now there, failed summaries for the others, a note for run.json, and
    the cluster when one was started (kept in `stack` for the clip wave)."""
    from dask.distributed import as_completed

    started = time.perf_counter()
    raw, index = folder.layout.raw, folder.layout.source_index
    plan = plan_source(resolve_source(cfg.source.path), jobs, raw)
    by_client = [a for a in plan.archives if folder.client_only(a)]
    by_tasks = [a for a in plan.archives if a not in by_client]
    passes, lost, client, futures = [], {}, None, {}
    bar = tqdm(total=len(plan.archives), unit="archive", disable=not progress or not plan.archives,
               desc="read archives")
    if by_tasks:
        client = stack.enter_context(_client(cfg))
        [wanted] = client.scatter([plan.wanted])  # one copy per worker, not one per task
        futures = {client.submit(extract_archive, archive, wanted, raw, index, retries=cfg.dask.retries,
                                 pure=False): archive for archive in by_tasks}
    for archive in by_client:  # meanwhile, on the client
        try:
            passes.append(extract_archive(archive, plan.wanted, raw, index))
        except Exception as exc:  # the store failed
            lost[archive] = f"{type(exc).__name__}: {exc}"
        bar.update(1)
    for fut in as_completed(futures) if futures else ():
        try:
            passes.append(fut.result())
        except Exception as exc:  # the worker died, or the store failed on every retry
            lost[futures[fut]] = f"{type(exc).__name__}: {exc}"
        bar.update(1)
    bar.close()
    ready, failed = source_jobs(plan, jobs, raw, lost)
    note = {"archives": len(plan.source.archives), "archives_read": len(plan.archives),
            "archives_read_by_client": len(by_client),
            "archives_skipped": plan.skipped, "loose_clips": len(plan.source.clips),
            "extracted": sum(p.extracted for p in passes), "lost": lost,
            "damaged": {p.archive: p.damaged for p in passes if p.damaged},
            "seconds": round(time.perf_counter() - started, 3)}
    return ready, {o.clip_id: o for o in failed}, note, client


def run(cfg: RunConfig, progress: bool = True) -> RunSummary:
    """Curate `cfg`'s clip list into shards and manifests under `cfg.out`."""
    with contextlib.ExitStack() as stack:  # a cluster started for SOURCE's archives serves the clips too
        return _run(cfg, progress, stack)


def _run(cfg: RunConfig, progress: bool, stack: contextlib.ExitStack) -> RunSummary:
    started = time.perf_counter()
    require_tools("ffmpeg", "ffprobe")
    cfg = check_scorer(cfg)  # a wrong checkpoint or missing device fails now, before the clip list is built
    folder = storage.run_folder(cfg.out)  # OUT opened once: on this machine or on an object store
    clip_list = load_clip_list(cfg, folder)
    jobs = run_jobs(clip_list)
    unreached, source_note, client = {}, None, None
    if cfg.source.path:
        jobs, unreached, source_note, client = _from_source(cfg, jobs, folder, progress, stack)
    cfg, digest = ensure_model(cfg, jobs, folder, progress)  # the scorer's preparation: e.g. trains the ssl model
    # after training, which reads the client's own files where it has them: what only the client sees, uploaded once
    jobs = upload_local_rows(jobs, folder)
    cfg, inputs = stage_inputs(cfg, folder)  # a given checkpoint or moments file
    paths = RunPaths.for_config(cfg, digest)
    folder.remove_temp_files((paths.raw, paths.cache, paths.manifests, paths.shards))
    storage.write_bytes(paths.layout.clips_manifest,
                        parquet_bytes(pending_clips_table(clip_list, label_index_of(clip_list))))
    retried = forget_transient_failures(paths.cache, [j.clip_id for j in jobs]) if cfg.fetch.retry_failed else 0
    remote_rows = any(j.path is None for j in jobs)  # url / YouTube rows
    gate = ClusterGate(cfg.fetch, _cluster_event, _cluster_semaphore) if remote_rows else None
    stop = StopCounter(cfg.fetch.stop_after, gate.request_stop if gate else None)
    loaded = time.perf_counter()
    with _client(cfg, client) as client:
        if cfg.dask.score_resource:
            _ensure_scoring_worker(client, cfg)
            submit, warm = _split_submitter(client, cfg, folder, paths.cache, gate), functools.partial(_warm_split, cfg)
        else:
            submit = _task_submitter(client, process_group, cfg, (folder, paths.cache, gate))
            warm = functools.partial(warm_up, cfg)
        clip_summaries, ready = _run_tasks(client, submit, jobs, cfg, progress, warm, stop=stop)
        timings = {"load_and_model_s": loaded - started, "cluster_start_s": ready - loaded,
                   "process_s": time.perf_counter() - ready}
        clip_summaries.add(unreached.values())
        score_s, n_scored = clip_summaries.total("score_s"), clip_summaries.total("scored")
        frames = clip_summaries.total("n_frames", scored_only=True)
        summary = finish(cfg, paths, clip_list, clip_summaries, timings, _dask_mapper(client, cfg), model_digest=digest,
                         scorer_frames_per_s_per_worker=round(frames / score_s, 2) if score_s else None,
                         scorer_page_faults_per_clip=round(clip_summaries.total("score_page_faults", scored_only=True)
                                                           / n_scored, 1) if n_scored else None,
                         fetch={"stopped": stop.reason, "retried_failed": retried}, source=source_note,
                         **({"inputs": inputs} if inputs else {}))
    notes = [f"retry-failed: {retried} clips with a transient failure fetched again"] if cfg.fetch.retry_failed else []
    return replace(summary, notes=tuple(notes + ([stop.reason] if stop.reason else [])))


def reselect(out: str | os.PathLike, overrides: dict, progress: bool = True) -> RunSummary:
    """Re-run selection on a finished run with new options of the sections decided after scoring
    (`curation.config.AFTER_SCORING_SECTIONS`: select.*, filters.*, write.*), without re-scoring.

    Clip scores come from the run's per-clip results; only newly chosen frames are decoded from `raw/`."""
    started = time.perf_counter()
    folder = storage.run_folder(out)  # OUT opened once: on this machine or on an object store
    record = read_run_record(folder.layout.out)
    data = dict(record["config"], out=folder.layout.out)
    # a run recorded before decode.short_clips existed failed its short clips `too_short`, as its cache holds them
    data["decode"] = {"short_clips": "reject", **data.get("decode", {})}
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        if section not in AFTER_SCORING_SECTIONS:
            *others, last = (f"{name}.*" for name in AFTER_SCORING_SECTIONS)
            raise ValueError(f"{dotted}: re-selection only changes {', '.join(others)} and {last} options")
        data.setdefault(section, {})[key] = value
    cfg = config_from_dict(data)
    clip_list = load_clip_list(cfg, folder)
    old_cache = folder.layout.cache(record["cache_dir"])
    paths = RunPaths.for_config(cfg, record.get("model_digest"))
    cached = set(storage.listdir(old_cache))  # one listing, not a request per clip
    jobs = [j for j in run_jobs(clip_list) if name_of(cache_path(old_cache, j.clip_id)) in cached]
    jobs = upload_local_rows(jobs, folder)  # (already there from the run: nothing is uploaded again)
    loaded = time.perf_counter()
    record = dict(model_digest=record.get("model_digest"), reselected_from=record["cache_dir"],
                  **{key: record[key] for key in ("inputs",) if key in record})
    if paths.cache == old_cache:  # only clip selection or shard options changed: no cluster needed
        clip_summaries = SummaryTable(read_summary(cache_path(old_cache, j.clip_id)) for j in jobs)
        timings = {"load_s": loaded - started, "cluster_start_s": 0.0, "process_s": time.perf_counter() - loaded}
        return finish(cfg, paths, clip_list, clip_summaries, timings, **record)
    with _client(cfg) as client:  # selection needs no model: warm the decoders only
        submit = _task_submitter(client, reselect_group, cfg, (folder, old_cache, paths.cache))
        clip_summaries, ready = _run_tasks(client, submit, jobs, cfg, progress, import_decoders, desc="reselect")
        timings = {"load_s": loaded - started, "cluster_start_s": ready - loaded,
                   "process_s": time.perf_counter() - ready}
        return finish(cfg, paths, clip_list, clip_summaries, timings, _dask_mapper(client, cfg), **record)
