"""Assembly of a run's outputs from its per-clip results: selection across clips, shards, manifests, run.json.

Runs after the per-clip work (or a re-selection) and reads only the cache files, so the same cache and config
always give the same shards and manifests. The client selects from the small per-clip summaries; shards and
frames.parquet parts are written by a second wave of tasks (`write_planned_shard`, `frames_part`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation import provenance, storage
from curation.clip_cache import cache_path, read_media, read_scores
from curation.config import RunConfig
from curation.outputs.sample_media import build_sample
from curation.outputs.shards import (
    ShardInfo,
    remove_stale_shards,
    shard_name,
    write_shard,
    write_wids_index,
)
from curation.quality import Verdicts, judge_measured
from curation.select import keep_clips, moment_scores
from curation.summary_table import SummaryTable, measured_clips
from manifests.io import json_bytes, parquet_bytes, stream_parquet_parts
from manifests.layout import RunLayout, name_of
from manifests.readers import ClipList
from manifests.schema import CLIPS_SCHEMA, FRAMES_SCHEMA, SHARDS_SCHEMA

SAMPLE_FIELDS = ("clip_id", "dataset", "ytid", "start_s", "end_s", "label", "split")  # clip-list fields in `json`


@dataclass(frozen=True)
class RunPaths:
    """Where a run's outputs are: absolute local paths, or URLs when OUT is on an object store (`layout`), and
    the per-clip cache folder of its configuration (`cache`)."""

    out: str
    raw: str
    cache: str
    manifests: str
    shards: str

    @classmethod
    def for_config(cls, cfg: RunConfig, model_digest: str | None = None) -> RunPaths:
        layout = RunLayout(storage.resolve(cfg.out))
        return cls(out=layout.out, raw=layout.raw, cache=layout.cache(cfg.clip_stage_fingerprint(model_digest)),
                   manifests=layout.manifests, shards=layout.shards)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)


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
Mapper = Callable[[Callable, Iterable], Iterable]
STATUSES = pa.array(["pending", "ok", "failed", "rejected"])


@dataclass(frozen=True)
class PlannedShard:
    """One shard to write: its file name and its samples' rows (SAMPLE_FIELDS + `label_index`), in order."""

    shard: str
    split: str | None
    rows: pa.Table

    @property
    def samples(self) -> list[tuple[str, int, dict]]:
        """(clip id, label index, json fields) per sample."""
        return [(row["clip_id"], row["label_index"], {key: row[key] for key in SAMPLE_FIELDS})
                for row in self.rows.to_pylist()]


def _lookup(keys: pa.Array | pa.ChunkedArray, table: pa.Table, key: str = "clip_id") -> pa.Table:
    """`table`'s rows in the order of `keys` (a null row where a key is not in `table[key]`)."""
    return table.take(pc.index_in(keys, value_set=table[key].combine_chunks()))


def _label_indices(labels: pa.Array | pa.ChunkedArray, label_index: dict[str, int]) -> pa.Array:
    found = pc.index_in(labels, value_set=pa.array(list(label_index), pa.string()))
    return pa.array(list(label_index.values()), pa.int32()).take(found)


def plan_shards(kept: pa.Table, cfg: RunConfig, label_index: dict[str, int]) -> dict[str, list[PlannedShard]]:
    """Kept clips (clip-list rows) -> shards, per shard set `<name>-<split>`: clips in clip-id order,
    `samples_per_shard` each.

    Depends only on the kept rows and the config, never on workers or timing: byte-identical shards."""
    kept = kept.select(list(SAMPLE_FIELDS)).sort_by("clip_id")
    kept = kept.append_column("label_index", _label_indices(kept["label"], label_index))
    plans = {}
    for split in sorted(pc.unique(kept["split"]).to_pylist(), key=lambda s: s or ""):
        rows = kept.filter(pc.is_null(kept["split"]) if split is None else pc.equal(kept["split"], split))
        name = cfg.write.name or cfg.dataset
        name = f"{name}-{split}" if split else name
        size = cfg.write.samples_per_shard
        # `take` copies a shard's rows: a slice would carry (and pickle) the whole table's buffers
        plans[name] = [PlannedShard(shard_name(name, index), split,
                                    rows.take(pa.array(np.arange(start, min(start + size, rows.num_rows)))))
                       for index, start in enumerate(range(0, rows.num_rows, size))]
    return plans


