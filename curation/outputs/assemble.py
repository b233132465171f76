"""Assembly of a run's outputs from its per-clip results: selection across clips, shards, manifests, run.json.

Runs after the per-clip work (or a re-selection) and reads only the cache files, so the same cache and config
always give the same shards and manifests. The client selects from the small per-clip outcomes; shards and
frames.parquet parts are written by a second wave of tasks (`write_planned_shard`, `frames_part`).
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from curation import provenance, storage
from curation.config import RunConfig
from curation.outputs.shards import (
    ShardInfo,
    build_sample,
    chunks,
    remove_stale_shards,
    shard_name,
    write_shard,
    write_wids_index,
)
from curation.quality import Verdicts, judge
from curation.results import ClipOutcome, cache_path, read_cached, read_scores
from curation.select import keep_clips, moment_scores
from manifests.io import json_bytes, parquet_bytes, stream_parquet_parts
from manifests.readers import ClipList
from manifests.schema import CLIPS_SCHEMA, FRAMES_SCHEMA, SHARDS_SCHEMA

SAMPLE_FIELDS = ("clip_id", "dataset", "ytid", "start_s", "end_s", "label", "split")  # clip-list fields in `json`


@dataclass(frozen=True)
class RunPaths:
    """Where a run's outputs are: absolute local paths, or URLs when OUT is on an object store."""

    out: str
    raw: str
    cache: str
    manifests: str
    shards: str

    @classmethod
    def for_config(cls, cfg: RunConfig, model_digest: str | None = None) -> RunPaths:
        out = storage.resolve(cfg.out)
        return cls(out=out, raw=storage.join(out, "raw"),
                   cache=storage.join(out, "cache", cfg.clip_stage_fingerprint(model_digest)),
                   manifests=storage.join(out, "manifests"), shards=storage.join(out, "shards"))


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
    notes: tuple[str, ...] = ()  # what the run wants the user to know (a global fetch stop, retried clips)
    filtered: dict[str, int] = field(default_factory=dict)  # clips rejected by a data-quality filter, per kind


# frames.parquet is assembled from parts of this many clips (one row group each): a part is one task's work and
# the most the client holds at once (~25k rows at 10 s and 10 fps)
FRAME_PART_CLIPS = 256

# map(fn, items) -> fn's results in item order. The pipeline passes one that runs the calls as Dask tasks; the
# default runs them here, one after the other. Either way at most a few results are held at once.
Mapper = Callable[[Callable, list], Iterable]


@dataclass(frozen=True)
class PlannedShard:
    """One shard to write: its file name and its samples (clip id, label index, json fields), in order."""

    shard: str
    split: str | None
    samples: tuple[tuple[str, int, dict], ...]


def plan_shards(kept_rows: list[dict], cfg: RunConfig, label_index: dict[str, int]) -> dict[str, list[PlannedShard]]:
    """Kept clips -> shards, per shard set `<name>-<split>`: clips in clip-id order, `samples_per_shard` each.

    Depends only on the kept rows and the config, never on workers or timing: byte-identical shards."""
    by_split: dict[str | None, list[dict]] = {}
    for row in sorted(kept_rows, key=lambda r: r["clip_id"]):
        by_split.setdefault(row["split"], []).append(row)
    plans = {}
    for split in sorted(by_split, key=lambda s: s or ""):
        name = cfg.write.name or cfg.dataset
        name = f"{name}-{split}" if split else name
        samples = [(row["clip_id"], label_index[row["label"]], {key: row[key] for key in SAMPLE_FIELDS})
                   for row in by_split[split]]
        plans[name] = [PlannedShard(shard_name(name, index), split, tuple(chunk))
                       for index, chunk in enumerate(chunks(samples, cfg.write.samples_per_shard))]
    return plans


def _sample(cache_dir: str, clip_id: str, label: int, fields: dict) -> dict:
    cached = read_cached(cache_path(cache_dir, clip_id))
    best = int(cached.selected[0])
    meta = dict(fields, frame_t=float(cached.times[best]), score=float(cached.scores[best]), rank=1,
                ssl_model=cached.model_id,
                moments=[{"t": float(cached.times[i]), "score": float(cached.scores[i])} for i in cached.selected])
    return build_sample(clip_id, cached.jpgs, cached.flac, label, meta)


def write_planned_shard(plan: PlannedShard, cache_dir: str, shard_dir: str) -> ShardInfo:
    """One task of the write wave: read the shard's clips from their cache files and write the shard."""
    samples = (_sample(cache_dir, *spec) for spec in plan.samples)
    return write_shard(samples, shard_dir, plan.shard, plan.split)


