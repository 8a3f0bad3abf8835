"""Pure image functions: decode safely, normalise to RGB, resize, encode within a byte budget.

Used by preprocessing, the scraper's client-side compression, batch prediction and serving, so an
image is prepared the same way everywhere.
"""
from __future__ import annotations

import io
import warnings

import imagehash
import numpy as np
from PIL import Image, ImageFile, ImageOps

from flows.media.validate import Reject

# We enforce our own pixel limit before decoding (see open_image); Pillow's global guard would
# raise a different exception type at 2x its limit, so leave it in place as a second fence only.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_image(data: bytes, *, max_pixels: int, min_side: int = 1, short_edge: int | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image with EXIF orientation applied.

    The pixel count is checked from the header before any pixel is decoded (decompression-bomb
    guard). For JPEGs, ``short_edge`` enables draft decoding: libjpeg scales by 1/2, 1/4 or 1/8 in
    the DCT, which is several times faster than decoding full size and resizing afterwards.
    Raises :class:`Reject` with ``too_many_pixels``, ``too_small`` or ``decode_error``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise Reject("too_many_pixels", f"{w}x{h} = {w * h} pixels > {max_pixels}")
            if min(w, h) < min_side:
                raise Reject("too_small", f"{w}x{h} is smaller than {min_side} px")
            if short_edge and img.format == "JPEG":
                scale = short_edge / min(w, h)
                if scale < 1:
                    img.draft("RGB", (max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))))
            img.seek(0)  # first frame of animated GIF/WebP/TIFF
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except Reject:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Reject("too_many_pixels", str(exc)) from None
    except Exception as exc:  # PIL raises many types for corrupt data (OSError, SyntaxError, ...)
        raise Reject("decode_error", f"{type(exc).__name__}: {exc}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, correctly.

    - Transparency (RGBA, LA, P with tRNS) is composited on white, not dropped: dropping alpha
      turns transparent pixels into whatever colour they happen to store (often black).
    - 16/32-bit integer and float modes are scaled to 0..255 instead of clipped, which is what a
      plain ``convert("L")`` does to a 16-bit PNG (everything above 255 becomes white).
    - CMYK goes through Pillow's conversion (Adobe-inverted JPEGs are handled by the decoder).
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0
        else:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def resize_short(img: Image.Image, short_edge: int) -> Image.Image:
    """Resize so the shortest edge is ``short_edge``; never upscale (an upscale adds no information)."""
    w, h = img.size
    if min(w, h) <= short_edge:
        return img
    scale = short_edge / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reducing_gap: a cheap integer box reduction first, then bicubic; near-identical quality, ~2x faster
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    return buf.getvalue()


def encode_budget(img: Image.Image, budget: int, max_quality: int = 90, min_quality: int = 40,
                  ) -> tuple[bytes, int, Image.Image]:
    """Encode ``img`` as JPEG in at most ``budget`` bytes, at the highest quality that fits.

    Size is monotone in quality (up to encoder noise), so a binary search over quality needs ~4
    encodes; the common case (already fits at ``max_quality``) needs one. If even ``min_quality``
    is too large the image is shrunk by 0.8x and the search repeats.
    Returns ``(jpeg_bytes, quality, encoded_image)``.
    """
    while True:
        best = encode_jpeg(img, max_quality)
        if len(best) <= budget:
            return best, max_quality, img
        lo, hi, found, q_found = min_quality, max_quality - 1, None, None
        while lo <= hi:
            q = (lo + hi) // 2
            data = encode_jpeg(img, q)
            if len(data) <= budget:
                found, q_found, lo = data, q, q + 1
            else:
                hi = q - 1
        if found is not None:
            return found, q_found, img
        w, h = img.size
        if min(w, h) <= 16:
            data = encode_jpeg(img, min_quality)
            return data, min_quality, img
        img = img.resize((max(1, int(w * 0.8)), max(1, int(h * 0.8))), Image.Resampling.BICUBIC)


def phash(img: Image.Image) -> str:
    """64-bit DCT perceptual hash as 16 hex chars (Zauner 2010; via the imagehash library)."""
    return str(imagehash.phash(img, hash_size=8))


def prepare(img: Image.Image, short_edge: int, budget: int, max_quality: int, min_quality: int) -> dict:
    """Resize + budget-encode an RGB image: the stored form of every image and video frame."""
    small = resize_short(img, short_edge)
    data, q, used = encode_budget(small, budget, max_quality, min_quality)
    return {"image": data, "bytes": len(data), "quality": q, "width": used.size[0],
            "height": used.size[1], "phash": phash(used)}


def decode_rgb_array(jpeg: bytes) -> np.ndarray:
    """Stored JPEG bytes -> uint8 array (H, W, 3)."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))