def _sample(cache_dir: str, clip_id: str, label: int, fields: dict) -> dict:
    cached = read_media(cache_path(cache_dir, clip_id))
    best = int(cached.selected[0])
    meta = dict(fields, frame_t=float(cached.times[best]), score=float(cached.scores[best]), rank=1,
                ssl_model=cached.model_id,
                moments=[{"t": float(cached.times[i]), "score": float(cached.scores[i])} for i in cached.selected])
    return build_sample(clip_id, cached.jpgs, cached.flac, label, meta)


def write_planned_shard(plan: PlannedShard, cache_dir: str, shard_dir: str) -> ShardInfo:
    """One task of the write wave: read the shard's clips from their cache files and write the shard."""
    samples = (_sample(cache_dir, *spec) for spec in plan.samples)
    return write_shard(samples, shard_dir, plan.shard, plan.split)


def _shard_of(plans: dict[str, list[PlannedShard]]) -> pa.Table:
    """(clip_id, shard) of every planned sample."""
    parts = [pa.table({"clip_id": p.rows["clip_id"], "shard": pa.array([p.shard] * p.rows.num_rows, pa.string())})
             for name in plans for p in plans[name]]
    return pa.concat_tables(parts) if parts else pa.table({"clip_id": pa.array([], pa.string()),
                                                           "shard": pa.array([], pa.string())})


def _write_shards(plans: dict[str, list[PlannedShard]], paths: RunPaths, mapper: Mapper) -> list[ShardInfo]:
    write = functools.partial(write_planned_shard, cache_dir=str(paths.cache), shard_dir=str(paths.shards))
    infos = list(mapper(write, [plan for name in plans for plan in plans[name]]))
    written = {info.shard for info in infos}
    for name in plans:
        index = write_wids_index(paths.shards, name, [i for i in infos if i.shard.startswith(f"{name}-")])
        written.add(name_of(index))
    remove_stale_shards(paths.shards, written)
    return infos


def frames_part(part: tuple[list[str], list[str]], cache_dir: str, moment_window_s: float) -> pa.Table:
    """frames.parquet rows of some scored clips (`part`: their ids, and those of them that are kept), read from
    their cache files without their media."""
    clip_ids, kept = part[0], set(part[1])
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


def _frame_parts(scored: pa.Array, kept: pa.Array) -> Iterator[tuple[list[str], list[str]]]:
    """Scored clips in clip-id order, FRAME_PART_CLIPS at a time: (their ids, the kept ones among them)."""
    scored = scored.take(pc.sort_indices(scored))
    is_kept = pc.is_in(scored, value_set=kept)
    for start in range(0, len(scored), FRAME_PART_CLIPS):
        ids = scored.slice(start, FRAME_PART_CLIPS)
        yield ids.to_pylist(), ids.filter(is_kept.slice(start, FRAME_PART_CLIPS)).to_pylist()


def _write_frames(scored: pa.Array, kept: pa.Array, cfg: RunConfig, paths: RunPaths, mapper: Mapper) -> int:
    part = functools.partial(frames_part, cache_dir=str(paths.cache), moment_window_s=cfg.select.moment_window_s)
    with storage.atomic_output(paths.layout.frames_manifest) as f:
        return stream_parquet_parts(f, mapper(part, _frame_parts(scored, kept)), FRAMES_SCHEMA)


def _by_clip(keys: pa.ChunkedArray, found: dict[str, object], type_: pa.DataType) -> pa.Array:
    """`found[clip_id]` for each of `keys` (null where absent); `found` names few clips."""
    return pa.array(list(found.values()), type_).take(pc.index_in(keys, value_set=pa.array(list(found), pa.string())))


def _filter_columns(ids: pa.ChunkedArray, v: Verdicts | None) -> dict[str, pa.Array]:
    if v is None:
        return {}
    measured = pc.index_in(ids, value_set=pa.array(v.ids, pa.string()))
    return {"still": pa.array(v.still, pa.bool_()).take(measured),
            "silent": pa.array(v.silent, pa.bool_()).take(measured),
            "dup_group": _by_clip(ids, v.dup_group, pa.string()),
            "overlap_of": _by_clip(ids, v.overlap_of, pa.string())}