def _write_shards(plans: dict[str, list[PlannedShard]], paths: RunPaths, mapper: Mapper) -> list[ShardInfo]:
    write = functools.partial(write_planned_shard, cache_dir=str(paths.cache), shard_dir=str(paths.shards))
    infos = list(mapper(write, [plan for name in plans for plan in plans[name]]))
    written = {info.shard for info in infos}
    for name in plans:
        index = write_wids_index(paths.shards, name, [i for i in infos if i.shard.startswith(f"{name}-")])
        written.add(index.rsplit("/", 1)[-1])
    remove_stale_shards(paths.shards, written)
    return infos


def frames_part(clip_ids: list[str], kept: frozenset[str], cache_dir: str, moment_window_s: float) -> pa.Table:
    """frames.parquet rows of some scored clips, read from their cache files without their media."""
    columns: dict[str, list] = {name: [] for name in FRAMES_SCHEMA.names}
    for clip_id in clip_ids:
        clip = read_scores(cache_path(cache_dir, clip_id))
        chosen = set(clip.selected.tolist()) if clip_id in kept else set()
        columns["clip_id"].extend([clip_id] * len(clip.times))
        columns["t"].extend(clip.times.tolist())
        columns["score"].extend(clip.scores.tolist())
        contrastive = clip.contrastive if clip.contrastive is not None else [None] * len(clip.times)
        columns["score_contrastive"].extend(list(contrastive))
        columns["score_moment"].extend(moment_scores(clip.times, clip.scores, moment_window_s).tolist())
        columns["rank"].extend(clip.ranks.tolist())
        columns["selected"].extend(i in chosen for i in range(len(clip.times)))
    return pa.table(columns, schema=FRAMES_SCHEMA)


def _filter_columns(clip_id: str, v: Verdicts | None) -> dict:
    if v is None:
        return {}
    return {"still": v.still.get(clip_id), "silent": v.silent.get(clip_id), "dup_group": v.dup_group.get(clip_id),
            "overlap_of": v.overlap_of.get(clip_id)}


def _write_frames(scored: list[str], kept: set[str], cfg: RunConfig, paths: RunPaths, mapper: Mapper) -> int:
    part = functools.partial(frames_part, kept=frozenset(kept), cache_dir=str(paths.cache),
                             moment_window_s=cfg.select.moment_window_s)
    groups = list(chunks(sorted(scored), FRAME_PART_CLIPS))
    with storage.atomic_output(storage.join(paths.manifests, "frames.parquet")) as f:
        return stream_parquet_parts(f, mapper(part, groups), FRAMES_SCHEMA)


def _clip_rows(clip_list: ClipList, outcomes: dict[str, ClipOutcome], kept: set[str],
               shard_of: dict[str, str], label_index: dict[str, int], verdicts: Verdicts | None = None) -> list[dict]:
    rows = []
    filtered = verdicts.rejected if verdicts else {}
    for row in clip_list.table.to_pylist():
        o = outcomes.get(row["clip_id"])
        status = "pending" if o is None else "failed" if not o.scored else "ok" if row["clip_id"] in kept \
            else "rejected"
        kind, error = filtered.get(row["clip_id"], (o.error_kind, o.error) if o else (None, None))
        rows.append(dict(row, status=status, error_kind=kind, error=error, clip_score=o.clip_score if o else None,
                         shard=shard_of.get(row["clip_id"]), n_frames=o.n_frames if o else 0,
                         label_index=label_index.get(row["label"]), **_filter_columns(row["clip_id"], verdicts)))
    failed = zip(clip_list.failed_table().to_pylist(), clip_list.error_kinds, clip_list.reasons, strict=True)
    for row, kind, reason in failed:
        rows.append(dict(row, status="failed", error_kind=kind, error=reason, clip_score=None, shard=None,
                         n_frames=0, label_index=None))
    return rows


def _judge(cfg: RunConfig, clip_list: ClipList, outcomes: dict[str, ClipOutcome]) -> Verdicts:
    """The data-quality filters over the run's measured clips (clips cached before the filters existed have no
    signals: they are neither judged nor rejected)."""
    windows = clip_list.table.select(["clip_id", "ytid", "start_s", "end_s"]).to_pydict()
    signals = {cid: o.quality for cid, o in outcomes.items() if o.scored and o.quality}
    return judge(list(zip(*windows.values(), strict=True)), signals, cfg.filters, cfg.decode.fps)


def keep_rates(rows: list[dict]) -> dict[str, dict]:
    """Per label: clips, scored (ok + rejected), kept, and keep_rate = kept / scored."""
    rates: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["label"] or ""):
        r = rates.setdefault(row["label"], {"clips": 0, "scored": 0, "kept": 0})
        r["clips"] += 1
        r["scored"] += row["status"] in ("ok", "rejected")
        r["kept"] += row["status"] == "ok"
    for r in rates.values():
        r["keep_rate"] = round(r["kept"] / r["scored"], 4) if r["scored"] else None
    return rates


