"""Published localisers: checkpoints saved as EZ-VSL / FNAC / SLAVC training loops save them, their front end
against scipy on real audio, and one-line errors for every kind of bad checkpoint."""

import argparse
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
import torchvision
from PIL import Image
from scipy import signal
from torch import nn

from curation.config import ConfigError, DecodeConfig, ScoreConfig, load_config
from curation.decode import decode_clip
from curation.errors import CheckpointError
from curation.localise.model import EZVSLSpectrogram, audio_windows
from curation.localise.published import PublishedScorer, SLAVCLocalizer, images, load_published
from curation.localise.scorers import load_scorer

WAV = "FwVYUHKoLtQ_000034.wav"


class EZVSLReference(nn.Module):
    """EZ-VSL's module layout as its model.py builds it (torchvision ResNet-18s), used as the reference forward."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.imgnet = torchvision.models.resnet18(weights=None)
        self.imgnet.avgpool, self.imgnet.fc = nn.Identity(), nn.Identity()
        self.img_proj = nn.Conv2d(512, dim, kernel_size=(1, 1))
        self.audnet = torchvision.models.resnet18(weights=None)
        self.audnet.conv1 = nn.Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False)
        self.audnet.avgpool, self.audnet.fc = nn.AdaptiveMaxPool2d((1, 1)), nn.Identity()
        self.aud_proj = nn.Linear(512, dim)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        img = nn.functional.normalize(self.img_proj(self.imgnet(image).unflatten(1, (512, 7, 7))), dim=1)
        aud = nn.functional.normalize(self.aud_proj(self.audnet(audio)), dim=1)
        return torch.einsum("nchw,nc->nhw", img, aud) / 0.03


def _randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode batch norm is exercised (fresh ones are 0 / 1)."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def save_like_ezvsl_training(path, model: nn.Module) -> None:
    """What EZ-VSL's train.py writes after a few epochs: DDP-wrapped keys, Adam state, numpy float64 bests."""
    wrapped = nn.DataParallel(model)  # keys gain `module.`, as under DistributedDataParallel
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-4)
    wrapped.module.aud_proj(torch.randn(2, 512)).sum().backward()
    optimizer.step()
    torch.save({"model": wrapped.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
                "best_cIoU": np.float64(0.3412), "best_Auc": np.float64(0.3567)}, path)


@pytest.fixture(scope="module")
def ezvsl_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = EZVSLReference().eval()
    _randomise_batch_norm(model)
    path = tmp_path_factory.mktemp("ezvsl") / "best.pth"
    save_like_ezvsl_training(path, model)
    return path, model


def _ezvsl_spectrogram(x: np.ndarray, rate: int) -> np.ndarray:
    """EZ-VSL's load_spectrogram after its 3-s read, written out directly."""
    x = np.clip(x, -1.0, 1.0)
    if x.shape[0] < rate * 3:
        x = np.tile(x, int(rate * 3 / x.shape[0]) + 1)
    _, _, spec = signal.spectrogram(x[:rate * 3], rate, nperseg=512, noverlap=274)
    return np.log(spec + 1e-7) / 12.0


def spectrograms(audio: np.ndarray, times: np.ndarray, rate: int) -> np.ndarray:
    """The scorer's front end (torch, where the model runs) for the 3-s windows centred on `times`."""
    windows = audio_windows(torch.from_numpy(audio), torch.from_numpy(times), 3.0, rate)
    return EZVSLSpectrogram(rate)(windows).numpy()


def test_front_end_matches_scipy_on_real_audio(shared_real):
    audio, rate = soundfile.read(shared_real / WAV, dtype="float32")
    times = np.array([0.0, 1.0, 5.0, 9.9])
    ours = spectrograms(audio, times, rate)
    assert rate == 16000 and ours.shape == (4, 1, 257, 200) and ours.dtype == np.float32
    centre = 5 * rate
    expected = [audio[:48000], audio[:48000], audio[centre - 24000:centre + 24000], audio[-48000:]]
    for got, segment in zip(ours[:, 0], expected, strict=True):
        np.testing.assert_allclose(got, _ezvsl_spectrogram(segment, rate), rtol=1e-5, atol=1e-5)
    quiet = 1e-4 * audio[:48000]  # the log of small powers: where float32 rounding would show first
    np.testing.assert_allclose(spectrograms(quiet, np.array([1.5]), rate)[0, 0], _ezvsl_spectrogram(quiet, rate),
                               rtol=1e-5, atol=1e-5)
    short = audio[rate:int(1.3 * rate)]  # shorter than the window: tiled, as their loader does
    np.testing.assert_allclose(spectrograms(short, np.array([0.1]), rate)[0, 0], _ezvsl_spectrogram(short, rate),
                               rtol=1e-5, atol=1e-5)


