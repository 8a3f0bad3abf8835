"""The one image path into the model, shared by training, batch prediction and serving.

stored JPEG bytes (or any RGB image) -> decode (JPEG draft) -> square ``size``: resize the shortest edge
and centre crop (``fit="crop"``), or resize the longest edge and pad (``fit="pad"``: nothing of a
16:9 thumbnail is cut, a face at its side included) -> uint8 (B,3,S,S) -> [training: random crop/flip/jitter to ``crop``;
eval: centre crop to ``crop``] -> float, normalised with the backbone's mean/std.
The spec travels inside the model artifact, so serving prepares images exactly as training did.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from flows.media.images import to_rgb

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preproc:
    size: int  # square side after resize + centre crop (uint8 stage)
    crop: int  # model input side
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    fit: str = "crop"  # crop: shortest edge to size + centre crop; pad: longest edge to size + pad

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preproc":
        return cls(int(d["size"]), int(d["crop"]), tuple(d["mean"]), tuple(d["std"]), d.get("fit", "crop"))


def square(img: Image.Image, size: int, fit: str = "crop") -> np.ndarray:
    """RGB image -> (size, size, 3) uint8: shortest edge to ``size`` and centre crop, or (``fit="pad"``)
    longest edge to ``size``, centred on a mid-grey square (grey: it normalises to ~0, no fake colour)."""
    w, h = img.size
    if fit == "pad":
        s = size / max(w, h)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        canvas = Image.new("RGB", (size, size), (124, 116, 104))
        canvas.paste(img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=2.0),
                     ((size - nw) // 2, (size - nh) // 2))
        return np.asarray(canvas)
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=2.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def decode(data: bytes, size: int, fit: str = "crop") -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 (:func:`square`), using JPEG draft mode when it helps."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            w, h = im.size
            k = size / (max(w, h) if fit == "pad" else min(w, h))
            if k < 1:
                im.draft("RGB", (max(1, int(w * k + 0.5)), max(1, int(h * k + 0.5))))
        return square(to_rgb(im.convert(im.mode)), size, fit)


TILE_SCALE = 3  # five-crop tiling decodes the image at a short edge of up to 3 x the model's square


def tile_edge(size: int) -> int:
    """Short edge an image is decoded at for five-crop tiling: each crop's side is 2/3 of it, so a
    crop holds up to 2x the pixels per side that the model's ``size`` square takes in (detail that
    one downscaled view of the whole image loses)."""
    return TILE_SCALE * size


def five_crop_boxes(w: int, h: int, size: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of the 4 corner squares + the centre one: side 2/3 of the short edge
    (the whole short edge for an image not larger than ``size``)."""
    side = min(w, h) * 2 // 3 if min(w, h) > size else min(w, h)
    corners = [(0, 0), (w - side, 0), (0, h - side), (w - side, h - side), ((w - side) // 2, (h - side) // 2)]
    return [(x, y, x + side, y + side) for x, y in corners]


def five_crops(img: Image.Image, size: int) -> np.ndarray:
    """Tiling for large images: :func:`five_crop_boxes`, each squared to ``size`` -> (5, size, size, 3)."""
    return np.stack([square(img.crop(box), size) for box in five_crop_boxes(*img.size, size)])


def to_uint8_batch(arrays: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).permute(0, 3, 1, 2).contiguous()


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(B,3,S,S) -> (B,3,crop,crop), no copy of the pixels outside."""
    s = x.shape[-1]
    o = (s - crop) // 2
    return x[..., o:o + crop, o:o + crop]


def normalize(x: torch.Tensor, p: Preproc) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float32 normalised model input."""
    mean = torch.tensor(p.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def eval_input(jpegs: list[bytes], p: Preproc) -> torch.Tensor:
    """Encoded images -> eval model input (B,3,crop,crop) float32."""
    return normalize(center_crop(to_uint8_batch([decode(b, p.size, p.fit) for b in jpegs]), p.crop), p)
