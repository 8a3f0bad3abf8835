"""The colour-statistics branch: values against PIL's HSV, invariants, and one embedding path."""
import numpy as np
import torch
from PIL import Image

from train.colour import DIM, ColourStats, hue_of
from train.model import Classifier, embed, load_backbone, resolve_backbone
from train.transforms import Preproc, normalize


def _stats(images: list[np.ndarray], p: Preproc = Preproc(64, 64)) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return ColourStats(p.mean, p.std)(normalize(x, p))


def test_histograms_are_distributions_and_flat_images_have_no_edges():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.full((64, 64, 3), 128, np.uint8)]
    f = _stats(images)
    assert f.shape == (2, DIM) and torch.isfinite(f).all()
    for lo, hi in ((0, 64), (64, 72), (72, 80)):  # joint RGB, saturation, value histograms
        assert torch.allclose(f[:, lo:hi].sum(1), torch.ones(2), atol=1e-5)
    grey = f[1]
    assert grey[64] == 1.0  # a grey image: all its saturation in the lowest bin
    assert grey[80:92].sum() == 0  # no saturation, so no hue mass
    assert grey[97] == 0 and grey[99:108].sum() == 0  # no edges anywhere on the grid
    assert f[0, 97] > 0.5  # uniform noise is edges nearly everywhere


def test_hue_and_saturation_match_pil_hsv():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    hsv = np.asarray(Image.fromarray(rgb[0]).convert("HSV"), np.float64) / 255.0
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    mx, mn = x.max(1).values, x.min(1).values
    hue = hue_of(x, mx, mx - mn)[0].numpy()
    d = np.abs(hue - hsv[..., 0])
    assert np.minimum(d, 1 - d).max() < 2 / 255  # PIL rounds hue to 1/255, and it wraps at 1
    f = _stats(list(rgb), Preproc(32, 32))
    sat = np.where(mx[0] > 0, (mx - mn)[0] / mx[0].clamp_min(1e-6), 0).mean()
    assert abs(float(f[0, 92]) - sat) < 1e-5 and abs(sat - hsv[..., 1].mean()) < 0.01


def test_more_saturated_images_score_higher_whatever_the_hue():
    """The cue the statistics exist for: saturation ranks images across hues."""
    out = []
    for hue in (0.0, 0.33, 0.66):
        for s in (0.2, 0.5, 0.9):
            im = Image.new("HSV", (32, 32), (int(hue * 255), int(s * 255), 200)).convert("RGB")
            out.append(float(_stats([np.asarray(im)], Preproc(32, 32))[0, 92]))
    for k in range(3):
        assert out[3 * k] < out[3 * k + 1] < out[3 * k + 2]


def test_classifier_embedding_appends_the_statistics_to_the_normalised_backbone(tmp_path):
    backbone, p = load_backbone(resolve_backbone("tiny", tmp_path))
    stats = ColourStats(p.mean, p.std)
    model = Classifier(backbone, 3, 0, hidden=16, stats=stats).eval()
    x = normalize(torch.randint(0, 256, (2, 3, p.crop, p.crop), dtype=torch.uint8), p)
    z = model.embed(x)
    assert z.shape == (2, backbone.dim + DIM) and model.embed_dim == backbone.dim + DIM
    assert torch.allclose(z[:, :backbone.dim].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(z, embed(backbone, x, stats))  # the cache's path is the model's
    assert torch.equal(z[:, backbone.dim:], stats(x))
    assert model(pixels=x).logits.shape == (2, 3)
