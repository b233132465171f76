"""The report's moment captions: long YouTube clip ids and labels fit their panels, so captions never overlap."""

import io

import numpy as np
from PIL import Image

from curation.outputs.report import caption, moment_panels

LONG_ID = "AbCdEfGhIjK_0012345_0022345"  # <ytid>_<start_ms>_<end_ms>, the longest ids a run has
LONG_LABEL = "playing electric guitar, slide and a long solo"


def _jpg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((180, 320, 3), 90, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _title_extents(titles: list[str]) -> list:
    fig = moment_panels([(_jpg(), np.eye(7), True, t) for t in titles])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [ax.title.get_window_extent(renderer) for ax in fig.axes]


def test_captions_of_eight_long_ids_do_not_overlap():
    boxes = _title_extents([caption(LONG_ID, LONG_LABEL, 0.1234, 3.5)] * 8)
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:], strict=False))
    unwrapped = _title_extents([f"{LONG_ID}\n{LONG_LABEL}\nscore 0.123 t=3.5s"] * 8)  # one line each, as before
    assert any(left.x1 >= right.x0 for left, right in zip(unwrapped, unwrapped[1:], strict=False))


def test_a_caption_keeps_the_whole_id_and_shortens_only_the_label():
    lines = caption(LONG_ID, LONG_LABEL, 0.1234, 3.5).split("\n")
    assert "".join(lines[:2]) == LONG_ID and all(len(line) <= 18 for line in lines)
    assert lines[3].endswith("…") and lines[-1] == "score 0.123 t=3.5s"
    assert caption("demo-0001", "dog", 0.5, 1.0) == "demo-0001\ndog\nscore 0.500 t=1.0s"
