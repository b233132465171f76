"""The training loop on a toy stage whose "model" is a counter: resume, log lines, checkpoints, evaluations,
early stopping, the time cap and the final save, each as the stages rely on them."""

from __future__ import annotations

import json

import numpy as np
import torch

from training import loop
from training.checkpoint import read_jsonl, save_checkpoint
from training.distributed import Dist

D = Dist(0, 1, 0, torch.device("cpu"))


class Counter:
    """Each step adds 1 to `w` and logs w; a checkpoint holds w and the step; evaluations report -w."""

    def __init__(self, stage_dir, steps=5, **options):
        self.stage_dir, self.w, self.stepped, self.saved, self.evaluated = stage_dir, 0.0, [], [], []
        self.options = {"log_every": 2, "checkpoint_due": lambda step: step % 2 == 0, **options}
        self.steps = steps

    def recipe(self) -> loop.Recipe:
        options = dict(self.options)
        return loop.Recipe("stage9", self.stage_dir, self.stage_dir / "last.pt", self.steps,
                           options.pop("log_every"), self.restore, lambda step: None, self.step, self.log_fields,
                           self.save, **options)

    def restore(self, state):
        self.w = float(state["w"])
        return int(state["step"])

    def step(self, step):
        self.stepped.append(step)
        self.w += 1
        return (self.w,)

    def log_fields(self, step, rows, steps_per_s):
        return {"w_mean": float(np.mean(rows[:, 0])), "rows": len(rows)}

    def save(self, step, seconds):
        self.saved.append(step)
        save_checkpoint(self.stage_dir / "last.pt", {"w": self.w, "step": step, "seconds": seconds})

    def evaluate(self, step):
        self.evaluated.append(step)
        return {"val": -self.w}


def _log(stage_dir):
    return read_jsonl(stage_dir / "loss.jsonl")


def test_a_fresh_run_logs_checkpoints_and_records_its_budget(tmp_path):
    c = Counter(tmp_path)
    out = loop.train(c.recipe(), D, resume=True)
    assert (out.step, out.start_step, out.stopped_by) == (5, 0, "steps") and c.stepped == [0, 1, 2, 3, 4]
    assert [(r["step"], r["w_mean"], r["rows"]) for r in _log(tmp_path)] == [(2, 1.5, 2), (4, 3.5, 2), (5, 5.0, 1)]
    assert c.saved == [2, 4, 5]  # every checkpoint_due step, then the last (not due) at the end
    rec = json.loads((tmp_path / "budget.json").read_text())
    assert (rec["steps_planned"], rec["steps_reached"], rec["stopped_by"]) == (5, 5, "steps")


def test_a_resumed_run_continues_from_the_checkpoint_and_cuts_the_log_back_to_it(tmp_path):
    first = Counter(tmp_path, steps=4)
    loop.train(first.recipe(), D, resume=True)
    torch.save({"w": 2.0, "step": 2, "seconds": 30.0}, tmp_path / "last.pt")  # as if killed after step 2's save
    again = Counter(tmp_path, steps=5)
    out = loop.train(again.recipe(), D, resume=True)
    assert again.stepped == [2, 3, 4] and again.w == 5.0  # from the checkpoint's state, not from scratch
    assert (out.start_step, out.spent) == (2, 30.0) and out.seconds >= 30.0
    assert [r["step"] for r in _log(tmp_path)] == [2, 4, 5]  # step 4 of the first run is dropped and re-logged
    fresh = Counter(tmp_path, steps=5)
    loop.train(fresh.recipe(), D, resume=False)
    assert fresh.stepped == [0, 1, 2, 3, 4]


def test_an_already_finished_stage_trains_nothing_and_saves_nothing(tmp_path):
    loop.train(Counter(tmp_path).recipe(), D, resume=True)
    again = Counter(tmp_path)
    out = loop.train(again.recipe(), D, resume=True)
    assert out.step == 5 and again.stepped == [] and again.saved == []
    missing = Counter(tmp_path, outputs=(tmp_path / "generator.pt",))  # an output the stage must leave is gone
    loop.train(missing.recipe(), D, resume=True)
    assert missing.stepped == [] and missing.saved == [5]


def test_evaluations_are_logged_then_saved_and_patience_stops_early(tmp_path):
    c = Counter(tmp_path, steps=10)
    c.options.update(evaluate=c.evaluate, eval_every=3, checkpoint_due=lambda step: False,
                     stop_early=lambda: len(c.evaluated) >= 2)
    out = loop.train(c.recipe(), D, resume=True)
    assert c.evaluated == [3, 6] and c.saved == [3, 6] and out.step == 6 and out.stopped_by == "early_stopping"
    assert [r["val"] for r in _log(tmp_path) if "val" in r] == [-3.0, -6.0]
    assert json.loads((tmp_path / "budget.json").read_text())["stopped_by"] == "early_stopping"


def test_the_time_cap_stops_with_a_warning_and_a_closing_record(tmp_path, capsys):
    c = Counter(tmp_path, steps=100, time_cap_minutes=1e-9, log_last=False, closing=lambda: {"params": 7},
                rank_record=lambda step: {"step": step}, outputs=(tmp_path / "last.pt",))
    out = loop.train(c.recipe(), D, resume=True)
    assert out.stopped_by == "time_cap" and out.step == 0 and c.saved == [0]  # nothing trained, still saved
    closing = _log(tmp_path)[-1]
    assert closing["done"] and closing["params"] == 7 and closing["stopped_by"] == "time_cap"
    assert "WARNING: stage9 stopped by its time cap" in closing["warning"] == capsys.readouterr().err.strip()
    assert json.loads((tmp_path / "shards_rank0.json").read_text()) == {"rank": 0, "world_size": 1, "step": 0}
    uncapped = Counter(tmp_path, steps=3, time_cap_minutes=0.0, log_last=False)
    assert loop.train(uncapped.recipe(), D, resume=False).stopped_by == "steps"
    assert [r["step"] for r in _log(tmp_path) if "w_mean" in r] == [2]  # log_last=False: step 3 is not logged
