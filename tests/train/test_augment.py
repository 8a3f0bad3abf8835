"""Invariants of the augmentations (train/augment.py)."""
import pytest
import torch

from train.augment import (
    augment,
    color_jitter,
    crop_params,
    feature_noise,
    random_flip,
    random_resized_crop,
)


def _images(b=4, h=40, w=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)


def _coordinate_image(b, h, w):
    """Channel 0 holds the row index, channel 1 the column index, channel 2 zero."""
    rows = torch.arange(h, dtype=torch.uint8)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.uint8)[None, :].expand(h, w)
    img = torch.stack([rows, cols, torch.zeros(h, w, dtype=torch.uint8)])
    return img.expand(b, 3, h, w).contiguous()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_output_dtype_and_shape():
    x = _images()
    for out in (random_resized_crop(x, (24, 32), generator=_gen()), augment(x, (24, 32), generator=_gen())):
        assert out.dtype == torch.uint8 and out.shape == (4, 3, 24, 32)
    assert random_flip(x, generator=_gen()).shape == x.shape
    assert color_jitter(x, generator=_gen()).dtype == torch.uint8


def test_crop_boxes_are_always_inside_the_image():
    for scale, ratio in [((0.6, 1.0), (3 / 4, 4 / 3)), ((0.05, 1.0), (0.2, 5.0)), ((1.0, 1.0), (0.1, 0.1))]:
        boxes = crop_params(500, 40, 60, scale, ratio, generator=_gen())
        top, left, h, w = boxes.unbind(1)
        assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
        assert (top + h <= 40).all() and (left + w <= 60).all()


def test_crop_content_is_a_contiguous_in_bounds_region():
    # a square crop of a quarter of the area, resized to its own size: pixels pass through unchanged
    x = _coordinate_image(16, 32, 48)
    out = random_resized_crop(x, (16, 24), scale=(0.25, 0.25), ratio=(1.5, 1.5), generator=_gen())
    for img in out.long():
        rows, cols = img[0], img[1]
        top, left = rows[0, 0].item(), cols[0, 0].item()
        assert torch.equal(rows, (top + torch.arange(16))[:, None].expand(16, 24))
        assert torch.equal(cols, (left + torch.arange(24))[None, :].expand(16, 24))
        assert 0 <= top and top + 16 <= 32 and 0 <= left and left + 24 <= 48


def test_full_scale_crop_covers_the_whole_image():
    x = _coordinate_image(2, 30, 40)
    out = random_resized_crop(x, (30, 40), scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), generator=_gen())
    assert torch.equal(out, x)


def test_crops_differ_between_images_of_a_batch():
    x = _coordinate_image(8, 64, 64).expand(8, 3, 64, 64).contiguous()  # all images identical
    out = random_resized_crop(x, (32, 32), generator=_gen())
    assert len({tuple(img.flatten().tolist()) for img in out}) > 1


def test_flip_of_flip_is_identity():
    x = _images()
    once = random_flip(x, p=1.0, generator=_gen())
    assert torch.equal(once, x.flip(-1))
    assert torch.equal(random_flip(once, p=1.0, generator=_gen()), x)
    assert torch.equal(random_flip(x, p=0.0, generator=_gen()), x)


def test_flip_is_horizontal_only():
    x = _coordinate_image(1, 10, 20)
    out = random_flip(x, p=1.0)
    assert torch.equal(out[0, 0], x[0, 0])  # rows untouched
    assert torch.equal(out[0, 1, 0], torch.arange(19, -1, -1, dtype=torch.uint8))


def test_jitter_of_zero_strength_is_identity():
    x = _images()
    assert torch.equal(color_jitter(x, 0.0, 0.0, 0.0, generator=_gen()), x)


def test_jitter_changes_images_and_stays_in_range():
    x = _images()
    out = color_jitter(x, 0.5, 0.5, 0.5, generator=_gen())
    assert not torch.equal(out, x)
    gray = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)  # saturation and contrast leave flat gray alone
    assert torch.equal(color_jitter(gray, 0.0, 0.9, 0.9, generator=_gen()), gray)


