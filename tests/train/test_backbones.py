"""Backbones behind one interface (train/backbones.py): HF towers and torchvision CNNs, offline."""
import numpy as np
import pytest
import torch
from PIL import Image

from train import backbones as B
from train.model import Classifier, set_trainable
from train.transforms import square

KINDS = {"tiny": "clip", "tiny-siglip": "siglip", "tiny-dinov2": "dinov2",
         "torchvision:resnet18": "torchvision", "torchvision:mobilenet_v3_small": "torchvision"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("backbones")


@pytest.mark.parametrize("spec", list(KINDS))
def test_every_kind_resolves_loads_and_round_trips(spec, home, tmp_path):
    size = 96 if spec.startswith("torchvision") else 0
    bb, p = B.load(B.resolve(spec, home, image_size=size))
    assert bb.kind == KINDS[spec]
    assert p.crop == (96 if size else 64) and p.size == p.crop + p.crop // 8  # the input side is the backbone's
    bb.eval()
    x = torch.randn(3, 3, p.crop, p.crop)
    f = bb(x)
    assert f.shape == (3, bb.dim) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])  # features depend on the image
    bb.save(tmp_path / "saved")
    bb2, p2 = B.load(str(tmp_path / "saved"))
    bb2.eval()
    assert p2 == p and torch.allclose(bb2(x), f, atol=1e-5)  # the artifact's copy is the same network
    assert bb.blocks(), "unfreeze_last needs the backbone's stages"


def test_normalisation_follows_the_family(home):
    means = {s: B.load(B.resolve(s, home, image_size=64 if ":" in s else 0))[1].mean for s in KINDS}
    assert means["tiny-siglip"] == (0.5, 0.5, 0.5)
    assert means["torchvision:resnet18"] == B.IMAGENET_MEAN == means["tiny-dinov2"]
    assert means["tiny"][0] == pytest.approx(0.4815, abs=1e-3)  # CLIP's


def test_set_trainable_unfreezes_the_last_stages_of_a_cnn(home):
    bb, _ = B.load(B.resolve("torchvision:resnet18", home, image_size=64))
    model = Classifier(bb, 3, 0, hidden=16)
    assert set_trainable(model, 0) == [] and not any(p.requires_grad for p in bb.parameters())
    params = set_trainable(model, 1)  # layer4 only
    assert {id(p) for p in params} == {id(p) for p in bb.net.layer4.parameters()}
    assert all(p.requires_grad for p in bb.net.layer4.parameters())
    assert not any(p.requires_grad for p in bb.net.layer1.parameters())
    everything = set_trainable(model, 1000)
    assert len(everything) == len(list(bb.parameters())) and all(p.requires_grad for p in bb.parameters())


def test_pretrained_weights_when_at_hand(home, tmp_path):
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    bb, _ = B.load(B.resolve(f"torchvision:resnet18={tmp_path / 'r18.pth'}", home, image_size=64))
    assert torch.equal(bb.net.conv1.weight, net.conv1.weight)  # the given weights, not a random init
    assert bb.info["pretrained"] == str(tmp_path / "r18.pth")
    with pytest.raises(B.BackboneError, match="no such weights"):
        B.resolve("torchvision:resnet18=/nowhere.pth", home)
    with pytest.raises(B.BackboneError, match="resnet18"):
        B.parse_spec("torchvision:alexnet")


def test_artifact_with_a_cnn_predicts_like_the_trained_model(home, tmp_path):
    from train.artifact import SiftModel, save

    bb, p = B.load(B.resolve("torchvision:mobilenet_v3_small", home, image_size=64))
    torch.manual_seed(0)
    model = Classifier(bb, 3, 0, hidden=16).eval()
    save(tmp_path / "m", model, backbone_id="torchvision:mobilenet_v3_small", preproc=p, short_edge=72,
         classes=["BAD", "NEUTRAL", "GOOD"], thresholds=[1 / 3] * 3, temperature=1.0, faces=None, hidden=16,
         dropout=0.1)
    sm = SiftModel(tmp_path / "m")
    assert sm.meta["backbone_config"]["arch"] == "mobilenet_v3_small" and sm.preproc.crop == 64
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (72, 128, 3), dtype=np.uint8)) for _ in range(3)]
    from train.transforms import center_crop, normalize, to_uint8_batch

    x = normalize(center_crop(to_uint8_batch([square(im, p.size) for im in imgs]), p.crop), p)
    with torch.no_grad():
        want = model(pixels=x, face=torch.zeros(3, 0)).logits.numpy()
    assert np.allclose(sm.logits(imgs), want, atol=1e-4)


def test_pad_keeps_the_whole_thumbnail():
    img = np.zeros((270, 480, 3), np.uint8)
    img[:, :40] = (255, 0, 0)  # a red strip at the left edge: a centre crop cuts it off
    crop, pad = square(Image.fromarray(img), 128), square(Image.fromarray(img), 128, fit="pad")
    assert crop.shape == pad.shape == (128, 128, 3)
    assert (crop[..., 0] > 200).sum() == 0
    assert (pad[..., 0] > 200).mean() == pytest.approx(40 / 480 * 72 / 128, abs=0.01)
    assert tuple(pad[0, 64]) == (124, 116, 104)  # the padding is mid-grey, above the picture
