"""Pixels for the synthetic corpus: one picture per class, with learnable but overlapping cues.

BAD looks like a loud clickbait thumbnail, GOOD like a calm landscape, NEUTRAL like a plain document
or chart. Every choice comes from the ``rng`` handed in, so a picture is a pure function of
(class, rng state, size). A fraction of each class borrows the look of another class on purpose, so
that no single statistic separates the classes and a model has to learn the layout as well.
``encode`` turns a picture into the file formats and odd modes an ingest meets in the wild.
"""
from __future__ import annotations

import colorsys
import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CLASSES = ("BAD", "NEUTRAL", "GOOD")  # the classes render() knows how to draw

BAIT = ("YOU WON'T BELIEVE", "SHOCKING!!!", "GONE WRONG", "DON'T WATCH THIS", "INSANE!!",
        "THEY LIED", "NOT CLICKBAIT", "100% REAL", "OMG!!!", "WATCH TILL END", "EXPOSED",
        "!!!", "WAIT FOR IT", "#1 SECRET", "UNBELIEVABLE")
WORDS = ("the", "report", "of", "and", "quarterly", "data", "meeting", "notes", "table", "value",
         "results", "for", "in", "summary", "budget", "total", "review", "item", "page", "section",
         "plan", "status", "update", "with", "to", "list", "index", "figure", "method", "a")
FAST = Image.Quantize.FASTOCTREE  # median cut (the default) costs ~250 ms on a 720p frame
BAIT_HUES = (0.0, 0.02, 0.12, 0.15, 0.83, 0.9, 0.55)  # red, orange, yellow, magenta, cyan


@lru_cache(maxsize=64)
def font(px: int) -> ImageFont.ImageFont:
    """The bundled default font at roughly ``px`` pixels; the bitmap default on old Pillow."""
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _font_px(px: float) -> ImageFont.ImageFont:
    """Quantise the size so the font cache stays small."""
    return font(max(8, int(px) // 4 * 4))


def _u(rng, a: float, b: float) -> float:
    """A uniform float in [a, b)."""
    return float(rng.uniform(a, b))


def _pick(rng, seq):
    """One element of ``seq``."""
    return seq[int(rng.integers(len(seq)))]


def _chance(rng, p: float) -> bool:
    """True with probability ``p``."""
    return bool(rng.random() < p)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    """An RGB tuple from HSV in [0, 1]; the hue wraps."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def _mix(a, b, t: float) -> tuple[int, int, int]:
    """The colour ``t`` of the way from ``a`` to ``b``."""
    return tuple(int(x + (y - x) * t + 0.5) for x, y in zip(a, b))


def _gradient(top, bottom, w: int, h: int) -> Image.Image:
    """A vertical gradient; built as one column and stretched, which is far cheaper than w*h maths."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return Image.fromarray(col.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST)


def _fit_text(draw, text: str, px: float, max_w: float, stroke: int = 0):
    """A font no wider than ``max_w`` for ``text``, and the text's (width, height)."""
    f = _font_px(px)
    l, t, r, b = draw.textbbox((0, 0), text, font=f, stroke_width=stroke)
    if r - l > max_w:  # one rescale is enough: text width is linear in the font size
        f = _font_px(px * max_w / (r - l))
        l, t, r, b = draw.textbbox((0, 0), text, font=f, stroke_width=stroke)
    return f, (r - l, b - t)


def _arrow(draw, x: float, y: float, length: float, angle: float, fill, outline, width: int):
    """A fat arrow whose tip is at (x, y), pointing along ``angle``."""
    t, hw, hl = length * 0.1, length * 0.25, length * 0.4
    pts = np.array([(0, -t), (length - hl, -t), (length - hl, -hw), (length, 0),
                    (length - hl, hw), (length - hl, t), (0, t)], np.float64) - (length, 0)
    c, s = np.cos(angle), np.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]]) + (x, y)
    draw.polygon([tuple(p) for p in rot], fill=fill, outline=outline, width=width)


def _bait_palette(rng, muted: bool):
    """Two loud colours (or, for the ambiguous few, two muted ones) and a text colour."""
    s = (0.15, 0.4) if muted else (0.8, 1.0)
    c1 = _hsv(_pick(rng, BAIT_HUES) + _u(rng, -0.02, 0.02), _u(rng, *s), _u(rng, 0.8, 1.0))
    c2 = _hsv(_pick(rng, BAIT_HUES) + _u(rng, -0.02, 0.02), _u(rng, *s), _u(rng, 0.75, 1.0))
    text = _pick(rng, ((255, 255, 0), (255, 255, 255), (255, 230, 0), (0, 0, 0)))
    return c1, c2, text


