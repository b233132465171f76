"""FID / IS from user-given Inception weights: our FID equals the pytorch-fid package's on the same file and images,
torchvision's file gets its own preprocessing, and any other file is a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_fid.inception as pfi
import torch
import torchvision
from PIL import Image
from pytorch_fid import fid_score

from training import inception
from training.data import IMAGE_MEAN as IMAGENET_MEAN
from training.data import IMAGE_STD as IMAGENET_STD
from training.models.weights import WeightsError


def _calibrated(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights with batch-norm statistics measured on random images, so activations stay O(1) through all
    layers and the features (hence FID) are far from zero."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.rand(2, 3, 299, 299) * 2 - 1)
    return net.eval()


def _pytorch_fid_net() -> torch.nn.Module:
    """pytorch-fid's FID Inception network, built with its own classes (as its fid_inception_v3 does, without
    the download)."""
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


@pytest.fixture(scope="module")
def pytorch_fid_file(tmp_path_factory):
    """A pt_inception-2015-12-05 layout file of pytorch-fid's network."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-random.pth"
    torch.save(_calibrated(_pytorch_fid_net()).state_dict(), path)
    return path


def _image_folder(folder, seed: int, n: int, hue: float):
    """n 64-px PNGs: smooth colour fields plus noise (a different mean colour per folder)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    grid = np.linspace(0, 1, 64)
    for i in range(n):
        base = np.stack([np.outer(grid, rng.uniform(0, 1, 64)) * 255 * hue, rng.uniform(0, 255, (64, 64)),
                         np.add.outer(grid, grid) * 127], axis=2)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def _as_tensor(folder) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def test_fid_equals_pytorch_fid_on_the_same_weights(pytorch_fid_file, tmp_path, monkeypatch):
    a, b = _image_folder(tmp_path / "a", 0, 5, 1.0), _image_folder(tmp_path / "b", 1, 5, 0.3)
    ours = inception.fid_and_is(pytorch_fid_file, _as_tensor(a), _as_tensor(b), torch.device("cpu"))
    assert ours["fid_weights"] == "pytorch-fid"
    # pytorch-fid's whole pipeline (PNG reading, its InceptionV3, its Frechet distance) on our file instead of
    # the one it would download
    monkeypatch.setattr(pfi, "load_state_dict_from_url",
                        lambda *_a, **_k: torch.load(pytorch_fid_file, weights_only=True))
    theirs = fid_score.calculate_fid_given_paths([str(a), str(b)], 5, "cpu", 2048, num_workers=0)
    print(f"FID ours {ours['fid']:.6f} pytorch-fid {theirs:.6f}")
    assert theirs > 1.0 and ours["fid"] == pytest.approx(theirs, rel=1e-3)
    # IS: from the 1008 logits of pytorch-fid's network on its input (299 px bilinear, scaled to [-1, 1])
    net = _pytorch_fid_net()
    net.load_state_dict(torch.load(pytorch_fid_file, weights_only=True))
    x = torch.nn.functional.interpolate((_as_tensor(a) + 1) / 2, size=(299, 299), mode="bilinear",
                                        align_corners=False)
    with torch.no_grad():
        logits = net.eval()(2 * x - 1)
    assert logits.shape == (5, 1008) and ours["is"] == pytest.approx(inception.inception_score(logits.numpy()),
                                                                     rel=1e-4)


def test_torchvision_weights_get_their_own_preprocessing(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception_v3_google.pth")
    loaded = inception.load_inception(tmp_path / "inception_v3_google.pth", torch.device("cpu"))
    assert loaded.kind == "torchvision" and loaded.model.transform_input  # as torchvision runs these weights
    images = _as_tensor(_image_folder(tmp_path / "a", 0, 2, 1.0))
    same = inception.fid_and_is(tmp_path / "inception_v3_google.pth", images, images, torch.device("cpu"))
    assert abs(same["fid"]) < 1e-6
    # IS: from the 1000 ImageNet logits of torchvision's network on ImageNet-normalised 299-px input
    x = torch.nn.functional.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = net.eval()(torchvision.transforms.functional.normalize(x, IMAGENET_MEAN, IMAGENET_STD))
    assert logits.shape == (2, 1000) and same["is"] == pytest.approx(inception.inception_score(logits.numpy()),
                                                                     rel=1e-4)


def test_other_files_are_one_line_errors(pytorch_fid_file, tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="holds neither torchvision .* nor pytorch-fid"):
        inception.load_inception(tmp_path / "resnet.pth", torch.device("cpu"))
    state = torch.load(pytorch_fid_file, weights_only=True)
    state["Mixed_7c.branch_pool.conv.weight"] = torch.zeros(192, 2048, 3, 3)
    del state["Conv2d_1a_3x3.bn.running_mean"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as err:
        inception.load_inception(tmp_path / "broken.pth", torch.device("cpu"))
    assert "\n" not in str(err.value)
    assert "missing keys: Conv2d_1a_3x3.bn.running_mean" in str(err.value)
    assert "Mixed_7c.branch_pool.conv.weight (192, 2048, 3, 3) != (192, 2048, 1, 1)" in str(err.value)
    with pytest.raises(WeightsError, match="never downloaded"):
        inception.load_inception(tmp_path / "missing.pth", torch.device("cpu"))