def test_checkpoint_saved_by_ezvsl_training_scores_a_real_clip(ezvsl_checkpoint, shared_real, tmp_path):
    path, reference = ezvsl_checkpoint
    clip_path = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x180:rate=25",
                    "-i", str(shared_real / WAV), "-t", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(clip_path)], check=True)
    clip = decode_clip(clip_path, 0.0, 4.0, DecodeConfig(fps=1.5))
    scorer = load_scorer(ScoreConfig(scorer="ssl", checkpoint=str(path)))
    assert isinstance(scorer, PublishedScorer) and scorer.model_id.startswith("ssl-ezvsl-")
    result = scorer.score(clip)
    n = len(clip.times)
    assert result.scores.shape == (n,) and result.maps.shape == (n, 7, 7) and result.contrastive is None
    np.testing.assert_array_equal(result.scores, result.maps.reshape(n, -1).max(axis=1))
    # the authors' forward on the same inputs: 224 px bicubic frames, ImageNet normalisation, their spectrogram
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    frames = np.stack([np.asarray(Image.fromarray(f).resize((224, 224), Image.BICUBIC)) for f in clip.frames])
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = reference((frames / 255 - mean) / std, torch.from_numpy(spectrograms(clip.audio, clip.times, 16000)))
    np.testing.assert_allclose(result.maps, expected.numpy(), atol=0.05)  # images within a grey level of PIL's


def test_frames_are_resized_whole_as_pil_bicubic():
    rng = np.random.default_rng(0)
    frame = np.array(Image.fromarray(rng.integers(0, 256, (9, 16, 3), dtype=np.uint8)).resize((398, 224)))
    ours = images(frame[None])[0].permute(1, 2, 0).numpy() * 255
    pil = np.asarray(Image.fromarray(frame).resize((224, 224), Image.BICUBIC)).astype(np.float32)
    assert ours.shape == (224, 224, 3) and np.abs(ours - pil).max() <= 1.0 + 1e-3


def test_checkpoint_written_under_numpy_1_loads(ezvsl_checkpoint, tmp_path):
    """numpy 1 pickled its scalars as numpy.core.multiarray.scalar: the released models were saved that way."""
    path, _ = ezvsl_checkpoint
    blob = torch.load(path, weights_only=False)
    legacy = tmp_path / "legacy.pth"
    torch.save(blob, legacy, _use_new_zipfile_serialization=False)
    data = legacy.read_bytes()
    assert b"numpy._core.multiarray" in data
    legacy.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    model, layout = load_published(legacy)
    assert layout == "ezvsl" and not model.training


def _slavc_state(dim: int = 64) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    state = {}
    for prefix, net in (("imgnet", EZVSLReference(dim).imgnet), ("audnet", EZVSLReference(dim).audnet)):
        state.update({f"{prefix}.{k}": v for k, v in net.state_dict().items()})
    for name, shape in (("img_proj1", (dim, 512, 1, 1)), ("img_proj2", (dim, 512, 1, 1)),
                        ("aud_proj1", (dim, 512)), ("aud_proj2", (dim, 512))):
        state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(shape) * 0.05, torch.randn(dim) * 0.01
    state.update({f"momentum_{k}": v.clone() for k, v in list(state.items())})
    return {f"module.{k}": v for k, v in state.items()}


def test_slavc_checkpoint_scores_the_mean_of_its_two_maps(tmp_path):
    state = _slavc_state()
    path = tmp_path / "latest.pth"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 20}, path)
    model, layout = load_published(path)
    assert layout == "slavc" and isinstance(model, SLAVCLocalizer)
    images, specs = torch.rand(2, 3, 224, 224), torch.randn(2, 1, 257, 200)
    ref = EZVSLReference(64).eval()
    maps = []
    with torch.no_grad():
        for i in (1, 2):
            ref.load_state_dict({k.removeprefix("module.").replace(f"_proj{i}.", "_proj."): v for k, v in state.items()
                                 if not k.startswith("module.momentum_") and "_proj" + str(3 - i) not in k})
            maps.append(ref((images - model.image_mean) / model.image_std, specs) * 0.03)
        torch.testing.assert_close(model.localise(images, specs), (maps[0] + maps[1]) / 2, atol=1e-4, rtol=1e-4)
        # the features a reference bank holds give the same map
        joint = torch.einsum("bchw,bc->bhw", model.image_maps(images), model.audio_vectors(specs))
        torch.testing.assert_close(joint, (maps[0] + maps[1]) / 2, atol=1e-4, rtol=1e-4)
    del state["module.momentum_aud_proj2.bias"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): momentum_aud_proj2.bias"):
        load_published(path)


