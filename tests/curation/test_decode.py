import numpy as np
import pytest
import torch
from conftest import make_av

from curation.config import DecodeConfig
from curation.decode import decode_clip, probe_media
from curation.errors import ClipError
from curation.localise.model import audio_windows


def test_frames_at_fixed_rate_resized_and_audio_at_16k(tmp_path):
    clip = decode_clip(make_av(tmp_path / "a.mp4", 5, size="640x360"), 1.0, 4.0, DecodeConfig(fps=10, short_side=112))
    assert clip.frames.shape == (30, 112, 200, 3) and clip.frames.dtype == np.uint8  # both sides even
    np.testing.assert_allclose(clip.times, np.arange(30) / 10)
    assert clip.sample_rate == 16000 and len(clip.audio) == 3 * 16000
    assert not clip.audio_tiled  # exactly one 3-s window of audio
    # a 440 Hz sine: the spectrum peaks there after resampling from 44.1 kHz
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert abs(np.argmax(spectrum) * 16000 / len(clip.audio) - 440) < 5


def test_audio_windows_are_centred_and_stay_inside_the_clip(tmp_path):
    clip = decode_clip(make_av(tmp_path / "a.mp4", 5), 0.0, 5.0, DecodeConfig(window_s=2.0))
    windows = clip.audio_windows()
    starts = clip.window_starts()
    assert windows.shape == (50, 32000)
    assert starts[0] == 0 and starts[-1] == len(clip.audio) - 32000  # shifted at the edges, not padded
    middle = 25  # t = 2.5 s: the window is [1.5, 3.5)
    assert starts[middle] == 24000
    np.testing.assert_array_equal(windows[middle], clip.audio[24000:56000])


def test_each_bad_input_gets_its_own_error_kind(bad_media):
    kinds = {}
    for expected, path in bad_media.items():
        with pytest.raises(ClipError) as err:  # a 2-s clip is `too_short` only when short clips are rejected
            decode_clip(path, 0.0, 5.0, DecodeConfig(short_clips="reject"))
        kinds[expected] = err.value.kind
    assert kinds == {k: k for k in bad_media}


def test_truncated_faststart_file_is_detected_from_the_header(tmp_path):
    good = make_av(tmp_path / "fs.mp4", 5, faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.7)])
    with pytest.raises(ClipError) as err:
        decode_clip(cut, 0.0, 5.0, DecodeConfig())
    assert err.value.kind == "truncated"


def test_a_clip_ending_early_but_longer_than_the_window_is_kept_shorter(tmp_path):
    clip = decode_clip(make_av(tmp_path / "a.mp4", 4), 0.0, 10.0, DecodeConfig(window_s=3.0))
    assert len(clip.times) == 40 and abs(clip.duration_s - 4.0) < 0.05


def test_a_clip_shorter_than_the_window_is_kept_and_its_windows_are_the_waveform_tiled(tmp_path):
    path = make_av(tmp_path / "short.mp4", 1.5)
    clip = decode_clip(path, 0.0, 10.0, DecodeConfig(window_s=3.0))  # the default: short_clips = tile
    assert clip.audio_tiled and abs(clip.duration_s - 1.5) < 0.05 and len(clip.times) == len(clip.frames) == 15
    windows = clip.audio_windows()
    tiled = np.tile(clip.audio, 2)[:48000]  # as the EZ-VSL / Sound2Scene loaders: np.tile up to the window
    assert len(tiled) == 48000
    assert windows.shape == (15, 48000) and (clip.window_starts() == 0).all()
    for window in windows:
        np.testing.assert_array_equal(window, tiled)
    # the model's front end (native scorer and training) cuts the same windows from the same waveform
    model_windows = audio_windows(torch.from_numpy(clip.audio), torch.from_numpy(clip.times), 3.0, 16000)
    np.testing.assert_array_equal(model_windows.numpy(), windows)
    with pytest.raises(ClipError) as err:
        decode_clip(path, 0.0, 10.0, DecodeConfig(window_s=3.0, short_clips="reject"))
    assert err.value.kind == "too_short" and "short_clips = reject" in str(err.value)


def test_an_audio_stream_without_samples_in_the_clip_is_no_audio_not_tiled(tmp_path, monkeypatch):
    path = make_av(tmp_path / "a.mp4", 1)
    monkeypatch.setattr("curation.decode._read_audio", lambda *args: np.zeros(0, dtype=np.float32))
    with pytest.raises(ClipError) as err:  # the clip's last 0.1 s: too little to be told apart from `truncated`
        decode_clip(path, 0.9, 1.0, DecodeConfig())
    assert err.value.kind == "no_audio"


def test_probe_reads_headers(tmp_path):
    info = probe_media(make_av(tmp_path / "a.mp4", 3, size="320x240"))
    assert (info.width, info.height, info.video_codec) == (320, 240, "h264")
    assert abs(info.duration_s - 3.0) < 0.1
