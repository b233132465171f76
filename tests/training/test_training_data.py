import io
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from training_fixtures import RATE, tiny_config, write_tiny_shards

from training.audio import LogSpectrogram, StatsAccumulator, fit_length
from training.config import AudioConfig, load_config
from training.data import decode_audio, in_val, pipeline, resolve_shards, selector
from training.recipes.stage3_audio import audio_batches


def _keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def test_a_folder_splits_into_training_and_evaluation_shards(tiny_shards):
    train, evaluation = resolve_shards(load_config(None, {"data.shards": str(tiny_shards)}).data)
    assert [p.rsplit("/", 1)[1] for p in train] == ["tiny-train-000000.tar", "tiny-train-000001.tar"]
    assert [p.rsplit("/", 1)[1] for p in evaluation] == ["tiny-test-000000.tar"]


def test_brace_patterns_globs_and_explicit_eval_shards(tiny_shards):
    brace = load_config(None, {"data.shards": f"{tiny_shards}/tiny-train-{{000000..000001}}.tar",
                               "data.eval_shards": f"{tiny_shards}/tiny-test-*.tar"}).data
    folder = load_config(None, {"data.shards": str(tiny_shards)}).data
    assert resolve_shards(brace) == resolve_shards(folder)
    with pytest.raises(FileNotFoundError, match="shards not found"):
        resolve_shards(load_config(None, {"data.shards": f"{tiny_shards}/tiny-train-{{000000..000002}}.tar"}).data)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def test_shards_are_read_from_urls(tiny_shards, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(tiny_shards)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/tiny-train-{{000000..000001}}.tar"
        remote = tiny_config(tiny_shards, tmp_path, f"data.shards={url}")
        train, evaluation = resolve_shards(remote.data)
        assert train == evaluation == [url.replace("{000000..000001}", f"00000{i}") for i in (0, 1)]
        local = tiny_config(tiny_shards, tmp_path)
        assert _keys(audio_batches(train, remote, "train", 8)) == \
            _keys(audio_batches(resolve_shards(local.data)[0], local, "train", 8))
    finally:
        server.shutdown()


def test_shards_are_read_from_a_bucket(tiny_shards, tmp_path, s3):
    s3.client().create_bucket(Bucket="shards")
    for path in sorted(tiny_shards.glob("*.tar")):
        s3.client().upload_file(str(path), "shards", f"run/shards/{path.name}")
    remote = tiny_config(tiny_shards, tmp_path, "data.shards=s3://shards/run/shards")
    local = tiny_config(tiny_shards, tmp_path)
    train, evaluation = resolve_shards(remote.data)
    assert [u.rsplit("/", 1)[1] for u in train + evaluation] == \
        [u.rsplit("/", 1)[1] for u in sum(resolve_shards(local.data), [])]
    assert train[0].startswith("s3://shards/run/shards/")
    assert _keys(audio_batches(train, remote, "train", 8)) == \
        _keys(audio_batches(resolve_shards(local.data)[0], local, "train", 8))


def test_evaluation_and_validation_clips_are_never_trained_on(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path, "data.val_fraction=0.25")
    everything = sorted(resolve_shards(cfg.data)[0]) + resolve_shards(cfg.data)[1]  # all shards, any order
    parts = {part: set(_keys(audio_batches(everything, cfg, part, 8))) for part in ("train", "val", "eval")}
    assert len(parts["eval"]) == 16 and len(parts["train"]) + len(parts["val"]) == 48
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["eval"]
    assert parts["val"] == {k for k in parts["train"] | parts["val"] if in_val(k, 0.25)}
    assert 0 < len(parts["val"]) < 24


def test_training_order_is_deterministic_given_the_seed(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path)
    urls = resolve_shards(cfg.data)[0]
    first = _keys(audio_batches(urls, cfg, "train", 4, seed=3))
    assert first == _keys(audio_batches(urls, cfg, "train", 4, seed=3))
    assert first != _keys(audio_batches(urls, cfg, "train", 4, seed=4))
    assert sorted(first) == sorted(_keys(audio_batches(urls, cfg, "train", 4)))  # same clips, other order


def test_resampling_gives_a_fixed_epoch_length(tiny_shards, tmp_path):
    cfg = tiny_config(tiny_shards, tmp_path, "data.resample=true", "data.epoch_batches=7")
    urls = resolve_shards(cfg.data)[0]
    pipe = pipeline(urls, cfg.data, select=selector(cfg.data, "train"), steps=[], batch_size=4, seed=0)
    assert sum(1 for _ in pipe) == 7


def test_short_clips_are_tiled_like_the_official_code():
    cfg = AudioConfig(seconds=1.0)
    wave = np.arange(6000, dtype=np.float32) / 6000
    out = fit_length(wave, cfg)
    assert out.shape == (RATE,) and np.array_equal(out[6000:12000], wave)


def test_moment_crop_centres_the_window_on_the_frame_inside_the_clip():
    wave = np.linspace(-1, 1, 4 * RATE, dtype=np.float32)
    moment = AudioConfig(seconds=1.0, crop="moment")
    assert np.array_equal(fit_length(wave, moment, 2.0), wave[int(1.5 * RATE):int(2.5 * RATE)])
    assert np.array_equal(fit_length(wave, moment, 0.1), wave[:RATE])  # shifted inside, not padded
    assert np.array_equal(fit_length(wave, moment, 3.9), wave[-RATE:])
    assert np.array_equal(fit_length(wave, moment, None), wave[int(1.5 * RATE):int(2.5 * RATE)])
    assert np.array_equal(fit_length(wave, AudioConfig(seconds=1.0, crop="clip"), 2.0), wave[:RATE])


def test_training_audio_is_cut_around_the_moment_whose_image_is_the_target():
    """Two moments (1 s and 3 s) of a 4-s ramp: each draw names its moment and holds the audio around it; a
    moment whose frame the shard lacks is never drawn."""
    wave = np.linspace(-0.9, 0.9, 4 * RATE)
    buf = io.BytesIO()
    sf.write(buf, wave, RATE, format="FLAC", subtype="PCM_24")
    info = {"frame_t": 1.0, "moments": [{"t": 1.0, "score": 1.0}, {"t": 3.0, "score": 0.5}]}
    sample = {"__key__": "k", "__url__": "u", "cls": b"0", "flac": buf.getvalue(), "jpg": b"", "top2.jpg": b"",
              "json": json.dumps(info).encode()}
    cfg, rng = AudioConfig(seconds=1.0, crop="moment"), np.random.default_rng(0)
    draws = [decode_audio(dict(sample), cfg, moments=2, rng=rng) for _ in range(20)]
    assert {d["moment"] for d in draws} == {0, 1}
    for d in draws:
        t = info["moments"][d["moment"]]["t"]
        expected = wave[int((t - 0.5) * RATE):int((t + 0.5) * RATE)]
        assert np.allclose(d["wave"], expected, atol=1e-5) and d["frame_t"] == 1.0
    without_top2 = {k: v for k, v in sample.items() if k != "top2.jpg"}
    assert {decode_audio(dict(without_top2), cfg, moments=2, rng=rng)["moment"] for _ in range(10)} == {0}
    assert decode_audio(dict(sample), cfg)["moment"] == 0  # evaluation: always the best frame
    no_moments = dict(sample, json=json.dumps({"frame_t": 1.0}).encode())
    assert decode_audio(no_moments, cfg, moments=2, rng=rng)["moment"] == 0


def _spectrogram(cfg: AudioConfig, waves: torch.Tensor) -> LogSpectrogram:
    front = LogSpectrogram(cfg)
    acc = StatsAccumulator(cfg.n_fft // 2 + 1)
    acc.add(front.log_power(waves))
    front.set_stats(*acc.mean_std())
    return front


def test_gain_shifts_global_features_by_a_constant_but_per_clip_normalisation_erases_it():
    torch.manual_seed(0)
    cfg = AudioConfig(seconds=1.0, time_pool=1, freq_pool=1)
    noise = torch.randn(3, RATE) * 0.2  # broadband, far above eps in (almost) every bin
    waves = torch.cat([noise, noise * 2.0])  # +6.02 dB
    front = _spectrogram(cfg, waves)
    quiet, loud = front(waves).split(3)
    offset = loud - quiet  # in the log domain a gain is an offset: log(4) / std per frequency bin
    expected = (np.log(4.0) / front.std)[None, None, :, None].expand_as(offset)
    error = (offset - expected).abs()  # larger only where a bin's power happens to come near eps
    assert error.median(dim=-1).values.max() < 1e-3 and (error < 1e-2).float().mean() > 0.99
    assert offset.median() > 0.3  # loudness survives normalisation

    official = LogSpectrogram(AudioConfig(seconds=1.0, time_pool=1, freq_pool=1, normalisation="per_clip"))
    q, lo = official(waves).split(3)
    change = (lo - q).abs()  # the official per-clip normalisation: the same features (up to eps effects)
    assert change.median() < 1e-3 and change.mean() < 0.01


def test_features_are_257_bins_by_about_1001_frames_for_10_s():
    front = LogSpectrogram(AudioConfig(time_pool=1, freq_pool=1))
    front.set_stats(torch.zeros(257), torch.ones(257))
    assert front(torch.zeros(1, 160000)).shape == (1, 1, 257, 1001)


def test_a_bad_sample_stops_the_run_or_is_skipped_as_configured(tmp_path):
    shards = write_tiny_shards(tmp_path / "shards", train_shards=1, per_shard=6, test=2)
    good = list(wds.DataPipeline(wds.SimpleShardList([str(shards / "tiny-train-000000.tar")]),
                                 wds.tarfile_to_samples()))
    good[2]["flac"] = b"not audio"
    good[4]["json"] = b"{broken"
    with wds.TarWriter(str(shards / "tiny-train-000000.tar")) as sink:
        for sample in good:
            sink.write({k: v for k, v in sample.items() if k not in ("__url__", "__local_path__")})
    strict = tiny_config(shards, tmp_path, "data.val_fraction=0")
    urls = resolve_shards(strict.data)[0]
    with pytest.raises(sf.LibsndfileError):
        _keys(audio_batches(urls, strict, "train", 2))
    lenient = tiny_config(shards, tmp_path, "data.val_fraction=0", "data.handler=warn")
    with pytest.warns(UserWarning):
        keys = _keys(audio_batches(urls, lenient, "train", 2))
    assert keys == [good[i]["__key__"] for i in (0, 1, 3, 5)]
