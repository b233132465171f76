"""One self-contained HTML page about a curation run: what was kept, why, and where the sound is.

Score histograms (kept vs dropped), the best and worst moments with their heat maps' peak regions outlined,
what the data-quality filters flagged, keep rates per label,
failures per error kind, and truth-based metrics when the run is on the demo world. Plots are PNGs inside
the page, so it can be mailed or archived as one file. `make report OUT=...` (a local folder or an object store:
read and written through `curation.storage`).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import zoom  # noqa: E402

from curation import storage  # noqa: E402
from curation.clip_cache import cache_path, read_cached  # noqa: E402
from curation.outputs.evaluate import read_table, truth_metrics  # noqa: E402
from curation.outputs.vggsounder import report_section as vggsounder_section  # noqa: E402
from curation.provenance import read_run_record  # noqa: E402
from manifests.layout import RunLayout  # noqa: E402

_N_MOMENTS = 8
_CAPTION_WIDTH = 18  # characters a caption line holds in its 2.2-in panel at font size 7
PEAK_LEVEL = 0.8  # the peak region: where the heat map is above 80 % of its range


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _histograms(clips: pd.DataFrame, frames: pd.DataFrame) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    scored = clips[clips["status"].isin(["ok", "rejected"])]
    for status, colour in (("ok", "tab:green"), ("rejected", "tab:red")):
        axes[0].hist(scored.loc[scored["status"] == status, "clip_score"], bins=30, alpha=0.6, color=colour,
                     label=f"{'kept' if status == 'ok' else 'dropped'} ({(scored['status'] == status).sum()})")
    axes[0].set(title="clip score", xlabel="score", ylabel="clips")
    axes[0].legend()
    for chosen, colour, name in ((True, "tab:green", "kept moments"), (False, "tab:grey", "other frames")):
        axes[1].hist(frames.loc[frames["selected"] == chosen, "score"], bins=40, alpha=0.6, color=colour,
                     label=name, density=True)
    axes[1].set(title="frame score (ranks moments within a clip)", xlabel="score", ylabel="density")
    axes[1].legend()
    return _png(fig)


def _peak_region(ax, heat: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    """Outline where the map is within PEAK_LEVEL of its peak and mark the peak, over the untouched frame: a
    full-frame colour overlay hid both the frame and where the peak was."""
    lo, hi = float(heat.min()), float(heat.max())
    if hi - lo < 1e-6:
        return  # a flat map points nowhere
    smooth = zoom((heat - lo) / (hi - lo), 8, order=1)
    left, right, bottom, top = extent
    xs, ys = np.linspace(left, right, smooth.shape[1]), np.linspace(top, bottom, smooth.shape[0])
    for colour, width in (("black", 3.0), ("yellow", 1.5)):  # a dark rim keeps the line visible on any frame
        ax.contour(xs, ys, smooth, levels=[PEAK_LEVEL], colors=colour, linewidths=width)
    row, col = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    ax.plot(xs[col], ys[row], marker="+", color="yellow", markersize=9, markeredgewidth=2)


def _overlay(ax, jpg: bytes, heat: np.ndarray | None, square: bool, title: str) -> None:
    image = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))
    ax.imshow(image)
    if heat is not None:
        h, w = image.shape[:2]
        side = min(h, w)
        left, top = ((w - side) / 2, (h - side) / 2) if square else (0, 0)
        _peak_region(ax, heat.astype(np.float32), (left, left + (side if square else w), top + (side if square else h),
                                                    top))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def _pieces(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width` characters, broken after underscores or spaces where it can be."""
    lines, line = [], ""
    for token in re.findall(r"[^_ ]+[_ ]?|[_ ]", text):
        if line and len(line) + len(token) > width:
            lines.append(line.rstrip())
            line = ""
        while len(token) > width:  # a token longer than a line is cut
            lines.append(token[:width])
            token = token[width:]
        line += token
    return [*lines, line.rstrip()] if line.strip() else lines


def caption(clip_id: str, label: str, score: float, t: float) -> str:
    """A moment's caption in lines that fit its panel: the clip id broken at its underscores, the label in at
    most two lines (shortened with an ellipsis), then the score and time."""
    label_lines = _pieces(label, _CAPTION_WIDTH)
    if len(label_lines) > 2:
        label_lines = [label_lines[0], label_lines[1][:_CAPTION_WIDTH - 1] + "…"]
    return "\n".join([*_pieces(clip_id, _CAPTION_WIDTH), *label_lines, f"score {score:.3f} t={t:.1f}s"])


