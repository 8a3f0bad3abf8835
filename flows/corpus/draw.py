"""Pixels for the synthetic corpus: one picture per class, with learnable but overlapping cues.

BAD looks like a loud clickbait thumbnail, GOOD like a calm landscape, NEUTRAL like a plain document
or chart. Every choice comes from the ``rng`` handed in, so a picture is a pure function of
(class, rng state, size). A fraction of each class borrows the look of another class on purpose, so
that no single statistic separates the classes and a model has to learn the layout as well.
``encode`` turns a picture into the file formats and odd modes an ingest meets in the wild.

``style`` picks the *look* and leaves the cues' meaning alone: style 0 is the original generator
(its pictures are byte-identical to before styles existed); styles 1 and 2 (``flows.corpus.looks``) draw the
same cues (BAD: loud colours, a shocked face, shouting text, arrows; GOOD: a calm soft landscape;
NEUTRAL: a plain low-saturation page) with other palettes, background families, face shapes, text
placement and letter shapes, marks, page designs and frames. A model that learned style 0's
incidental features (its hues, its sine hills, its red circles) shows it on another style.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from .looks import look_of, render_look
from .paint import BAIT, WORDS, add_noise, chance, fit_text, font_px, gradient, hsv, mix, pick, soften, uniform

CLASSES = ("BAD", "NEUTRAL", "GOOD")  # the classes render() knows how to draw
FAST = Image.Quantize.FASTOCTREE  # median cut (the default) costs ~250 ms on a 720p frame
BAIT_HUES = (0.0, 0.02, 0.12, 0.15, 0.83, 0.9, 0.55)  # red, orange, yellow, magenta, cyan


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
    c1 = hsv(pick(rng, BAIT_HUES) + uniform(rng, -0.02, 0.02), uniform(rng, *s), uniform(rng, 0.8, 1.0))
    c2 = hsv(pick(rng, BAIT_HUES) + uniform(rng, -0.02, 0.02), uniform(rng, *s), uniform(rng, 0.75, 1.0))
    text = pick(rng, ((255, 255, 0), (255, 255, 255), (255, 230, 0), (0, 0, 0)))
    return c1, c2, text


def _bad(rng, w: int, h: int) -> Image.Image:
    """Clickbait: loud background, shocked face, giant outlined text, arrows and circles."""
    m = min(w, h)
    c1, c2, text_fill = _bait_palette(rng, muted=chance(rng, 0.15))
    style = pick(rng, ("burst", "burst", "split", "solid", "photo"))
    if style == "photo":  # a landscape under the bait: colour alone must not give it away
        img = _good(rng, w, h)
    else:
        img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    cx, cy = uniform(rng, 0.2, 0.8) * w, uniform(rng, 0.2, 0.8) * h
    if style == "burst":
        n, r = int(rng.integers(10, 24)), 2.0 * max(w, h)
        for k in range(n):
            a0, a1 = 2 * np.pi * k / n, 2 * np.pi * (k + 0.5) / n
            draw.polygon([(cx, cy), (cx + r * np.cos(a0), cy + r * np.sin(a0)),
                          (cx + r * np.cos(a1), cy + r * np.sin(a1))], fill=c2)
    elif style == "split":
        y0, y1 = uniform(rng, 0, h), uniform(rng, 0, h)
        draw.polygon([(0, y0), (w, y1), (w, h), (0, h)], fill=c2)
    lw = max(2, int(m * uniform(rng, 0.01, 0.03)))
    if chance(rng, 0.6):  # a shocked face: skin disc, wide eyes, open mouth
        fr, fx, fy = m * uniform(rng, 0.15, 0.3), uniform(rng, 0.15, 0.85) * w, uniform(rng, 0.35, 0.8) * h
        skin = hsv(uniform(rng, 0.04, 0.09), uniform(rng, 0.3, 0.6), uniform(rng, 0.55, 0.95))
        draw.ellipse((fx - fr, fy - fr, fx + fr, fy + fr), fill=skin, outline=(0, 0, 0), width=lw)
        for ex in (-0.35, 0.35):
            e = fr * 0.18
            draw.ellipse((fx + ex * fr - e, fy - 0.25 * fr - e, fx + ex * fr + e, fy - 0.25 * fr + e),
                         fill=(255, 255, 255), outline=(0, 0, 0), width=max(1, lw // 2))
        draw.ellipse((fx - 0.2 * fr, fy + 0.2 * fr, fx + 0.2 * fr, fy + 0.6 * fr), fill=(40, 0, 0))
    for _ in range(int(rng.integers(0, 3))):  # the red circle around "the thing"
        r = m * uniform(rng, 0.08, 0.22)
        x, y = uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.1, 0.9) * h
        draw.ellipse((x - r, y - r * uniform(rng, 0.6, 1.2), x + r, y + r), outline=(255, 0, 0), width=lw * 2)
    for _ in range(int(rng.integers(0, 4))):
        _arrow(draw, uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.1, 0.9) * h, m * uniform(rng, 0.2, 0.45),
               uniform(rng, 0, 2 * np.pi), pick(rng, ((255, 0, 0), (255, 255, 0), (0, 255, 0))), (0, 0, 0), lw)
    for _ in range(int(rng.integers(1, 3))):
        text = pick(rng, BAIT)
        stroke = max(1, int(m * uniform(rng, 0.008, 0.02)))
        f, (tw, th) = fit_text(draw, text, m * uniform(rng, 0.1, 0.22), 0.95 * w, stroke)
        x, y = uniform(rng, 0, max(1, w - tw)), uniform(rng, 0, max(1, h - th))
        draw.text((x, y), text, font=f, fill=text_fill, stroke_width=stroke,
                  stroke_fill=(0, 0, 0) if text_fill != (0, 0, 0) else (255, 255, 255))
    return img


def _good(rng, w: int, h: int) -> Image.Image:
    """A calm landscape: soft sky gradient, sun or moon, layered hills, maybe still water."""
    hue = uniform(rng, 0, 1)
    if chance(rng, 0.12):  # a vivid sunset: as saturated as the bait, on purpose
        top, bottom = hsv(uniform(rng, 0.75, 0.95), uniform(rng, 0.5, 0.9), uniform(rng, 0.5, 0.9)), \
            hsv(uniform(rng, 0.0, 0.1), uniform(rng, 0.6, 0.95), uniform(rng, 0.85, 1.0))
    elif chance(rng, 0.2):  # night
        top, bottom = hsv(hue, uniform(rng, 0.2, 0.5), uniform(rng, 0.08, 0.25)), hsv(hue, uniform(rng, 0.1, 0.4), uniform(rng, 0.25, 0.45))
    else:  # pastel day or dawn
        top = hsv(hue, uniform(rng, 0.1, 0.4), uniform(rng, 0.75, 1.0))
        bottom = hsv(hue + uniform(rng, -0.15, 0.15), uniform(rng, 0.05, 0.3), uniform(rng, 0.85, 1.0))
    img = gradient(top, bottom, w, h)
    draw = ImageDraw.Draw(img)
    horizon = uniform(rng, 0.45, 0.8) * h
    r, sx, sy = min(w, h) * uniform(rng, 0.03, 0.1), uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.15, 0.6) * horizon
    sun = mix(bottom, (255, 250, 225), uniform(rng, 0.4, 0.9))
    draw.ellipse((sx - 1.8 * r, sy - 1.8 * r, sx + 1.8 * r, sy + 1.8 * r), fill=mix(top, sun, 0.3))
    draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=sun)
    land = hsv(uniform(rng, 0.2, 0.45), uniform(rng, 0.1, 0.4), uniform(rng, 0.3, 0.6))
    xs = np.linspace(0, w, 48)
    for layer in range(int(rng.integers(1, 4))):
        y = horizon - h * uniform(rng, 0.0, 0.15) + layer * h * 0.05
        for _ in range(3):
            y = y + h * uniform(rng, 0.01, 0.06) * np.sin(xs / w * uniform(rng, 1, 7) + uniform(rng, 0, 6.3))
        colour = mix(bottom, land, 0.4 + 0.25 * layer)
        draw.polygon([(0, h)] + list(zip(xs.tolist(), y.tolist())) + [(w, h)], fill=colour)
    if chance(rng, 0.5):  # still water below the horizon, a darker mirror of the sky
        water = gradient(mix(bottom, (0, 0, 0), 0.2), mix(top, (0, 0, 0), 0.35), w, h - int(horizon))
        img.paste(water, (0, int(horizon)))
        for _ in range(int(rng.integers(2, 8))):
            y, x = uniform(rng, horizon, h), uniform(rng, 0, w)
            draw.line((x, y, x + w * uniform(rng, 0.05, 0.3), y), fill=mix(bottom, top, 0.5), width=1)
    return soften(img, uniform(rng, 1.5, 4.0)) if chance(rng, 0.7) else img


def _neutral(rng, w: int, h: int) -> Image.Image:
    """Everyday plain content: a grey/beige page with text lines, a chart or a grid of boxes."""
    bg = hsv(uniform(rng, 0.08, 0.14), uniform(rng, 0.0, 0.15), uniform(rng, 0.72, 0.97))
    ink = hsv(uniform(rng, 0.55, 0.7), uniform(rng, 0.0, 0.3), uniform(rng, 0.15, 0.5))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    m, top = min(w, h), 0.06 * h
    if chance(rng, 0.15):  # a loud header bar: the look of bait on a document
        bar = hsv(pick(rng, BAIT_HUES), uniform(rng, 0.6, 1.0), uniform(rng, 0.7, 1.0))
        top = uniform(rng, 0.12, 0.25) * h
        draw.rectangle((0, 0, w, top), fill=bar)
        title = " ".join(pick(rng, WORDS) for _ in range(3)).upper()
        f, _ = fit_text(draw, title, top * 0.6, 0.9 * w)
        draw.text((0.04 * w, top * 0.2), title, font=f, fill=(255, 255, 255))
    x0, y = uniform(rng, 0.04, 0.12) * w, top + uniform(rng, 0.02, 0.08) * h
    block = pick(rng, ("text", "text", "chart", "boxes", "photo"))
    if block == "chart":
        _chart(draw, rng, x0, y, w * uniform(rng, 0.5, 0.85), (h - y) * uniform(rng, 0.5, 0.85), ink)
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
        pw, ph = int(w * uniform(rng, 0.3, 0.5)), int(h * uniform(rng, 0.25, 0.4))
        img.paste(_good(rng, max(pw, 8), max(ph, 8)), (int(x0), int(y)))
        y += ph + 0.03 * h
    _text_lines(draw, rng, x0, y, w, h, ink, m)
    return img


def _text_lines(draw, rng, x0: float, y: float, w: int, h: int, ink, m: int):
    """Paragraph lines down to the bottom: real words, or grey bars standing in for them."""
    px = m * uniform(rng, 0.03, 0.06)
    as_bars, f = chance(rng, 0.4), font_px(px)
    while y < h - 1.5 * px:
        if as_bars:
            draw.rectangle((x0, y, x0 + (w - 2 * x0) * uniform(rng, 0.4, 1.0), y + px * 0.5), fill=ink)
        else:
            n = int(rng.integers(3, 12))
            draw.text((x0, y), " ".join(pick(rng, WORDS) for _ in range(n)), font=f, fill=ink)
        y += px * uniform(rng, 1.3, 2.0) * (2.5 if chance(rng, 0.1) else 1)  # sometimes a paragraph gap


def _chart(draw, rng, x: float, y: float, cw: float, ch: float, ink):
    """Axes with muted bars or a line series."""
    lw = max(1, int(min(cw, ch) / 150))
    draw.line((x, y, x, y + ch, x + cw, y + ch), fill=ink, width=lw)
    n = int(rng.integers(4, 12))
    vals = rng.uniform(0.1, 1.0, n)
    colour = hsv(uniform(rng, 0, 1), uniform(rng, 0.2, 0.5), uniform(rng, 0.5, 0.8))
    if chance(rng, 0.6):
        bw = cw / n
        for i, v in enumerate(vals):
            draw.rectangle((x + i * bw + bw * 0.15, y + ch * (1 - v), x + (i + 0.85) * bw, y + ch), fill=colour)
    else:
        pts = [(x + cw * i / (n - 1), y + ch * (1 - v)) for i, v in enumerate(vals)]
        draw.line(pts, fill=colour, width=lw * 2)


def render(cls: str, rng: np.random.Generator, size: tuple[int, int], style: int = 0) -> Image.Image:
    """An RGB picture of class ``cls`` (BAD, NEUTRAL or GOOD) of ``size`` (width, height) drawn in
    ``style`` (0: the original look; see ``STYLES``)."""
    w, h = int(size[0]), int(size[1])
    if cls not in CLASSES:
        raise ValueError(f"render() draws {CLASSES}, not {cls!r}")
    if style != 0:
        return render_look(cls, rng, w, h, look_of(style))
    draw = {"BAD": _bad, "GOOD": _good, "NEUTRAL": _neutral}[cls]
    img = draw(rng, w, h)
    if chance(rng, 0.25):
        img = soften(img, uniform(rng, 1.2, 2.5))
    if chance(rng, 0.6):
        img = add_noise(img, rng, uniform(rng, 1.0, 8.0), colour=chance(rng, 0.3))
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
