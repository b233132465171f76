"""Reading weight files that other projects wrote: torch.load(weights_only=True) and strict key checks whose
failure is one line naming the missing, unexpected and mis-shaped keys (the CLI prints it and exits 2)."""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class WeightsError(ValueError):
    """A weights file that does not hold what the model needs."""


def read_weights(path: str | Path, what: str, safe_globals: list | None = None) -> Any:
    """torch.load(path, weights_only=True) on the CPU; a missing or unreadable file is a WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist (weights are never downloaded)")
    try:
        with torch.serialization.safe_globals(safe_globals or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsError(f"cannot read {what} {path}: {_refused(path) or _first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    """The line that says what went wrong (after torch's weights_only preamble, when there is one)."""
    text = str(exc).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _refused(path: Path) -> str:
    """The pickled objects weights_only=True refuses (torch's own message about them is a page long)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError):
        return ""
    return f"weights_only=True refuses the pickled objects {', '.join(names)}" if names else ""


def _examples(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def key_problems(expected: dict[str, torch.Tensor], state: dict[str, Any]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of `state` against a model's state dict. A missing batch-norm
    `num_batches_tracked` is not a problem: files from older torch lack it and torch fills it in."""
    missing = [k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked")]
    unexpected = set(state) - set(expected)
    wrong = [f"{k} {tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__}"
             f" != {tuple(expected[k].shape)}"
             for k in set(expected) & set(state)
             if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_examples(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped keys: {_examples(wrong)}")
    return problems


def load_strict(model: nn.Module, state: Any, path: str | Path, what: str) -> None:
    """model.load_state_dict(state, strict=True), after a check that explains any mismatch in one line."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise WeightsError(f"{path} is not a {what} state dict (got {type(state).__name__})")
    problems = key_problems(model.state_dict(), state)
    if problems:
        raise WeightsError(f"{path} is not a {what} state dict: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