def _clip_table(clip_list: ClipList, summary_rows: pa.Table, kept: pa.Array, shards: pa.Table,
                label_index: dict[str, int], verdicts: Verdicts | None = None) -> pa.Table:
    """clips.parquet: the valid rows with their summary, then the bad rows as failed; columns, no row objects."""
    valid = clip_list.table
    ids = valid["clip_id"]
    o = _lookup(ids, summary_rows)
    pending = o["scored"].is_null().to_numpy(zero_copy_only=False)
    scored = o["scored"].fill_null(False).to_numpy(zero_copy_only=False)
    is_kept = pc.is_in(ids, value_set=kept).to_numpy(zero_copy_only=False)
    status = STATUSES.take(pa.array(np.select([pending, ~scored, is_kept], [0, 2, 1], 3)))
    rejected = (verdicts.rejected if verdicts else {})
    filtered = pc.is_in(ids, value_set=pa.array(list(rejected), pa.string()))
    columns = {name: valid[name] for name in valid.column_names} | {
        "status": status,
        "error_kind": pc.if_else(filtered, _by_clip(ids, {c: k for c, (k, _) in rejected.items()}, pa.string()),
                                 o["error_kind"]),
        "error": pc.if_else(filtered, _by_clip(ids, {c: e for c, (_, e) in rejected.items()}, pa.string()),
                            o["error"]),
        "clip_score": o["clip_score"], "shard": _lookup(ids, shards)["shard"], "n_frames": o["n_frames"].fill_null(0),
        "audio_tiled": pc.if_else(pa.array(scored), o["audio_tiled"], pa.scalar(None, pa.bool_())),
        "label_index": _label_indices(valid["label"], label_index), **_filter_columns(ids, verdicts)}
    bad = clip_list.failed_table()
    n_bad = bad.num_rows
    bad_columns = {name: bad[name] for name in bad.column_names} | {
        "status": pa.array(["failed"] * n_bad), "error_kind": pa.array(clip_list.error_kinds, pa.string()),
        "error": pa.array(clip_list.reasons, pa.string()), "n_frames": pa.array(np.zeros(n_bad, np.int32))}

    def table(cols: dict, n: int) -> pa.Table:
        return pa.Table.from_arrays([cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type)
                                     for f in CLIPS_SCHEMA], schema=CLIPS_SCHEMA)

    return pa.concat_tables([table(columns, valid.num_rows), table(bad_columns, n_bad)]).combine_chunks()


def _overlap_windows(clip_list: ClipList) -> list[tuple[str, str | None, float, float]]:
    """(clip_id, ytid, start_s, end_s) of the valid rows whose ytid has other rows: the only ones that can
    overlap (most ytids have one window)."""
    rows = clip_list.table.select(["clip_id", "ytid", "start_s", "end_s"])
    rows = rows.filter(pc.is_valid(rows["ytid"]))
    counts = rows.group_by("ytid", use_threads=False).aggregate([("clip_id", "count")])
    repeated = counts.filter(pc.greater(counts["clip_id_count"], 1))["ytid"].combine_chunks()
    return list(zip(*rows.filter(pc.is_in(rows["ytid"], value_set=repeated)).to_pydict().values(), strict=True))


def _judge(cfg: RunConfig, clip_list: ClipList, scored: pa.Table) -> Verdicts:
    """The data-quality filters over the run's measured clips (clips cached before the filters existed have no
    signals: they are neither judged nor rejected)."""
    fingerprints, loud_db = measured_clips(scored.filter(pc.is_valid(scored["motion"])))
    return judge_measured(_overlap_windows(clip_list), fingerprints, loud_db, cfg.filters, cfg.decode.fps)


def _counts(values: pa.ChunkedArray) -> dict[str, int]:
    return {item["values"].as_py(): item["counts"].as_py() for item in pc.value_counts(values)}


def keep_rates(clips: pa.Table) -> dict[str, dict]:
    """Per label: clips, scored (ok + rejected), kept, and keep_rate = kept / scored."""
    status = clips["status"]
    flags = pa.table({"label": clips["label"], "scored": pc.is_in(status, value_set=pa.array(["ok", "rejected"])),
                      "kept": pc.equal(status, "ok")})
    per_label = flags.group_by("label", use_threads=False).aggregate(
        [("label", "count"), ("scored", "sum"), ("kept", "sum")]).to_pylist()
    rates = {}
    for r in sorted(per_label, key=lambda r: r["label"] or ""):
        rates[r["label"]] = {"clips": r["label_count"], "scored": r["scored_sum"], "kept": r["kept_sum"],
                             "keep_rate": round(r["kept_sum"] / r["scored_sum"], 4) if r["scored_sum"] else None}
    return rates


def _filter_counts(clips: pa.Table, rejected: dict[str, int]) -> dict[str, int]:
    """How many clips each filter flagged, and how many it rejected (`rejected`: per error kind)."""
    flagged = {"still": pc.sum(clips["still"].fill_null(False)).as_py() or 0,
               "silent": pc.sum(clips["silent"].fill_null(False)).as_py() or 0,
               "in_dup_group": pc.count(clips["dup_group"]).as_py(),
               "overlapping": pc.count(clips["overlap_of"]).as_py()}
    return {**flagged, **{f"rejected_{kind}": n for kind, n in sorted(rejected.items())}}


