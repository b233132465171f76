import torch

from curation.localise.model import AudioFrontEnd, AVLocalizer, SSLModelConfig


def test_full_size_model_gives_7x7_maps_at_224_and_cosine_localisation():
    cfg = SSLModelConfig()
    model = AVLocalizer(cfg).eval()
    front = AudioFrontEnd(cfg)
    with torch.no_grad():
        maps = model.image_maps(torch.randint(0, 255, (2, 3, 224, 224), dtype=torch.uint8))
        spec = front(torch.randn(2, 48000) * 0.1)
        vecs = model.audio_vectors(spec)
        loc = model.localization(maps, vecs)
    assert spec.shape == (2, 1, 257, 176)  # EZ-VSL's front end: n_fft 512, hop 274, 3 s
    assert maps.shape == (2, 512, 7, 7) and vecs.shape == (2, 512) and loc.shape == (2, 7, 7)
    assert torch.allclose(maps.norm(dim=1), torch.ones(2, 7, 7), atol=1e-5)
    assert float(loc.abs().max()) <= 1.0 + 1e-5
    pairs = AVLocalizer.all_pairs_max(maps, vecs)
    # two einsums (all pairs vs paired) run other float32 kernels: 512-term dot products of unit vectors differ
    # by ~1e-7 here, more on other CPUs; cosines in [-1, 1], so an absolute 1e-5
    assert torch.allclose(torch.diagonal(pairs), loc.flatten(1).amax(dim=1), rtol=0, atol=1e-5)


def test_small_variant_without_maxpool_keeps_a_fine_map():
    cfg = SSLModelConfig(widths=(8, 8, 16, 16), image_maxpool=False, image_size=96, dim=16, hop=320, n_mels=32)
    maps = AVLocalizer(cfg).image_maps(torch.rand(1, 3, 96, 96))
    assert maps.shape == (1, 16, 6, 6)
    assert AudioFrontEnd(cfg)(torch.randn(1, 48000)).shape == (1, 1, 32, 151)


def test_colour_branch_adds_only_its_own_keys_and_keeps_the_published_layout_when_off():
    small = dict(widths=(8, 8, 16, 16), image_maxpool=False, image_size=32, dim=16, hop=320, n_mels=32)
    plain = AVLocalizer(SSLModelConfig(**small)).state_dict()
    coloured = AVLocalizer(SSLModelConfig(**small, colour_branch=6)).state_dict()
    assert not any(k.startswith("img_colour") for k in plain)
    assert {k for k in coloured if k not in plain} == {k for k in coloured if k.startswith("img_colour.")}
    assert plain["img_proj.weight"].shape == (16, 16, 1, 1) and coloured["img_proj.weight"].shape == (16, 22, 1, 1)
    # a config saved before the branch existed (no key) builds the plain model
    saved = SSLModelConfig(**small).to_dict()
    del saved["colour_branch"]
    assert SSLModelConfig.from_dict(saved).colour_branch == 0


def test_audio_windows_tile_a_clip_shorter_than_the_window_as_the_published_loaders_do():
    import numpy as np

    from curation.localise.model import audio_windows

    audio = torch.randn(3000)
    windows = audio_windows(audio, torch.tensor([0.0, 0.09, 0.5]), 0.5, 16000)  # 8000-sample windows
    tiled = torch.from_numpy(np.tile(audio.numpy(), 3)[:8000])  # np.tile up to the window, every window full
    assert windows.shape == (3, 8000)
    for window in windows:
        assert torch.equal(window, tiled)
    long = torch.randn(20000)  # longer than the window: centred, shifted inward at the edges, never tiled
    assert torch.equal(audio_windows(long, torch.tensor([0.0, 0.5, 1.2]), 0.5, 16000),
                       torch.stack([long[:8000], long[4000:12000], long[12000:]]))
    assert torch.equal(audio_windows(torch.zeros(0), torch.tensor([0.0]), 0.5, 16000), torch.zeros(1, 8000))
