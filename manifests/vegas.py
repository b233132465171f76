"""VEGAS clip lists: the 10 VEGAS categories taken from AudioSet segment CSVs, or a local VEGAS folder.

VEGAS (Zhou et al., "Visual to Sound", CVPR 2018) is 10 AudioSet categories; its own download is not public,
so the list is rebuilt from AudioSet's segment files (`YTID, start_seconds, end_seconds, positive_labels`,
`#` comment lines, labels as class ids like `/m/0bt9lr`) and the label map `class_labels_indices.csv`
(`index,mid,display_name`). A folder of already-downloaded VEGAS videos is the other source: a video's
category is the first folder on its path named like one (`dog/`, `Baby_crying/`, `water flowing/` ...).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

from manifests.readers import ClipList, ClipListError, _Collector, _read_text

# VEGAS category -> AudioSet display names. AudioSet has no "water flowing" class: its natural flowing-water
# classes stand in. Segments labelled with two VEGAS categories are left out (no single true label).
VEGAS_CATEGORIES: dict[str, tuple[str, ...]] = {
    "baby crying": ("Baby cry, infant cry",),
    "chainsaw": ("Chainsaw",),
    "dog": ("Dog",),
    "drum": ("Drum",),
    "fireworks": ("Fireworks",),
    "helicopter": ("Helicopter",),
    "printer": ("Printer",),
    "rail transport": ("Rail transport",),
    "snoring": ("Snoring",),
    "water flowing": ("Stream", "Water tap, faucet"),
}
_FOLDER_ALIASES = {**{name: name for name in VEGAS_CATEGORIES}, "baby": "baby crying", "baby cry": "baby crying",
                   "baby cry infant cry": "baby crying", "drums": "drum", "firework": "fireworks",
                   "rail": "rail transport", "train": "rail transport", "snore": "snoring", "water": "water flowing"}
_VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv")
LABEL_MAP_NAME = "class_labels_indices.csv"


def read_label_map(path: str | os.PathLike) -> dict[str, str]:
    """AudioSet `class_labels_indices.csv` -> {display_name: mid}."""
    rows = list(csv.DictReader(io.StringIO(_read_text(Path(path)))))
    if not rows or not {"mid", "display_name"} <= set(rows[0]):
        raise ClipListError(f"{path}: not an AudioSet label map (expected columns index,mid,display_name)")
    return {row["display_name"].strip(): row["mid"].strip() for row in rows}


def _category_of_mid(label_map: dict[str, str], path: Path) -> dict[str, str]:
    missing = [name for names in VEGAS_CATEGORIES.values() for name in names if name not in label_map]
    if missing:
        raise ClipListError(f"{path}: AudioSet label map lacks the VEGAS class(es) {', '.join(missing)}")
    return {label_map[name]: category for category, names in VEGAS_CATEGORIES.items() for name in names}


def _split_of(path: Path) -> str | None:
    name = path.name.lower()
    return "test" if "eval" in name else "train" if "train" in name else None


def _segment_rows(path: Path, first_row: int, category_of: dict[str, str], out: _Collector) -> int:
    """Add the VEGAS rows of one segment CSV; returns the number of lines read (rows count across files)."""
    lines = _read_text(path).splitlines()
    split = _split_of(path)
    for number, line in enumerate(lines, start=first_row):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = next(csv.reader([line], skipinitialspace=True, strict=True))
        except csv.Error as exc:
            out.add_bad(number, line, "invalid_row", f"{path.name}: unparsable csv: {exc}")
            continue
        if len(fields) != 4:
            out.add_bad(number, line, "invalid_row", f"{path.name}: expected 4 columns, got {len(fields)}")
            continue
        ytid, start, end, labels = (f.strip() for f in fields)
        categories = {category_of[mid.strip()] for mid in labels.split(",") if mid.strip() in category_of}
        if len(categories) == 1:
            out.add(number, line, {"ytid": ytid, "start_s": start, "end_s": end, "label": categories.pop(),
                                   "split": split})
    return len(lines)


def _read_segments(csvs: list[Path], label_map: Path) -> ClipList:
    if not label_map.is_file():
        raise ClipListError(f"AudioSet label map not found: {label_map} (give it with label_map / LABEL_MAP=)")
    category_of = _category_of_mid(read_label_map(label_map), label_map)
    out = _Collector("vegas")
    row = 1
    for path in csvs:
        row += _segment_rows(path, row, category_of, out)
    return out.result()


def _folder_category(rel: Path) -> str | None:
    for part in rel.parts[:-1]:
        name = re.sub(r"[\s_-]+", " ", part.lower()).strip()
        if name in _FOLDER_ALIASES:
            return _FOLDER_ALIASES[name]
    return None


def _read_folder(root: Path, clip_seconds: float) -> ClipList:
    """One clip per video file, [0, clip_seconds) of it (VEGAS videos are at most 10 s; a shorter file is
    curated whole); the category comes from the folders on its path."""
    out = _Collector("vegas")
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in _VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise ClipListError(f"{root}: no AudioSet segment CSVs and no videos ({', '.join(_VIDEO_SUFFIXES)}) found")
    for number, path in enumerate(videos, start=1):
        rel = path.relative_to(root)
        category = _folder_category(rel)
        values = {"path": str(path.absolute()), "start_s": 0.0, "end_s": clip_seconds, "label": category}
        if category is None:
            out.add_bad(number, str(rel), "missing_label", f"{rel}: no VEGAS category folder on the path",
                        record={**out._record(number, values), "label": ""})
        else:
            out.add(number, str(rel), values)
    return out.result()


def read_vegas(meta: str | os.PathLike, label_map: str | os.PathLike | None = None,
               clip_seconds: float = 10.0) -> ClipList:
    """VEGAS rows from an AudioSet segment CSV, a folder of them (`*segments*.csv`, read in name order),
    or a folder of VEGAS videos. The label map defaults to `class_labels_indices.csv` beside the CSVs."""
    meta = Path(meta)
    if meta.is_file():
        return _read_segments([meta], Path(label_map) if label_map else meta.parent / LABEL_MAP_NAME)
    if not meta.is_dir():
        raise ClipListError(f"VEGAS list not found: {meta}")
    csvs = sorted(p for p in meta.glob("*.csv") if "segments" in p.name.lower())
    if csvs:
        return _read_segments(csvs, Path(label_map) if label_map else meta / LABEL_MAP_NAME)
    return _read_folder(meta, clip_seconds)
