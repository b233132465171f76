"""The training loop of the three stages: resume, the step counter, the time cap, the loss log, checkpoints,
the step budget, and who writes under torchrun.

A stage describes itself as a `Recipe`: its models live behind the callbacks (bound methods of a small class in
its recipe module), the loop owns the rest. Order of one run:
  resume: `restore(load_checkpoint(recipe.checkpoint))` -> step (and `seconds` already spent, when the stage's
          checkpoint stores them); rank 0 cuts loss.jsonl back to that step; `begin(step)` (DDP wrappers, data
          seeded by the step)
  each step (every rank): the time cap (rank 0's clock decides for all), `step(step)`; rank 0 logs every
          `log_every` steps; every `eval_every` steps and at the last, `evaluate` on every rank, then rank 0
          logs its metrics and saves, then a barrier; rank 0 also saves where `checkpoint_due(step)`
  end: each rank its shards_rank<r>.json (`rank_record`); rank 0: the final save (unless the last step was
       saved and `outputs` exist), budget.json, the closing log record, the time-cap warning; a barrier.
Checkpoints are the stage's own content, written atomically by `save` (training/checkpoint.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from manifests.io import write_json
from training import budget, distributed
from training.checkpoint import append_jsonl, load_checkpoint, truncate_log


def _never(step: int) -> bool:
    return False


def _go_on() -> bool:
    return False


@dataclass
class Recipe:
    """What a stage gives the loop. Callbacks run on every rank unless marked rank 0."""

    name: str  # "stage1", ...: budget.json's warning names it
    stage_dir: Path  # OUT/<stage>: loss.jsonl, budget.json, shards_rank<r>.json
    checkpoint: Path  # the resume checkpoint
    steps: int  # planned
    log_every: int
    restore: Callable[[dict[str, Any]], int]  # a checkpoint into the models (refusing another model's): its step
    begin: Callable[[int], None]  # after resume, before the first step
    step: Callable[[int], Sequence[float]]  # one optimisation step from step `step`: the values to log
    log_fields: Callable[[int, np.ndarray, float], dict[str, Any]]  # rank 0: (step, rows of values, steps/s) -> fields
    save: Callable[[int, float], None]  # rank 0: the stage's checkpoint(s) at step, with the seconds trained
    checkpoint_due: Callable[[int], bool] = _never  # rank 0 saves after these steps (and after every evaluation)
    evaluate: Callable[[int], dict[str, Any]] | None = None  # every eval_every steps and at the last; rank 0's metrics
    eval_every: int = 0
    stop_early: Callable[[], bool] = _go_on  # checked before every step; must answer alike on every rank
    time_cap_minutes: float | None = None  # a guard (0: none); None: no check at all (no collective per step)
    log_last: bool = True  # also log the last planned step when it falls between two log_every steps
    rank_record: Callable[[int], dict[str, Any]] | None = None  # fields of shards_rank<r>.json
    closing: Callable[[], dict[str, Any]] | None = None  # rank 0: fields of loss.jsonl's closing record
    outputs: tuple[Path, ...] = ()  # files the end leaves: missing ones are saved again
    started: float | None = None  # the clock's start (default: when the loop starts)


@dataclass(frozen=True)
class Outcome:
    step: int  # reached
    start_step: int  # resumed from (0: a fresh start)
    seconds: float  # trained in all, earlier runs included
    spent: float  # by earlier runs (resumed)
    stopped_by: str  # budget.STOPS

    @property
    def steps_per_s(self) -> float:
        """This run's steps per second."""
        run = self.seconds - self.spent
        return (self.step - self.start_step) / run if run > 0 else 0.0


class _Clock:
    def __init__(self, started: float, spent: float):
        self.started, self.spent = started, spent

    def seconds(self) -> float:
        return self.spent + time.time() - self.started