def moment_panels(panels: list[tuple[bytes, np.ndarray | None, bool, str]]):
    """A figure of moments side by side: (frame JPEG, heat map or None, map over the centre square, caption)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.8), squeeze=False)
    for ax, (jpg, heat, square, title) in zip(axes[0], panels, strict=True):
        _overlay(ax, jpg, heat, square, title)
    return fig


def _moments(clips: pd.DataFrame, cache_dir: str, best: bool) -> str:
    scored = clips[clips["status"].isin(["ok", "rejected"])].sort_values("clip_score", ascending=not best)
    chosen = scored.head(_N_MOMENTS)
    if chosen.empty:
        return "<p>no scored clips</p>"
    panels = []
    for row in chosen.itertuples():
        cached = read_cached(cache_path(cache_dir, row.clip_id))
        first = int(cached.selected[0])
        heat = cached.maps[first] if cached.maps is not None else None
        # the self-trained model sees the frame's centre square; published ones (ssl-ezvsl-, ssl-slavc-) all of it
        panels.append((cached.jpgs[0], heat, cached.model_id.startswith("ssl-native"),
                       caption(row.clip_id, row.label, row.clip_score, cached.times[first])))
    return _png(moment_panels(panels))


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="t")


def _keep_rates(clips: pd.DataFrame) -> pd.DataFrame:
    """Per label: clips, scored, kept, keep rate among the scored, and clips a data-quality filter rejected."""
    filtered = clips["error_kind"].notna() & (clips["status"] == "rejected")
    rates = clips.assign(scored=clips["status"].isin(["ok", "rejected"]), kept=clips["status"] == "ok",
                         failed=clips["status"] == "failed", filtered=filtered).groupby("label").agg(
        clips=("clip_id", "size"), scored=("scored", "sum"), kept=("kept", "sum"), failed=("failed", "sum"),
        filtered=("filtered", "sum"))
    rates["keep_rate"] = rates["kept"] / rates["scored"].where(rates["scored"] > 0)
    return rates.reset_index().sort_values(["keep_rate", "label"])


def _filters(clips: pd.DataFrame) -> str:
    """What each data-quality filter flagged and rejected (columns absent in runs made before the filters)."""
    if "still" not in clips.columns:
        return "<p>not recorded in this run</p>"
    rejected = clips[clips["status"] == "rejected"]["error_kind"].value_counts()
    rows = [{"filter": name, "flagged": int(flagged.sum()), "rejected": int(rejected.get(kind, 0))}
            for name, kind, flagged in (("still", "still", clips["still"].fillna(False).astype(bool)),
                                        ("silent", "silent", clips["silent"].fillna(False).astype(bool)),
                                        ("near-duplicate (in a group)", "duplicate", clips["dup_group"].notna()),
                                        ("overlapping window", "overlap", clips["overlap_of"].notna()))]
    return _table(pd.DataFrame(rows))


def build_report(out: str | os.PathLike) -> str:
    """The report's HTML for the run in `out`."""
    layout = RunLayout(storage.resolve(out))
    out = layout.out
    record = read_run_record(out)
    clips = read_table(layout.clips_manifest)
    frames = read_table(layout.frames_manifest)
    cache_dir = layout.cache(record["cache_dir"])
    errors = clips[clips["status"] == "failed"].groupby("error_kind").size().rename("clips").reset_index()
    status = clips.groupby("status").size().rename("clips").reset_index()
    sections = [
        f"<h1>Curation report: {html.escape(str(out))}</h1>",
        f"<p>dataset <b>{html.escape(record['config']['dataset'])}</b>, scorer "
        f"<b>{html.escape(record['config']['score']['scorer'])}</b>, {record['n_clips']} clips, "
        f"{record['n_shards']} shards / {record['n_samples']} samples, "
        f"git {html.escape(str(record['git_revision']))}</p>",
        "<h2>Status</h2>", _table(status),
        "<h2>Failures by error kind</h2>", _table(errors) if len(errors) else "<p>none</p>",
        "<h2>Scores</h2>", _histograms(clips, frames),
    ]
    if storage.exists(layout.truth):
        metrics = truth_metrics(out)
        by_kind = metrics.pop("per_kind", None)
        by_category = metrics.pop("recall_per_category", None)
        sections += ["<h2>Against the demo world's truth</h2>",
                     _table(pd.DataFrame([{"metric": k, "value": v} for k, v in metrics.items()]))]
        if by_kind:
            sections += ["<h3>Per clip kind (kept share of the kind's clips, precision of the frames written)</h3>",
                         _table(pd.DataFrame([{"kind": k, **v} for k, v in by_kind.items()]))]
        if by_category:
            sections += ["<h3>Good-clip recall per object category</h3>",
                         _table(pd.DataFrame([{"category": k, **v} for k, v in by_category.items()]))]
    sections += vggsounder_section(out, clips)  # when `evaluate --vggsounder` has judged the run
    sections += ["<h2>Best moments (highest clip scores)</h2>", _moments(clips, cache_dir, best=True),
                 "<h2>Worst moments (lowest clip scores)</h2>", _moments(clips, cache_dir, best=False),
                 "<h2>Data-quality filters</h2>", _filters(clips),
                 "<h2>Keep rate per label</h2>", _table(_keep_rates(clips))]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table.t{border-collapse:collapse}"
             "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>curation report</title><style>{style}</style>"
            f"</head><body>{''.join(sections)}</body></html>")


def write_report(out: str | os.PathLike, html_path: str | os.PathLike | None = None) -> str:
    """Write the report (default `OUT/report.html`; a local path or a URL) whole: temp file + rename, or one
    upload. Returns where."""
    location = storage.resolve(html_path) if html_path else RunLayout(storage.resolve(out)).report
    storage.write_bytes(location, build_report(out).encode())
    return location
