"""ssl-export: a model of the published layout, written as EZ-VSL's best.pth, reads back through the published
loader and the authors' own module layout and scores exactly as the native scorer does."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_av
from test_published import EZVSLReference, _randomise_batch_norm

from curation.config import DecodeConfig, ScoreConfig, SSLConfig
from curation.decode import decode_clip
from curation.errors import CheckpointError
from curation.localise.checkpoint import save_checkpoint
from curation.localise.export import export_ezvsl
from curation.localise.model import AVLocalizer, SSLModelConfig
from curation.localise.published import TEMPERATURE, PublishedScorer, load_published, safe_load
from curation.localise.score import LearnedScorer


def _native(path, **fields) -> AVLocalizer:
    torch.manual_seed(0)
    model = AVLocalizer(SSLModelConfig(dim=32, preprocess="ezvsl", **fields)).eval()
    _randomise_batch_norm(model)
    save_checkpoint(path, model, None, 7, None, SSLConfig())
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    model = _native(folder / "model.pt")
    proc = subprocess.run([sys.executable, "-m", "curation", "ssl-export", "--checkpoint", str(folder / "model.pt"),
                           "--format", "ezvsl", "--to", str(folder / "best.pth")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return folder, model


def test_export_loads_strictly_into_the_authors_layout(exported):
    """What EZ-VSL's test.py does: strip `module.`, load `model` strictly into EZVSL(tau, out_dim)."""
    folder, model = exported
    blob = safe_load(folder / "best.pth")
    assert {"model", "optimizer", "epoch", "best_cIoU", "best_Auc"} <= set(blob)
    assert all(key.startswith("module.") for key in blob["model"])
    theirs = EZVSLReference(dim=32)
    theirs.load_state_dict({k.replace("module.", ""): v for k, v in blob["model"].items()})  # strict
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name], rtol=0, atol=0)


def test_export_scores_as_the_native_model_through_the_published_loader(exported, tmp_path):
    folder, _ = exported
    loaded, layout = load_published(folder / "best.pth")
    assert layout == "ezvsl"
    clip_path = make_av(tmp_path / "clip.mp4", 4, size="320x180", freq=660)
    clip = decode_clip(clip_path, 0.0, 4.0, DecodeConfig(fps=2.0))
    native = LearnedScorer(ScoreConfig(checkpoint=str(folder / "model.pt"), ensemble=1)).score(clip)
    published = PublishedScorer(ScoreConfig(checkpoint=str(folder / "best.pth"))).score(clip)
    assert native.scores.std() > 0  # scores that vary, so equality says something
    np.testing.assert_allclose(published.scores * TEMPERATURE, native.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(published.maps * TEMPERATURE, native.maps, rtol=0, atol=1e-5)


def test_a_model_of_another_layout_is_refused_naming_what_differs(tmp_path):
    _native(tmp_path / "small.pt", widths=(8, 16, 16, 32), image_size=64, colour_branch=4)
    with pytest.raises(CheckpointError, match=r"widths = \(8, 16, 16, 32\).*colour_branch = 4"):
        export_ezvsl(tmp_path / "small.pt", tmp_path / "best.pth")
    assert not (tmp_path / "best.pth").exists()