class _LossLog:
    """Rank 0's loss.jsonl: the stage's fields over the steps since the last line, every log_every steps."""

    def __init__(self, r: Recipe, clock: _Clock):
        self.r, self.clock, self.path = r, clock, r.stage_dir / "loss.jsonl"
        self.t, self.rows = time.time(), []

    def add(self, step: int, values: Sequence[float]) -> None:
        self.rows.append(tuple(values))
        if step % self.r.log_every and not (self.r.log_last and step == self.r.steps):
            return
        now = time.time()
        fields = self.r.log_fields(step, np.asarray(self.rows, dtype=np.float64), len(self.rows) / (now - self.t))
        append_jsonl(self.path, {"step": step, **fields, "seconds": self.clock.seconds()})
        self.t, self.rows = now, []


def prepare(model: torch.nn.Module, d: distributed.Dist, channels_last: bool) -> torch.nn.Module:
    """`model` in channels_last when asked (CUDA), and what the step calls: its DDP wrapper under torchrun."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return DistributedDataParallel(model) if d.enabled else model


def _resume(r: Recipe, resume: bool) -> tuple[int, float]:
    if not (resume and r.checkpoint.exists()):
        return 0, 0.0
    state = load_checkpoint(r.checkpoint)
    return r.restore(state), float(state.get("seconds", 0.0))


def train(r: Recipe, d: distributed.Dist, resume: bool) -> Outcome:
    """Run `r` from its checkpoint (when `resume` and it exists) to its planned steps, an early stop or the cap."""
    step, spent = _resume(r, resume)
    if d.is_main:
        truncate_log(r.stage_dir / "loss.jsonl", step)
    r.begin(step)
    clock = _Clock(r.started if r.started is not None else time.time(), spent)
    log, start, saved, capped = _LossLog(r, clock), step, step, False
    cap = r.time_cap_minutes * 60 if r.time_cap_minutes else float("inf")
    while step < r.steps and not r.stop_early():
        if r.time_cap_minutes is not None and distributed.rank0_decides(d, clock.seconds() >= cap):
            capped = True
            break
        values = r.step(step)
        step += 1
        if d.is_main:
            log.add(step, values)
        evaluated = r.evaluate is not None and (step % r.eval_every == 0 or step == r.steps)
        metrics = r.evaluate(step) if evaluated else {}
        if d.is_main and evaluated:
            append_jsonl(r.stage_dir / "loss.jsonl", {"step": step, **metrics, "seconds": clock.seconds()})
        if d.is_main and (evaluated or r.checkpoint_due(step)):
            r.save(step, clock.seconds())
            saved = step
        if evaluated:
            distributed.barrier(d)
    stopped_by = "time_cap" if capped else "steps" if step >= r.steps else "early_stopping"
    outcome = Outcome(step, start, clock.seconds(), spent, stopped_by)
    _finish(r, d, outcome, saved)
    return outcome


def _finish(r: Recipe, d: distributed.Dist, outcome: Outcome, saved: int) -> None:
    """Each rank's shards_rank<r>.json; rank 0's final save, budget.json, closing record and warning; a barrier."""
    if r.rank_record is not None:
        write_json(r.stage_dir / f"shards_rank{d.rank}.json",
                   {"rank": d.rank, "world_size": d.world_size, **r.rank_record(outcome.step)})
    if d.is_main:
        if outcome.step > saved or not all(p.exists() for p in r.outputs):
            r.save(outcome.step, outcome.seconds)
        rec = budget.record(r.stage_dir, r.steps, outcome.step, outcome.stopped_by, outcome.seconds,
                            r.time_cap_minutes or 0.0)
        message = budget.warning(r.name, rec)
        if r.closing is not None:
            append_jsonl(r.stage_dir / "loss.jsonl", {"step": outcome.step, "done": True, **r.closing(), **rec,
                                                      **({"warning": message} if message else {})})
        if message:
            print(message, file=sys.stderr, flush=True)
    distributed.barrier(d)
