"""Fixtures of the training tests (helpers live in training_fixtures.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from training_fixtures import tiny_config, write_tiny_shards

from training.recipes import stage1_image


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("tiny") / "shards")


@pytest.fixture(scope="session")
def _stage1_done(tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1") / "train"
    stage1_image.run(tiny_config(tiny_shards, out))
    return out


@pytest.fixture
def stage1_out(_stage1_done, tmp_path) -> Path:
    """A private copy of an output folder where the tiny stage 1 has run (encoder + embedding cache)."""
    out = tmp_path / "train"
    shutil.copytree(_stage1_done, out)
    return out
