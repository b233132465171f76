"""Typed pyarrow schemas of the manifest tables (the contract of DESIGN.md, documented in the README)."""

from __future__ import annotations

import pyarrow as pa

CLIP_STATUSES = ("pending", "ok", "failed", "rejected")

# The input side: what a clip list says should exist. Readers produce exactly these columns.
CLIP_LIST_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("ytid", pa.string()),
        pa.field("url", pa.string()),
        pa.field("path", pa.string()),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("source_row", pa.int64(), nullable=False),
    ]
)

# clips.parquet: one row per input clip, the clip list plus the outcome of the run.
CLIPS_SCHEMA = pa.schema(
    list(CLIP_LIST_SCHEMA)
    + [
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
        pa.field("clip_score", pa.float64()),
        pa.field("shard", pa.string()),
        pa.field("n_frames", pa.int32()),
        # scored with less audio than one window (decode.short_clips = tile): windows cut from it are the waveform
        # tiled, as the EZ-VSL / Sound2Scene loaders do; null where the clip was not scored
        pa.field("audio_tiled", pa.bool_()),
        pa.field("label_index", pa.int32()),
        # data-quality filters (docs/quality_filters.md); null where the clip was not decoded
        pa.field("still", pa.bool_()),  # the video barely changes (a static image with sound)
        pa.field("silent", pa.bool_()),  # the audio stays below the level floor for most of the clip
        pa.field("dup_group", pa.string()),  # representative clip_id of its near-duplicate group (itself included)
        pa.field("overlap_of", pa.string()),  # an earlier window of the same ytid that overlaps this one
    ]
)

# frames.parquet: one row per scored frame.
FRAMES_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("t", pa.float64(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("score_contrastive", pa.float32()),
        pa.field("score_moment", pa.float32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("selected", pa.bool_(), nullable=False),
    ]
)

# shards.parquet: one row per shard.
SHARDS_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("n_samples", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)

# raw/truth.parquet of the demo world: one row per video frame.
TRUTH_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("t", pa.float64(), nullable=False),
        pa.field("category", pa.int32(), nullable=False),
        pa.field("visible", pa.bool_(), nullable=False),
        pa.field("sounding", pa.bool_(), nullable=False),
        pa.field("matched", pa.bool_(), nullable=False),
        pa.field("scale", pa.float32(), nullable=False),
        pa.field("category2", pa.int32()),
        pa.field("visible2", pa.bool_()),
        pa.field("sound_category", pa.int32()),
    ]
)
