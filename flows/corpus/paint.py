"""Drawing primitives the corpus' looks share (``flows.corpus.draw`` for style 0, ``flows.corpus.looks``
for the others): seeded choices, colours, gradients, fitted text, a cheap blur and noise, and the
words the pictures are made of. Every choice comes from the ``rng`` handed in."""
from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFont

BAIT = ("YOU WON'T BELIEVE", "SHOCKING!!!", "GONE WRONG", "DON'T WATCH THIS", "INSANE!!",
        "THEY LIED", "NOT CLICKBAIT", "100% REAL", "OMG!!!", "WATCH TILL END", "EXPOSED",
        "!!!", "WAIT FOR IT", "#1 SECRET", "UNBELIEVABLE")
WORDS = ("the", "report", "of", "and", "quarterly", "data", "meeting", "notes", "table", "value",
         "results", "for", "in", "summary", "budget", "total", "review", "item", "page", "section",
         "plan", "status", "update", "with", "to", "list", "index", "figure", "method", "a")


@lru_cache(maxsize=64)
def font(px: int) -> ImageFont.ImageFont:
    """The bundled default font at roughly ``px`` pixels; the bitmap default on old Pillow."""
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def font_px(px: float) -> ImageFont.ImageFont:
    """Quantise the size so the font cache stays small."""
    return font(max(8, int(px) // 4 * 4))


def uniform(rng, a: float, b: float) -> float:
    """A uniform float in [a, b)."""
    return float(rng.uniform(a, b))


def pick(rng, seq):
    """One element of ``seq``."""
    return seq[int(rng.integers(len(seq)))]


def chance(rng, p: float) -> bool:
    """True with probability ``p``."""
    return bool(rng.random() < p)


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """An RGB tuple from HSV in [0, 1]; the hue wraps."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def mix(a, b, t: float) -> tuple[int, int, int]:
    """The colour ``t`` of the way from ``a`` to ``b``."""
    return tuple(int(x + (y - x) * t + 0.5) for x, y in zip(a, b))


def gradient(top, bottom, w: int, h: int) -> Image.Image:
    """A vertical gradient; built as one column and stretched, which is far cheaper than w*h maths."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(col.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)


def fit_text(draw, text: str, px: float, max_w: float, stroke: int = 0):
    """A font no wider than ``max_w`` for ``text``, and the text's (width, height)."""
    f = font_px(px)
    l, t, r, b = draw.textbbox((0, 0), text, font=f, stroke_width=stroke)
    if r - l > max_w:  # one rescale is enough: text width is linear in the font size
        f = font_px(px * max_w / (r - l))
        l, t, r, b = draw.textbbox((0, 0), text, font=f, stroke_width=stroke)
    return f, (r - l, b - t)


def soften(img: Image.Image, factor: float) -> Image.Image:
    """A cheap blur: shrink and re-enlarge (a GaussianBlur costs ~50 ms on a 720p frame)."""
    w, h = img.size
    small = img.resize((max(1, int(w / factor)), max(1, int(h / factor))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.BILINEAR)


def add_noise(img: Image.Image, rng, sigma: float, colour: bool = False) -> Image.Image:
    """Additive uniform integer noise of about ``sigma``; grey noise unless ``colour``."""
    w, h = img.size
    k = max(1, int(sigma * 1.7))  # uniform on [-k, k] has sd ~ k / 1.7
    lut = np.arange(256, dtype=np.int16) * (2 * k + 1) // 256 - k  # random bytes -> [-k, k]
    c = 3 if colour else 1
    noise = lut[np.frombuffer(rng.bytes(h * w * c), np.uint8)].reshape(h, w, c)
    if c == 1:  # a broadcast add over the channel axis is ~10x slower than a same-shape one
        noise = np.repeat(noise, 3, axis=2)
    arr = np.asarray(img).astype(np.int16)
    arr += noise
    return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))