def pending_clips_table(clip_list: ClipList, label_index: dict[str, int]) -> pa.Table:
    """clips.parquet before any work: every row `pending` (bad rows already `failed`)."""
    return _clip_table(clip_list, SummaryTable().table(), pa.array([], pa.string()), _shard_of({}), label_index)


def label_index_of(clip_list: ClipList) -> dict[str, int]:
    """`cls` values: the sorted label names of the valid rows."""
    return {label: i for i, label in enumerate(sorted(set(clip_list.table.column("label").to_pylist())))}


def _select(cfg: RunConfig, clip_list: ClipList, scored: pa.Table) -> tuple[pa.Array, Verdicts]:
    """The kept clips' ids (sorted) and the filters' verdicts, from the scored clips' summary rows."""
    verdicts = _judge(cfg, clip_list, scored)
    candidates = scored.filter(pc.invert(pc.is_in(scored["clip_id"], value_set=pa.array(list(verdicts.rejected),
                                                                                            pa.string()))))
    ids = candidates["clip_id"].to_pylist()
    labels = None
    if cfg.select.per_label:
        labels = dict(zip(ids, _lookup(candidates["clip_id"], clip_list.table)["label"].to_pylist(), strict=True))
    kept = keep_clips(dict(zip(ids, candidates["clip_score"].to_pylist(), strict=True)), cfg.select, labels)
    return pa.array(sorted(kept), pa.string()), verdicts


def finish(cfg: RunConfig, paths: RunPaths, clip_list: ClipList, clip_summaries: SummaryTable,
           timings: dict[str, float], mapper: Mapper = map, **record) -> RunSummary:
    """Select clips, write shards and manifests, and run.json; returns the run's summary.

    Selection needs only the clip scores the summaries carry; shards and frames.parquet parts are written by
    `mapper` calls that each read their own clips' cache files, so no one process holds the run's media. The
    client holds columns, never a Python object per clip."""
    started = time.perf_counter()
    label_index = label_index_of(clip_list)
    table = clip_summaries.table()
    scored = table.filter(table["scored"])
    kept, verdicts = _select(cfg, clip_list, scored)
    selected = time.perf_counter()
    plans = plan_shards(clip_list.table.filter(pc.is_in(clip_list.table["clip_id"], value_set=kept)), cfg,
                        label_index)
    infos = _write_shards(plans, paths, mapper)
    shards_written = time.perf_counter()
    shards = _shard_of(plans)
    clips = _clip_table(clip_list, table, kept, shards, label_index, verdicts)
    _write_frames(scored["clip_id"].combine_chunks(), kept, cfg, paths, mapper)
    storage.write_bytes(paths.layout.shards_manifest, parquet_bytes(
        pa.Table.from_pylist([{k: getattr(i, k) for k in SHARDS_SCHEMA.names} for i in infos], schema=SHARDS_SCHEMA)))
    storage.write_bytes(paths.layout.clips_manifest, parquet_bytes(clips))
    storage.write_bytes(paths.layout.labels, json_bytes(list(label_index)))
    timings = {**timings, "select_s": selected - started, "write_shards_s": shards_written - selected,
               "manifests_s": time.perf_counter() - shards_written}

    status, kind = clips["status"], clips["error_kind"]
    has_kind = pc.and_(pc.is_valid(kind), pc.not_equal(kind, ""))
    is_rejected = pc.equal(status, "rejected")
    summary = RunSummary(counts=_counts(status),
                         error_kinds=_counts(kind.filter(pc.and_(has_kind, pc.invert(is_rejected)))),
                         n_clips=clips.num_rows, n_shards=len(infos), n_samples=sum(i.n_samples for i in infos),
                         seconds=sum(timings.values()),
                         clips_per_s=table.num_rows / max(timings.get("process_s", 0.0), 1e-9),
                         duplicates_dropped=clip_list.duplicates_dropped, paths=paths,
                         filtered=_counts(kind.filter(pc.and_(has_kind, is_rejected))))
    storage.write_bytes(paths.layout.run_record, json_bytes(provenance.run_record(
        cfg, summary, timings=timings, labels=list(label_index), cache_dir=name_of(paths.cache),
        bad_rows=[{"row": b.row, "error_kind": b.error_kind, "reason": b.reason} for b in clip_list.bad_rows],
        keep_rate_per_label=keep_rates(clips), filters=_filter_counts(clips, summary.filtered), **record)))
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