def _one_line(path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_published(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_every_bad_checkpoint_is_one_line_naming_the_problem(ezvsl_checkpoint, shared_real, tmp_path):
    good, _ = ezvsl_checkpoint
    assert "not a readable PyTorch checkpoint" in _one_line(shared_real / WAV)
    assert "no such file" in _one_line(tmp_path / "absent.pth")
    state = torch.load(good, weights_only=False)["model"]
    cases = {
        "ssl_tie.pth": ({"state_dict": state, "epoch": 1}, "SSL-TIE"),
        "lvs.pth": ({"model_state_dict": state}, "LVS"),
        "audio_only.pth": ({k: v for k, v in state.items() if k.startswith("module.audnet.")}, "audio encoder"),
        "args.pth": ({"model": state, "args": argparse.Namespace(tau=0.03)}, "argparse.Namespace"),
        "not_a_dict.pth": ([1, 2, 3], "holds a list"),
    }
    wrong = dict(state)
    wrong["module.img_proj.bias"] = torch.zeros(7)
    del wrong["module.aud_proj.weight"]
    cases["shapes.pth"] = ({"model": wrong}, "missing keys (1): aud_proj.weight; shape mismatches (1): "
                                             "img_proj.bias (7,) vs (512,)")
    for name, (blob, expected) in cases.items():
        torch.save(blob, tmp_path / name)
        assert expected in _one_line(tmp_path / name), name
    assert "(argparse.Namespace)" in _one_line(tmp_path / "args.pth")  # not the numpy scalars it also holds


def test_the_layout_asked_for_must_be_the_files(ezvsl_checkpoint):
    path, _ = ezvsl_checkpoint
    with pytest.raises(CheckpointError, match="is an EZ-VSL / FNAC checkpoint, not a SLAVC checkpoint"):
        load_published(path, "slavc")



def test_a_published_format_without_a_file_is_a_config_error():
    with pytest.raises(ConfigError, match="score.checkpoint_format: ezvsl needs CHECKPOINT="):
        load_config(None, {"score.checkpoint_format": "ezvsl"})


def test_published_checkpoint_scores_the_margin_with_a_bank_from_the_runs_clips(ezvsl_checkpoint, tmp_path):
    from curation.clip_cache import ClipJob
    from curation.demo import generate_world
    from curation.localise.bank import load_bank, null_threshold
    from curation.localise.checkpoint import file_digest
    from curation.localise.published import ensure_bank, resolve_checkpoint

    path, _ = ezvsl_checkpoint
    world = generate_world(tmp_path, n_clips=3, seed=0, duration_s=3.0)
    jobs = [ClipJob(f"demo{i:05d}", str(world.raw_dir / f"demo{i:05d}.mp4"), None, 0.0, 3.0) for i in range(3)]
    cfg = resolve_checkpoint(load_config(None, {"out": str(tmp_path), "score.checkpoint": str(path),
                                                "decode.fps": 1.0, "score.bank_clips": 2}))
    remote = [ClipJob("yt", None, "https://example.invalid/yt.mp4", 0.0, 3.0)]  # nothing fetched: no bank
    assert ensure_bank(cfg, remote, tmp_path).score.bank is None and not (tmp_path / "ssl").exists()
    cfg = ensure_bank(cfg, jobs, tmp_path)
    bank_file = tmp_path / "ssl" / cfg.score.bank.rsplit("/", 1)[-1]
    assert bank_file.is_file() and bank_file.name.startswith("bank-")
    built = bank_file.stat().st_mtime_ns
    assert ensure_bank(cfg, jobs, tmp_path) == cfg  # a config with a bank passes through
    again = ensure_bank(replace(cfg, score=replace(cfg.score, bank=None)), jobs, tmp_path)
    assert again == cfg and bank_file.stat().st_mtime_ns == built  # the same clips and model: reused
    bank = load_bank(bank_file, file_digest(path))
    assert bank["image"].shape == (2, 512, 7, 7) and bank["audio"].shape == (2, 512)
    scorer = PublishedScorer(cfg.score)
    clip = decode_clip(jobs[0].path, 0.0, 3.0, cfg.decode)
    result = scorer.score(clip)
    assert result.contrastive is not None and result.contrastive.shape == result.scores.shape
    # the margin: the own match minus the bank's chance pairings' quantile, in the authors' units (cosine / 0.03)
    pairs = torch.einsum("kchw,jc->kjhw", bank["image"], bank["audio"]).flatten(2).amax(dim=2)
    cross = pairs[~torch.eye(2, dtype=torch.bool)].double()
    assert null_threshold(bank, cfg.score.bank_quantile) == pytest.approx(float(torch.quantile(cross, 0.96)))
    assert scorer.threshold == pytest.approx(null_threshold(bank, 0.96))
    np.testing.assert_allclose(result.contrastive, result.scores - scorer.threshold, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():  # the bank's features are the scorer's: a moment of clip 0 scores as it does
        image_maps, vectors = scorer.features(clip, np.arange(len(clip.times)))
    np.testing.assert_allclose(torch.einsum("tchw,tc->thw", image_maps, vectors).flatten(1).amax(dim=1).numpy(),
                               result.scores, rtol=1e-4, atol=1e-3)
    with pytest.raises(CheckpointError, match="another model"):
        load_bank(bank_file, "0" * 64)