def _filter_counts(rows: list[dict], rejected: dict[str, int]) -> dict[str, int]:
    """How many clips each filter flagged, and how many it rejected (`rejected`: per error kind)."""
    flagged = {"still": sum(bool(r.get("still")) for r in rows), "silent": sum(bool(r.get("silent")) for r in rows),
               "in_dup_group": sum(r.get("dup_group") is not None for r in rows),
               "overlapping": sum(r.get("overlap_of") is not None for r in rows)}
    return {**flagged, **{f"rejected_{kind}": n for kind, n in sorted(rejected.items())}}


def pending_clips_table(clip_list: ClipList, label_index: dict[str, int]) -> pa.Table:
    """clips.parquet before any work: every row `pending` (bad rows already `failed`)."""
    return pa.Table.from_pylist(_clip_rows(clip_list, {}, set(), {}, label_index), schema=CLIPS_SCHEMA)


def label_index_of(clip_list: ClipList) -> dict[str, int]:
    """`cls` values: the sorted label names of the valid rows."""
    return {label: i for i, label in enumerate(sorted(set(clip_list.table.column("label").to_pylist())))}


def finish(cfg: RunConfig, paths: RunPaths, clip_list: ClipList, outcomes: dict[str, ClipOutcome],
           timings: dict[str, float], mapper: Mapper = map, **record) -> RunSummary:
    """Select clips, write shards and manifests, and run.json; returns the run's summary.

    Selection needs only the clip scores the outcomes carry; shards and frames.parquet parts are written by
    `mapper` calls that each read their own clips' cache files, so no one process holds the run's media."""
    started = time.perf_counter()
    label_index = label_index_of(clip_list)
    scores = {cid: o.clip_score for cid, o in outcomes.items() if o.scored}
    verdicts = _judge(cfg, clip_list, outcomes)
    labels = dict(zip(*clip_list.table.select(["clip_id", "label"]).to_pydict().values(), strict=True))
    kept = keep_clips({cid: s for cid, s in scores.items() if cid not in verdicts.rejected}, cfg.select, labels)
    table = clip_list.table
    kept_rows = table.filter(pc.is_in(table["clip_id"], value_set=pa.array(sorted(kept), pa.string()))).to_pylist()
    infos = _write_shards(plan_shards(kept_rows, cfg, label_index), paths, mapper)
    shards_written = time.perf_counter()
    shard_of = {cid: info.shard for info in infos for cid in info.clip_ids}
    rows = _clip_rows(clip_list, outcomes, kept, shard_of, label_index, verdicts)
    _write_frames(list(scores), kept, cfg, paths, mapper)
    storage.write_bytes(storage.join(paths.manifests, "shards.parquet"), parquet_bytes(
        pa.Table.from_pylist([{k: getattr(i, k) for k in SHARDS_SCHEMA.names} for i in infos], schema=SHARDS_SCHEMA)))
    storage.write_bytes(storage.join(paths.manifests, "clips.parquet"),
                        parquet_bytes(pa.Table.from_pylist(rows, schema=CLIPS_SCHEMA)))
    storage.write_bytes(storage.join(paths.shards, "labels.json"), json_bytes(list(label_index)))
    timings = {**timings, "write_shards_s": shards_written - started,
               "manifests_s": time.perf_counter() - shards_written}

    counts = Counter(r["status"] for r in rows)
    kinds = Counter(r["error_kind"] for r in rows if r["error_kind"] and r["status"] != "rejected")
    summary = RunSummary(counts=dict(counts), error_kinds=dict(kinds), n_clips=len(rows), n_shards=len(infos),
                         n_samples=sum(i.n_samples for i in infos), seconds=sum(timings.values()),
                         clips_per_s=len(outcomes) / max(timings.get("process_s", 0.0), 1e-9),
                         duplicates_dropped=clip_list.duplicates_dropped, paths=paths,
                         filtered=dict(Counter(r["error_kind"] for r in rows if r["status"] == "rejected"
                                               and r["error_kind"])))
    storage.write_bytes(storage.join(paths.manifests, "run.json"), json_bytes(provenance.run_record(
        cfg, summary, timings=timings, labels=list(label_index), cache_dir=paths.cache.rsplit("/", 1)[-1],
        bad_rows=[{"row": b.row, "error_kind": b.error_kind, "reason": b.reason} for b in clip_list.bad_rows],
        keep_rate_per_label=keep_rates(rows), filters=_filter_counts(rows, summary.filtered), **record)))
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
    for kind, n in sorted(summary.filtered.items()):
        lines.append(f"  rejected {kind}: {n}")
    lines += [f"  note: {note}" for note in summary.notes]
    lines.append(f"shards:    {summary.paths.shards} ({summary.n_shards} shards, {summary.n_samples} samples)")
    lines.append(f"manifests: {summary.paths.manifests}/{{clips,frames,shards}}.parquet, run.json")
    return "\n".join(lines)