def _bad(rng, w: int, h: int) -> Image.Image:
    """Clickbait: loud background, shocked face, giant outlined text, arrows and circles."""
    m = min(w, h)
    c1, c2, text_fill = _bait_palette(rng, muted=_chance(rng, 0.15))
    style = _pick(rng, ("burst", "burst", "split", "solid", "photo"))
    if style == "photo":  # a landscape under the bait: colour alone must not give it away
        img = _good(rng, w, h)
    else:
        img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    cx, cy = _u(rng, 0.2, 0.8) * w, _u(rng, 0.2, 0.8) * h
    if style == "burst":
        n, r = int(rng.integers(10, 24)), 2.0 * max(w, h)
        for k in range(n):
            a0, a1 = 2 * np.pi * k / n, 2 * np.pi * (k + 0.5) / n
            draw.polygon([(cx, cy), (cx + r * np.cos(a0), cy + r * np.sin(a0)),
                          (cx + r * np.cos(a1), cy + r * np.sin(a1))], fill=c2)
    elif style == "split":
        y0, y1 = _u(rng, 0, h), _u(rng, 0, h)
        draw.polygon([(0, y0), (w, y1), (w, h), (0, h)], fill=c2)
    lw = max(2, int(m * _u(rng, 0.01, 0.03)))
    if _chance(rng, 0.6):  # a shocked face: skin disc, wide eyes, open mouth
        fr, fx, fy = m * _u(rng, 0.15, 0.3), _u(rng, 0.15, 0.85) * w, _u(rng, 0.35, 0.8) * h
        skin = _hsv(_u(rng, 0.04, 0.09), _u(rng, 0.3, 0.6), _u(rng, 0.55, 0.95))
        draw.ellipse((fx - fr, fy - fr, fx + fr, fy + fr), fill=skin, outline=(0, 0, 0), width=lw)
        for ex in (-0.35, 0.35):
            e = fr * 0.18
            draw.ellipse((fx + ex * fr - e, fy - 0.25 * fr - e, fx + ex * fr + e, fy - 0.25 * fr + e),
                         fill=(255, 255, 255), outline=(0, 0, 0), width=max(1, lw // 2))
        draw.ellipse((fx - 0.2 * fr, fy + 0.2 * fr, fx + 0.2 * fr, fy + 0.6 * fr), fill=(40, 0, 0))
    for _ in range(int(rng.integers(0, 3))):  # the red circle around "the thing"
        r = m * _u(rng, 0.08, 0.22)
        x, y = _u(rng, 0.1, 0.9) * w, _u(rng, 0.1, 0.9) * h
        draw.ellipse((x - r, y - r * _u(rng, 0.6, 1.2), x + r, y + r), outline=(255, 0, 0), width=lw * 2)
    for _ in range(int(rng.integers(0, 4))):
        _arrow(draw, _u(rng, 0.1, 0.9) * w, _u(rng, 0.1, 0.9) * h, m * _u(rng, 0.2, 0.45),
               _u(rng, 0, 2 * np.pi), _pick(rng, ((255, 0, 0), (255, 255, 0), (0, 255, 0))), (0, 0, 0), lw)
    for _ in range(int(rng.integers(1, 3))):
        text = _pick(rng, BAIT)
        stroke = max(1, int(m * _u(rng, 0.008, 0.02)))
        f, (tw, th) = _fit_text(draw, text, m * _u(rng, 0.1, 0.22), 0.95 * w, stroke)
        x, y = _u(rng, 0, max(1, w - tw)), _u(rng, 0, max(1, h - th))
        draw.text((x, y), text, font=f, fill=text_fill, stroke_width=stroke,
                  stroke_fill=(0, 0, 0) if text_fill != (0, 0, 0) else (255, 255, 255))
    return img


def _good(rng, w: int, h: int) -> Image.Image:
    """A calm landscape: soft sky gradient, sun or moon, layered hills, maybe still water."""
    hue = _u(rng, 0, 1)
    if _chance(rng, 0.12):  # a vivid sunset: as saturated as the bait, on purpose
        top, bottom = _hsv(_u(rng, 0.75, 0.95), _u(rng, 0.5, 0.9), _u(rng, 0.5, 0.9)), \
            _hsv(_u(rng, 0.0, 0.1), _u(rng, 0.6, 0.95), _u(rng, 0.85, 1.0))
    elif _chance(rng, 0.2):  # night
        top, bottom = _hsv(hue, _u(rng, 0.2, 0.5), _u(rng, 0.08, 0.25)), _hsv(hue, _u(rng, 0.1, 0.4), _u(rng, 0.25, 0.45))
    else:  # pastel day or dawn
        top = _hsv(hue, _u(rng, 0.1, 0.4), _u(rng, 0.75, 1.0))
        bottom = _hsv(hue + _u(rng, -0.15, 0.15), _u(rng, 0.05, 0.3), _u(rng, 0.85, 1.0))
    img = _gradient(top, bottom, w, h)
    draw = ImageDraw.Draw(img)
    horizon = _u(rng, 0.45, 0.8) * h
    r, sx, sy = min(w, h) * _u(rng, 0.03, 0.1), _u(rng, 0.1, 0.9) * w, _u(rng, 0.15, 0.6) * horizon
    sun = _mix(bottom, (255, 250, 225), _u(rng, 0.4, 0.9))
    draw.ellipse((sx - 1.8 * r, sy - 1.8 * r, sx + 1.8 * r, sy + 1.8 * r), fill=_mix(top, sun, 0.3))
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=sun)
    land = _hsv(_u(rng, 0.2, 0.45), _u(rng, 0.1, 0.4), _u(rng, 0.3, 0.6))
    xs = np.linspace(0, w, 48)
    for layer in range(int(rng.integers(1, 4))):
        y = horizon - h * _u(rng, 0.0, 0.15) + layer * h * 0.05
        for _ in range(3):
            y = y + h * _u(rng, 0.01, 0.06) * np.sin(xs / w * _u(rng, 1, 7) + _u(rng, 0, 6.3))
        colour = _mix(bottom, land, 0.4 + 0.25 * layer)
        draw.polygon([(0, h)] + list(zip(xs.tolist(), y.tolist())) + [(w, h)], fill=colour)
    if _chance(rng, 0.5):  # still water below the horizon, a darker mirror of the sky
        water = _gradient(_mix(bottom, (0, 0, 0), 0.2), _mix(top, (0, 0, 0), 0.35), w, h - int(horizon))
        img.paste(water, (0, int(horizon)))
        for _ in range(int(rng.integers(2, 8))):
            y, x = _u(rng, horizon, h), _u(rng, 0, w)
            draw.line((x, y, x + w * _u(rng, 0.05, 0.3), y), fill=_mix(bottom, top, 0.5), width=1)
    return soften(img, _u(rng, 1.5, 4.0)) if _chance(rng, 0.7) else img


def _neutral(rng, w: int, h: int) -> Image.Image:
    """Everyday plain content: a grey/beige page with text lines, a chart or a grid of boxes."""
    bg = _hsv(_u(rng, 0.08, 0.14), _u(rng, 0.0, 0.15), _u(rng, 0.72, 0.97))
    ink = _hsv(_u(rng, 0.55, 0.7), _u(rng, 0.0, 0.3), _u(rng, 0.15, 0.5))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    m, top = min(w, h), 0.06 * h
    if _chance(rng, 0.15):  # a loud header bar: the look of bait on a document
        bar = _hsv(_pick(rng, BAIT_HUES), _u(rng, 0.6, 1.0), _u(rng, 0.7, 1.0))
        top = _u(rng, 0.12, 0.25) * h
        draw.rectangle((0, 0, w, top), fill=bar)
        title = " ".join(_pick(rng, WORDS) for _ in range(3)).upper()
        f, _ = _fit_text(draw, title, top * 0.6, 0.9 * w)
        draw.text((0.04 * w, top * 0.2), title, font=f, fill=(255, 255, 255))
    x0, y = _u(rng, 0.04, 0.12) * w, top + _u(rng, 0.02, 0.08) * h
    block = _pick(rng, ("text", "text", "chart", "boxes", "photo"))
    if block == "chart":
        _chart(draw, rng, x0, y, w * _u(rng, 0.5, 0.85), (h - y) * _u(rng, 0.5, 0.85), ink)
        y = h  # the chart fills the page
    elif block == "boxes":
        cols, rows = int(rng.integers(2, 5)), int(rng.integers(2, 5))
        bw, bh = (w - 2 * x0) / cols, (h - y - 0.05 * h) / rows
        for i in range(cols):
            for j in range(rows):
                draw.rectangle((x0 + i * bw + 4, y + j * bh + 4, x0 + (i + 1) * bw - 4, y + (j + 1) * bh - 4),
                               outline=ink, width=max(1, m // 200))
        y = h
    elif block == "photo":  # a small landscape pasted into the page, as in an article
        pw, ph = int(w * _u(rng, 0.3, 0.5)), int(h * _u(rng, 0.25, 0.4))
        img.paste(_good(rng, max(pw, 8), max(ph, 8)), (int(x0), int(y)))
        y += ph + 0.03 * h
    _text_lines(draw, rng, x0, y, w, h, ink, m)
    return img


def _text_lines(draw, rng, x0: float, y: float, w: int, h: int, ink, m: int):
    """Paragraph lines down to the bottom: real words, or grey bars standing in for them."""
    px = m * _u(rng, 0.03, 0.06)
    as_bars, f = _chance(rng, 0.4), _font_px(px)
    while y < h - 1.5 * px:
        if as_bars:
            draw.rectangle((x0, y, x0 + (w - 2 * x0) * _u(rng, 0.4, 1.0), y + px * 0.5), fill=ink)
        else:
            n = int(rng.integers(3, 12))
            draw.text((x0, y), " ".join(_pick(rng, WORDS) for _ in range(n)), font=f, fill=ink)
        y += px * _u(rng, 1.3, 2.0) * (2.5 if _chance(rng, 0.1) else 1)  # sometimes a paragraph gap


def _chart(draw, rng, x: float, y: float, cw: float, ch: float, ink):
    """Axes with muted bars or a line series."""
    lw = max(1, int(min(cw, ch) / 150))
    draw.line((x, y, x, y + ch, x + cw, y + ch), fill=ink, width=lw)
    n = int(rng.integers(4, 12))
    vals = rng.uniform(0.1, 1.0, n)
    colour = _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.5), _u(rng, 0.5, 0.8))
    if _chance(rng, 0.6):
        bw = cw / n
        for i, v in enumerate(vals):
            draw.rectangle((x + i * bw + bw * 0.15, y + ch * (1 - v), x + (i + 0.85) * bw, y + ch), fill=colour)
    else:
        pts = [(x + cw * i / (n - 1), y + ch * (1 - v)) for i, v in enumerate(vals)]
        draw.line(pts, fill=colour, width=lw * 2)


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


def render(cls: str, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """An RGB picture of class ``cls`` (BAD, NEUTRAL or GOOD) of ``size`` (width, height)."""
    w, h = int(size[0]), int(size[1])
    draw = {"BAD": _bad, "GOOD": _good, "NEUTRAL": _neutral}.get(cls)
    if draw is None:
        raise ValueError(f"render() draws {CLASSES}, not {cls!r}")
    img = draw(rng, w, h)
    if _chance(rng, 0.25):
        img = soften(img, _u(rng, 1.2, 2.5))
    if _chance(rng, 0.6):
        img = add_noise(img, rng, _u(rng, 1.0, 8.0), colour=_chance(rng, 0.3))
    return img


def encode(img: Image.Image, fmt: str, variant: str | None, rng) -> bytes:
    """The bytes of ``img`` in ``fmt``; ``variant`` picks the awkward cases an ingest must handle."""
    buf = io.BytesIO()
    if variant == "exif6":  # stored turned left; orientation 6 says "turn right to view"
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    elif variant == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=90)
    elif variant == "palette":
        img.quantize(int(rng.integers(16, 129)), method=FAST).save(buf, "PNG", compress_level=1)
    elif variant == "gray16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(grey).save(buf, "PNG", compress_level=1)  # mode I;16
    elif variant == "rgba":  # transparent margins around an opaque middle
        w, h = img.size
        alpha = Image.new("L", img.size, 0)
        alpha.paste(255, (w // 8, h // 8, w - w // 8, h - h // 8))
        rgba = img.convert("RGBA")
        rgba.putalpha(alpha)
        rgba.save(buf, "PNG", compress_level=1)
    elif fmt == "jpeg":
        img.save(buf, "JPEG", quality=int(rng.integers(55, 96)), subsampling=int(rng.integers(0, 3)))
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=int(rng.integers(60, 95)), method=2)
    elif fmt == "gif":
        img.quantize(128, method=FAST).save(buf, "GIF")
    elif fmt == "tiff":
        img.save(buf, "TIFF", compression="tiff_deflate" if rng.random() < 0.5 else None)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, fmt.upper())
    return buf.getvalue()
