"""The client's table of every clip's summary (`clip_cache.ClipSummary`), as Arrow columns.

A task returns a short list of `ClipSummary`s; the client turns each list into one record batch at once (the
data-quality fingerprints decoded from their base64 JSON form into list columns), so what it holds grows by
a few hundred bytes of columns per clip, not by a dataclass and a dict of strings (~10 KiB of Python objects
per clip before). `outputs.finish` reads the columns with Arrow compute and numpy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.clip_cache import ClipSummary
from curation.outputs.shards import chunks
from curation.quality import ARRAYS, Fingerprints, fingerprint

SUMMARY_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string()),
    pa.field("scored", pa.bool_()),
    pa.field("error_kind", pa.string()),
    pa.field("error", pa.string()),
    pa.field("clip_score", pa.float64()),
    pa.field("n_frames", pa.int32()),
    pa.field("seconds", pa.float64()),
    pa.field("score_s", pa.float64()),
    pa.field("score_page_faults", pa.int64()),
    pa.field("from_cache", pa.bool_()),
    pa.field("audio_tiled", pa.bool_()),
    # the data-quality signals (curation.quality.Signals): null where the clip was not measured
    pa.field("motion", pa.float64()),
    pa.field("loud_db", pa.float64()),
    pa.field("quality_s", pa.float64()),
    # the duplicate fingerprint's arrays (curation.quality.ARRAYS: their names and types are quality's to choose)
    *(pa.field(name, pa.list_(pa.from_numpy_dtype(dtype))) for name, dtype in ARRAYS.items()),
])
_PLAIN = SUMMARY_SCHEMA.names[:11]
BATCH_ROWS = 256  # summaries converted at a time when more come at once (a task returns a few)
COMPACT_EVERY = 256  # batches: merged into one then, so small per-batch buffers do not pile up


def _batch(summaries: list[ClipSummary]) -> pa.RecordBatch:
    columns: dict[str, list] = {name: [getattr(s, name) for s in summaries] for name in _PLAIN}
    measured = [s.quality for s in summaries]
    fps = [fingerprint(q) if q else None for q in measured]
    columns.update(motion=[q["motion"] if q else None for q in measured],
                   loud_db=[q["loud_db"] if q else None for q in measured],
                   quality_s=[q["seconds"] if q else None for q in measured],
                   **{name: [getattr(f, name) if f else None for f in fps] for name in ARRAYS})
    return pa.RecordBatch.from_pydict(columns, schema=SUMMARY_SCHEMA)


class SummaryTable:
    """Every clip's summary as it comes back, in columns; a clip recorded twice keeps its last summary."""

    def __init__(self, summaries: Iterable[ClipSummary] = ()):
        self._batches: list[pa.RecordBatch] = []
        self.add(summaries)

    def add(self, summaries: Iterable[ClipSummary]) -> None:
        """Record summaries (a task's list, or any iterable: it is read BATCH_ROWS at a time)."""
        for chunk in chunks(summaries, BATCH_ROWS):
            self._batches.append(_batch(chunk))
            if len(self._batches) >= COMPACT_EVERY:
                self._batches = pa.Table.from_batches(self._batches).combine_chunks().to_batches()

    def __len__(self) -> int:
        return len(self.table())

    def table(self) -> pa.Table:
        """One row per clip (its last summary), in the order they came."""
        table = pa.Table.from_batches(self._batches, schema=SUMMARY_SCHEMA)
        if pc.count_distinct(table["clip_id"]).as_py() == table.num_rows:
            return table
        rows = table.select(["clip_id"]).append_column("row", pa.array(np.arange(table.num_rows)))
        last = rows.group_by("clip_id", use_threads=False).aggregate([("row", "max")])["row_max"]
        return table.take(np.sort(last.to_numpy()))

    def total(self, column: str, scored_only: bool = False) -> float:
        table = self.table()
        values = table.filter(table["scored"])[column] if scored_only else table[column]
        return pc.sum(values).as_py() or 0


def measured_clips(measured: pa.Table) -> tuple[Fingerprints, np.ndarray]:
    """Measured clips' summary rows -> their fingerprint arrays and loudness (dBFS), in clip-id order."""
    measured = measured.take(pc.sort_indices(measured["clip_id"]))

    def flat(name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
        column = measured[name].combine_chunks()
        offsets = column.offsets.to_numpy().astype(np.int64)
        return column.flatten().to_numpy(zero_copy_only=False).astype(dtype), offsets - offsets[0]

    fps = Fingerprints.from_columns(measured["clip_id"].to_pylist(),
                                    {name: flat(name, dtype) for name, dtype in ARRAYS.items()},
                                    measured["motion"].to_numpy())
    return fps, measured["loud_db"].to_numpy()
