"""A contact sheet of a demo world: a few frames of its first clips in one PNG, each row labelled with the clip's
category and kind (`python -m curation demo ... --sheet PATH.png`; the pictures in docs/demo_worlds.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from curation.demo import HEIGHT, WIDTH, DemoWorld

SHEET_SCALE = 2  # frames shrunk by this factor, to keep the PNG small
LABEL_H = 14  # pixels of the label strip above each row
GAP = 2


def _frames(path: Path, picks: list[int]) -> np.ndarray:
    """The picked frames of a clip, decoded through ffmpeg at the sheet's size."""
    w, h = WIDTH // SHEET_SCALE, HEIGHT // SHEET_SCALE
    raw = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-vf", f"scale={w}:{h}",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)[picks]


def contact_sheet(world: DemoWorld, dst: str | os.PathLike, n_clips: int = 8, n_frames: int = 3) -> Path:
    """Write `n_frames` evenly spread frames of each of the world's first `n_clips` clips as one PNG row per clip,
    labelled `clip id  category  kind  background` (the mismatch variant after a colon, `+camera` for a moving
    camera)."""
    counts = json.loads(world.world_json.read_text())["counts"]
    # worlds made before presets record neither: all their backgrounds are gradients, their cameras static
    backgrounds, camera = counts.get("clip_backgrounds", {}), set(counts.get("camera_clips", []))
    labels = dict(zip(*pq.read_table(world.clips_path, columns=["clip_id", "label"]).to_pydict().values(),
                      strict=True))
    picks = [int((2 * j + 1) * world.n_frames / (2 * n_frames)) for j in range(n_frames)]
    w, h = WIDTH // SHEET_SCALE, HEIGHT // SHEET_SCALE
    rows = min(n_clips, world.n_clips)
    sheet = Image.new("RGB", (n_frames * (w + GAP) - GAP, LABEL_H + rows * (h + LABEL_H + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((2, 1), f"demo world preset: {world.preset}", fill="black")
    for row in range(rows):
        clip_id = f"demo{row:05d}"
        kind = counts["clip_kinds"][clip_id]
        variant = counts["clip_variants"].get(clip_id)
        scene = backgrounds.get(clip_id, "gradient") + ("+camera" if clip_id in camera else "")
        top = LABEL_H + row * (h + LABEL_H + GAP)
        draw.text((2, top + 1), f"{clip_id}  {labels[clip_id]}  {kind}{':' + variant if variant else ''}  {scene}",
                  fill="black")
        for j, frame in enumerate(_frames(world.raw_dir / f"{clip_id}.mp4", picks)):
            sheet.paste(Image.fromarray(frame), (j * (w + GAP), top + LABEL_H))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    # a 256-colour palette keeps a sheet of busy backgrounds near 100 KB (about a fifth of its RGB PNG); the octree
    # keeps the objects' saturated colours, which median cut merged into the backgrounds' muted ones
    sheet.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(dst, optimize=True)
    return Path(dst)
