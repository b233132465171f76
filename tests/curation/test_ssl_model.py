import pytest
import torch
import torchvision

from curation.ssl_model import AudioFrontEnd, AVLocalizer, CheckpointKeyError, SSLModelConfig, load_ezvsl_checkpoint


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


def _ezvsl_state_dict() -> dict[str, torch.Tensor]:
    """A checkpoint in the published layout, built from torchvision's own ResNet-18 (random weights)."""
    torch.manual_seed(0)
    image = torchvision.models.resnet18(weights=None)
    audio = torchvision.models.resnet18(weights=None)
    audio.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    state = {}
    for prefix, net in (("imgnet", image), ("audnet", audio)):
        for key, value in net.state_dict().items():
            if not key.startswith("fc."):
                state[f"module.{prefix}.{key}"] = value
    state["module.img_proj.weight"] = torch.randn(512, 512, 1, 1) * 0.02
    state["module.img_proj.bias"] = torch.zeros(512)
    state["module.aud_proj.weight"] = torch.randn(512, 512) * 0.02
    state["module.aud_proj.bias"] = torch.zeros(512)
    return state


def test_ezvsl_checkpoint_imports_every_weight(tmp_path):
    state = _ezvsl_state_dict()
    path = tmp_path / "ezvsl.pth"
    torch.save({"model": state, "epoch": 20}, path)
    model = load_ezvsl_checkpoint(str(path))
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key.removeprefix("module.")], value)
    assert not model.training


def test_a_wrong_checkpoint_fails_listing_the_keys(tmp_path):
    state = _ezvsl_state_dict()
    del state["module.aud_proj.weight"]
    state["module.extra_head.weight"] = torch.zeros(3)
    state["module.img_proj.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointKeyError) as err:
        load_ezvsl_checkpoint(str(path))
    message = str(err.value)
    assert "missing keys (1): aud_proj.weight" in message
    assert "unexpected keys (1): extra_head.weight" in message
    assert "img_proj.bias (7,) vs (512,)" in message
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointKeyError, match="model"):
        load_ezvsl_checkpoint(str(path))