def test_same_seed_same_result_different_seed_different_result():
    x = _images()
    a = augment(x, (24, 24), generator=_gen(7))
    b = augment(x, (24, 24), generator=_gen(7))
    c = augment(x, (24, 24), generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_rejects_unknown_options_and_non_uint8():
    x = _images()
    with pytest.raises(TypeError):
        augment(x, (24, 24), rotation=10)
    with pytest.raises(ValueError):
        augment(x.float(), (24, 24))
    out = augment(x, (24, 24), generator=_gen(), scale=(1.0, 1.0), ratio=(1.5, 1.5), p=0.0,
                  brightness=0.0, contrast=0.0, saturation=0.0)
    assert out.shape == (4, 3, 24, 24)


def test_feature_noise_with_zero_std_and_zero_dropout_is_identity():
    z = torch.randn(5, 16)
    assert torch.equal(feature_noise(z, std=0.0, dropout=0.0, generator=_gen()), z)


def test_feature_noise_scale_and_dropout_rate():
    z = torch.randn(64, 512, generator=_gen(1)) * 10
    noisy = feature_noise(z, std=0.1, dropout=0.0, generator=_gen())
    rel = (noisy - z).std(dim=1) / z.std(dim=1)
    assert torch.allclose(rel, torch.full_like(rel, 0.1), rtol=0.15)
    dropped = feature_noise(z, std=0.0, dropout=0.25, generator=_gen())
    zero_frac = (dropped == 0).float().mean().item()
    assert zero_frac == pytest.approx(0.25, abs=0.02)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], z[kept] / 0.75)  # inverted dropout keeps the expectation
    a = feature_noise(z, generator=_gen(3))
    assert torch.equal(a, feature_noise(z, generator=_gen(3))) and not torch.equal(a, z)


def test_hue_rotate_keeps_luma_and_colourfulness_and_moves_the_palette():
    from train.augment import hue_rotate
    from train.colour import ColourStats
    from train.transforms import Preproc, normalize

    g = torch.Generator().manual_seed(0)
    x = torch.randint(88, 168, (8, 3, 16, 16), generator=g).to(torch.uint8)  # far from the gamut's edge
    assert torch.equal(hue_rotate(x, 0.0), x)
    y = hue_rotate(x, 0.5, generator=torch.Generator().manual_seed(1))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert ((x.float() * luma).sum(1) - (y.float() * luma).sum(1)).abs().max() <= 3  # rounding, clamping
    assert (y.float() - x.float()).abs().mean() > 5  # the colours did move
    p = Preproc(16, 16)
    sx, sy = (ColourStats(p.mean, p.std)(normalize(v, p)) for v in (x, y))
    assert (sx[:, 92] - sy[:, 92]).abs().max() < 0.15  # mean saturation nearly kept
    with pytest.raises(ValueError):
        hue_rotate(x, 0.6)


def test_random_invert_swaps_light_and_dark_and_keeps_chroma():
    from train.augment import augment, random_invert

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=g).to(torch.uint8)
    assert torch.equal(random_invert(x, 0.0), x)
    assert torch.equal(random_invert(x, 1.0), 255 - x)
    y = random_invert(x, 0.5, generator=torch.Generator().manual_seed(1))
    flipped = (y != x).flatten(1).any(1)
    assert 16 < int(flipped.sum()) < 48  # about half the images, each one whole or not at all
    assert torch.equal(y[flipped], 255 - x[flipped]) and torch.equal(y[~flipped], x[~flipped])
    chroma = lambda v: v.float().amax(1) - v.float().amin(1)
    assert torch.equal(chroma(y), chroma(x))  # colourfulness is untouched, pixel by pixel
    bright = x.float().mean((1, 2, 3))
    assert torch.allclose(y[flipped].float().mean((1, 2, 3)), 255 - bright[flipped])
    # inside augment it draws nothing at 0: the stream of the other steps is unchanged
    a = augment(x, (8, 8), generator=torch.Generator().manual_seed(2), invert=0.0)
    b = augment(x, (8, 8), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        random_invert(x, 1.5)
