"""The released Sound2Scene model: its front end against scipy on real audio, generate --official end to end on
synthetic files in the release layouts (the real 128-px generator shapes), and one-line errors for wrong files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
import torch.nn.functional as F
from official_fixtures import random_generator, write_generator_folder, write_release
from PIL import Image

from training import generate
from training.config import load_config
from training.models.official_audio import OFFICIAL_AUDIO, OfficialSpectrogram, Sound2SceneAudioEncoder
from training.models.weights import WeightsError
from training.official import load_official_generator
from training.recipes.stage2_gan import to_uint8

WAV = "FwVYUHKoLtQ_000034.wav"


def official_spectrogram(x: np.ndarray, rate: int) -> np.ndarray:
    """The official test code's audio2spectrogra, written out with scipy."""
    x = np.clip(np.tile(x, 10)[:160000], -1.0, 1.0)
    _, _, spec = scipy.signal.spectrogram(x, rate, nperseg=512, noverlap=353)
    spec = np.log(spec + 1e-7)
    return (spec - spec.mean()) / (spec.std() + 1e-9)


@pytest.fixture(scope="module")
def generator128():
    return random_generator()


@pytest.fixture(scope="module")
def release(generator128, tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"), generator128, swav=True)


def _release_copy(release, tmp_path, audio_state):
    """A release folder sharing the generator (a link), with its own sound2scene.pth."""
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "icgan_biggan_imagenet_res128").symlink_to(release / "icgan_biggan_imagenet_res128")
    torch.save(audio_state, folder / "sound2scene.pth")
    return folder


def _generate(folder, tmp_path, *args):
    return generate.main(["--official", str(folder), "--out", str(tmp_path / "grid.png"),
                          "--set", "runtime.device=cpu", *args])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_front_end_matches_scipy_on_the_real_wav(shared_real):
    x, rate = sf.read(shared_real / WAV)  # float64, as the official code reads it
    expected = official_spectrogram(x, rate)
    ours = OfficialSpectrogram()(torch.from_numpy(x)[None, :160000])[0, 0].numpy()
    assert ours.shape == expected.shape == (257, 1004)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    # through generate's reader (float32 file decoding, fitted to 10 s as the official tiling does)
    wave = generate.load_audio(str(shared_real / WAV), load_config(), OFFICIAL_AUDIO)
    np.testing.assert_allclose(OfficialSpectrogram()(wave[None])[0, 0].numpy(), expected, rtol=0, atol=1e-4)


def test_short_audio_at_another_rate_is_resampled_and_tiled(tmp_path):
    t = np.arange(12000) / 8000  # 1.5 s at 8 kHz
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 8000)
    wave = generate.load_audio(str(tmp_path / "tone.wav"), load_config(), OFFICIAL_AUDIO)
    assert wave.shape == (160000,)
    spec = OfficialSpectrogram()(wave[None])[0, 0]
    assert int(spec.mean(1).argmax()) == round(1000 / (16000 / 512))  # the tone's bin at 16 kHz


def test_generate_with_the_released_model(release, generator128, shared_real, tmp_path):
    assert _generate(release, tmp_path, "--audio", str(shared_real / WAV), "--n-z", "1") == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    left = max(60, 6 * len(WAV[:-4]) + 8)
    cell = grid[16:16 + 128, left:left + 128]
    # the official recipe by hand: scipy spectrogram -> relu(fc) -> L2 -> G(z ~ N(0, 1) of G's z size)
    audio = Sound2SceneAudioEncoder()
    audio.load_state_dict(torch.load(release / "sound2scene.pth", weights_only=True))
    x, rate = sf.read(shared_real / WAV)
    spec = torch.from_numpy(official_spectrogram(x, rate)).float()[None, None]
    with torch.no_grad():
        emb = F.normalize(audio.eval().embed_spectrogram(spec), dim=-1)
        z = torch.randn(1, 120, generator=torch.Generator().manual_seed(0))
        expected = to_uint8(generator128(z, emb).clamp(-1, 1))[0]
    assert np.abs(cell.astype(int) - expected.astype(int)).max() <= 1


def test_interpolate_with_the_released_swav(release, shared_real, tmp_path):
    frame = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(frame)
    args = ["--audio", str(shared_real / WAV), "--interpolate", str(frame), "--alphas", "1"]
    assert _generate(release, tmp_path, *args) == 0
    assert Image.open(tmp_path / "grid.png").size == (max(60, 6 * len(WAV[:-4]) + 8) + 130, 16 + 130)
    without_swav = generate.SoundToImage(Sound2SceneAudioEncoder(), random_generator(G_ch=8, resolution=64), None,
                                         torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="swav.pth.tar"):
        without_swav.embed_images(torch.zeros(1, 3, 64, 64))


def test_wrong_audio_encoder_files_are_one_line_errors(release, tmp_path, capsys, shared_real):
    state = torch.load(release / "sound2scene.pth", weights_only=True)
    state["audnet.fc.weight"] = torch.zeros(1000, 512)
    del state["audnet.layer4.1.bn2.running_var"]
    folder = _release_copy(release, tmp_path, state)
    assert _generate(folder, tmp_path, "--audio", str(shared_real / WAV)) == 2
    err = _one_line_error(capsys)
    assert "missing keys: audnet.layer4.1.bn2.running_var" in err
    assert "audnet.fc.weight (1000, 512) != (2048, 512)" in err
    (folder / "sound2scene.pth").unlink()
    torch.save({f"module.{k}": v for k, v in state.items()}, folder / "sound2scene.pth")
    assert _generate(folder, tmp_path, "--audio", str(shared_real / WAV)) == 2
    assert "unexpected keys: module.audnet" in _one_line_error(capsys)
    (folder / "sound2scene.pth").write_bytes(b"not a torch file")
    assert _generate(folder, tmp_path, "--audio", str(shared_real / WAV)) == 2
    assert "cannot read Sound2Scene audio encoder" in _one_line_error(capsys)


def test_generator_shape_comes_from_the_stored_config(tmp_path):
    small = {"G_ch": 4, "resolution": 64}
    folder = write_generator_folder(tmp_path / "icgan", random_generator(**small), fids=(3.0, 7.0), **small)
    g = load_official_generator(folder)
    assert (g.cfg.ch, g.cfg.resolution, g.cfg.z_dim) == (4, 64, 120)
    assert g.linear.weight.shape == (4 * 16 * 16, 24)  # 120 split into 5 chunks of 24 at 64 px
    assert g(torch.randn(2, 120), torch.randn(2, 2048)).shape == (2, 3, 64, 64)
    state = torch.load(folder / "G_ema_best0.pth", weights_only=True)
    del state["blocks.3.1.gamma"]
    state["shared_feat.weight"] = torch.zeros(512, 1024)
    torch.save(state, folder / "G_ema_best0.pth")
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.3\.1\.gamma; .*shared_feat\.weight"):
        load_official_generator(folder)
    for k in (0, 1):
        (folder / f"state_dict_best{k}.pth").unlink()
    with pytest.raises(WeightsError, match="no state_dict_best0.pth"):
        load_official_generator(folder)


def test_missing_release_folder(tmp_path, capsys):
    assert _generate(tmp_path / "nowhere", tmp_path, "--audio", "a.wav") == 2
    _one_line_error(capsys)
