"""Step budgets: what each stage planned and reached, and the warning when a time cap cut a stage short.

Budgets are step counts, so one command gives one model quality on any machine; a wall-clock cap
(`stage2.max_minutes`) is only a guard. Each stage writes `OUT/<stage>/budget.json` when it ends; `evaluate`
copies them into eval.json (`budget`, and `under_trained`: the stages a time cap stopped early).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manifests.io import write_json

STAGES = ("stage1", "stage2", "stage3")
STOPS = ("steps", "time_cap", "early_stopping")  # early stopping (stage3.patience) is chosen, not a shortfall


def record(stage_dir: Path, planned: int, reached: int, stopped_by: str, seconds: float,
           cap_minutes: float = 0.0) -> dict[str, Any]:
    """Write `stage_dir/budget.json` and return it."""
    if stopped_by not in STOPS:
        raise ValueError(f"unknown stop reason {stopped_by!r}")
    rec = {"steps_planned": int(planned), "steps_reached": int(reached), "stopped_by": stopped_by,
           "seconds": round(float(seconds), 1), "time_cap_minutes": float(cap_minutes)}
    write_json(stage_dir / "budget.json", rec)
    return rec


def warning(stage: str, rec: dict[str, Any]) -> str | None:
    """The line to print when a time cap stopped `stage` before its planned steps; None otherwise."""
    if rec.get("stopped_by") != "time_cap":
        return None
    return (f"WARNING: {stage} stopped by its time cap ({rec['time_cap_minutes']:g} min) at step "
            f"{rec['steps_reached']} of {rec['steps_planned']} planned: the model is under-trained and its "
            f"numbers are not comparable with a full run. Rerun with a larger {stage}.max_minutes (0 = no cap) "
            "to continue from last.pt to the planned steps.")


def collect(out: str | Path) -> dict[str, Any]:
    """eval.json's `budget` (per stage that wrote one) and `under_trained` (stages stopped by a time cap)."""
    found = {}
    for stage in STAGES:
        path = Path(out) / stage / "budget.json"
        if path.is_file():
            found[stage] = json.loads(path.read_text())
    return {"budget": found, "under_trained": [s for s, rec in found.items() if rec["stopped_by"] == "time_cap"]}
