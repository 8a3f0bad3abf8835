"""CPU-cheap augmentation for the two views of mean teacher.

Mean teacher needs the student and the teacher to see differently perturbed versions of an item
(Tarvainen & Valpola 2017, Sec. 2: "input augmentation ... noise"); consistency between the views is
the unsupervised signal. Images: uint8 (B, 3, H, W) -> uint8 (B, 3, h, w), the same out size for all.
Embedding caches: ``feature_noise`` on (B, D) float. Every function takes an optional torch.Generator
(on the tensor's device) so a run can be replayed. No rotation: orientation carries meaning here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (B, C, H, W), got {x.dtype} {tuple(x.shape)}")


def _uniform(n: int, low: float, high: float, generator, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def crop_params(batch: int, height: int, width: int, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3),
                generator: torch.Generator | None = None, device=None, attempts: int = 10) -> Tensor:
    """Sample one crop box per image, as torchvision's RandomResizedCrop: area fraction ~ U(scale),
    aspect w/h log-uniform in ratio; the first of ``attempts`` samples that fits is kept, else a centre
    crop at the nearest allowed aspect. Returns (B, 4) int64 (top, left, h, w), always inside
    [0, height) x [0, width) with h, w >= 1: we never pad, so no invented border enters the data."""
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"need 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
    shape = (batch, attempts)
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=generator,
                                                                            device=device))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * torch.rand(
        shape, generator=generator, device=device)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().round().long()
    h = (area / aspect).sqrt().round().long()
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback: the whole image, trimmed to the nearest allowed aspect ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw)).clamp(1, width)
    h = torch.where(ok, h, torch.full_like(h, fh)).clamp(1, height)
    # a uniform position among the (height - h + 1) x (width - w + 1) that fit
    top = (torch.rand(batch, generator=generator, device=device) * (height - h + 1)).floor().long()
    left = (torch.rand(batch, generator=generator, device=device) * (width - w + 1)).floor().long()
    top, left = torch.minimum(top, height - h), torch.minimum(left, width - w)  # rand < 1, but be safe
    return torch.stack([top, left, h, w], dim=1)


def _resize(crop: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased resize of uint8 (1, C, h, w) -> (1, C, *out_hw) uint8."""
    if tuple(crop.shape[-2:]) == tuple(out_hw):
        return crop
    if crop.device.type == "cpu":  # torch has a fast uint8 kernel for this on CPU
        return F.interpolate(crop, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
    out = F.interpolate(crop.float(), size=out_hw, mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_resized_crop(x: Tensor, out_hw: tuple[int, int], scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3),
                        generator: torch.Generator | None = None) -> Tensor:
    """A different random crop per image (see ``crop_params``), resized to out_hw with antialiased
    bilinear interpolation (antialias, so shrinking a large crop does not alias fine texture).
    x: uint8 (B, C, H, W) -> uint8 (B, C, *out_hw)."""
    _check_images(x)
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    b, c, height, width = x.shape
    boxes = crop_params(b, height, width, scale, ratio, generator=generator, device=x.device).tolist()
    out = torch.empty((b, c, *out_hw), dtype=torch.uint8, device=x.device)
    for i, (top, left, h, w) in enumerate(boxes):  # crop sizes differ per image: one resize each
        out[i] = _resize(x[i:i + 1, :, top:top + h, left:left + w], out_hw)[0]
    return out


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability p, independently. uint8 (B, C, H, W), same shape.
    Horizontal only: an upside-down photo is a different photo."""
    _check_images(x)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _gray(x: Tensor) -> Tensor:
    """float (B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def color_jitter(x: Tensor, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2,
                 generator: torch.Generator | None = None) -> Tensor:
    """Per-image brightness, contrast and saturation factors ~ U(max(0, 1 - s), 1 + s), applied in that
    fixed order in float32, clamped to [0, 255] after each step (as torchvision), rounded back to uint8.
    uint8 (B, 3, H, W), same shape. Strength 0 leaves the image unchanged. The generator draws the same
    numbers whatever the strengths, so changing one strength does not reshuffle the other factors."""
    _check_images(x)
    if x.shape[1] != 3:
        raise ValueError(f"color_jitter needs RGB images (B, 3, H, W), got {tuple(x.shape)}")
    b = x.shape[0]
    u = torch.rand((3, b), generator=generator, device=x.device)
    strengths = (brightness, contrast, saturation)
    if any(s < 0 for s in strengths):
        raise ValueError(f"jitter strengths must be >= 0, got {strengths}")
    lo = torch.tensor([max(0.0, 1.0 - s) for s in strengths], device=x.device)[:, None]
    hi = torch.tensor([1.0 + s for s in strengths], device=x.device)[:, None]
    factors = (lo + (hi - lo) * u)[:, :, None, None, None]  # (3, B, 1, 1, 1)
    y = x.float()
    if brightness > 0:
        y = (y * factors[0]).clamp_(0, 255)
    if contrast > 0:
        mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)  # blend with the image's mean gray level
        y = ((y - mean) * factors[1] + mean).clamp_(0, 255)
    if saturation > 0:
        gray = _gray(y)  # blend with the image's own grayscale version
        y = ((y - gray) * factors[2] + gray).clamp_(0, 255)
    return y.round_().to(torch.uint8)


# RGB -> YIQ (NTSC): Y is luma, (I, Q) the chroma plane; a hue shift is a rotation of that plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_rotate(x: Tensor, hue: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Per-image hue shift by a fraction of a turn ~ U(-hue, hue): the chroma plane of YIQ rotated,
    so luma is kept exactly and saturation nearly (up to clamping at the gamut's edge); a palette
    changes, the layout, brightness and colourfulness do not. uint8 (B, 3, H, W), same shape.
    ``hue`` 0 returns x and draws nothing (the generator's stream is the same as without the step)."""
    _check_images(x)
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5] (a fraction of a turn), got {hue}")
    if hue == 0:
        return x
    theta = (2 * torch.rand(x.shape[0], generator=generator, device=x.device) - 1) * hue * 2 * math.pi
    c, s = theta.cos(), theta.sin()
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    yiq = _YIQ.to(x.device)
    m = torch.linalg.inv(yiq) @ rot @ yiq  # (B, 3, 3): RGB -> rotated RGB
    y = torch.einsum("bij,bjhw->bihw", m, x.float())
    return y.clamp_(0, 255).round_().to(torch.uint8)


def random_invert(x: Tensor, invert: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Each image replaced by its negative 255 - x with probability ``invert`` (torchvision's
    RandomInvert): light pages become dark-mode ones and back. Chroma (max - min over the channels)
    is kept exactly, so colourfulness stays a cue; brightness flips and hue turns half a turn (pair it
    with a hue shift where the palette is a nuisance). uint8 (B, 3, H, W), same shape. ``invert`` 0
    returns x and draws nothing."""
    _check_images(x)
    if not 0 <= invert <= 1:
        raise ValueError(f"invert must be a probability in [0, 1], got {invert}")
    if invert == 0:
        return x
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < invert
    return torch.where(flip[:, None, None, None], 255 - x, x)


def augment(x: Tensor, out_hw: tuple[int, int], generator: torch.Generator | None = None, **kw) -> Tensor:
    """random_resized_crop -> random_flip -> color_jitter -> random_invert -> hue_rotate. Crop first:
    the later steps then run on the smaller image. kw: scale, ratio (crop); p (flip); brightness,
    contrast, saturation (jitter); invert (random_invert); hue (hue_rotate).
    uint8 (B, 3, H, W) -> uint8 (B, 3, *out_hw)."""
    groups = {"crop": ("scale", "ratio"), "flip": ("p",),
              "jitter": ("brightness", "contrast", "saturation"), "invert": ("invert",), "hue": ("hue",)}
    unknown = set(kw) - {k for keys in groups.values() for k in keys}
    if unknown:
        raise TypeError(f"augment() got unknown options {sorted(unknown)}")
    pick = {g: {k: kw[k] for k in keys if k in kw} for g, keys in groups.items()}
    x = random_resized_crop(x, out_hw, generator=generator, **pick["crop"])
    x = random_flip(x, generator=generator, **pick["flip"])
    x = color_jitter(x, generator=generator, **pick["jitter"])
    x = random_invert(x, generator=generator, **pick["invert"])
    return hue_rotate(x, generator=generator, **pick["hue"])


def augment_kwargs(min_area: float, jitter: float, saturation: float, hue: float = 0.0,
                   invert: float = 0.0) -> dict:
    """:func:`augment` keywords from the train config's knobs: crops keep at least ``min_area`` of
    the square (a face or a text line at its edge survives), brightness/contrast jitter ``jitter``, a
    separate, milder saturation jitter (saturation can be the class signal: jitter must not erase it),
    a hue shift (the palette changes, saturation stays) and the chance of a negative (light and dark
    pages swap, chroma stays)."""
    return {"scale": (float(min_area), 1.0), "brightness": float(jitter), "contrast": float(jitter),
            "saturation": float(saturation), "invert": float(invert), "hue": float(hue)}


def feature_noise(z: Tensor, std: float = 0.1, dropout: float = 0.1,
                  generator: torch.Generator | None = None) -> Tensor:
    """A cheap "view" of cached embeddings z (B, D) float, so that student and teacher still see
    different inputs when training from an embedding cache (the image is not re-augmented).

    Adds gaussian noise with std ``std`` times each row's own std (so the noise is relative to the
    embedding's scale, whatever the backbone), then inverted dropout: each coordinate is zeroed with
    probability ``dropout`` and the rest scaled by 1 / (1 - dropout), keeping the expectation. std 0 and
    dropout 0 return z unchanged. The noise scale is computed from z detached; gradient flows through z.
    """
    if z.ndim != 2 or not z.is_floating_point():
        raise ValueError(f"expected float embeddings (B, D), got {z.dtype} {tuple(z.shape)}")
    if std < 0 or not 0 <= dropout < 1:
        raise ValueError(f"need std >= 0 and 0 <= dropout < 1, got std={std}, dropout={dropout}")
    out = z
    if std > 0:
        row_std = z.detach().std(dim=1, keepdim=True, correction=0)
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        out = out + std * row_std * noise
    if dropout > 0:
        keep = torch.rand(z.shape, generator=generator, device=z.device) >= dropout
        out = out * keep.to(z.dtype) / (1.0 - dropout)
    return out
