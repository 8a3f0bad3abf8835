"""Pixels for the synthetic corpus: one picture per class, with learnable but overlapping cues.

BAD looks like a loud clickbait thumbnail, GOOD like a calm landscape, NEUTRAL like a plain document
or chart. Every choice comes from the ``rng`` handed in, so a picture is a pure function of
(class, rng state, size). A fraction of each class borrows the look of another class on purpose, so
that no single statistic separates the classes and a model has to learn the layout as well.
``encode`` turns a picture into the file formats and odd modes an ingest meets in the wild.

``style`` picks the *look* and leaves the cues' meaning alone: style 0 is the original generator
(its pictures are byte-identical to before styles existed); styles 1 and 2 (see ``LOOKS``) draw the
same cues (BAD: loud colours, a shocked face, shouting text, arrows; GOOD: a calm soft landscape;
NEUTRAL: a plain low-saturation page) with other palettes, background families, face shapes, text
placement and letter shapes, marks, page designs and frames. A model that learned style 0's
incidental features (its hues, its sine hills, its red circles) shows it on another style.
"""
from __future__ import annotations

import colorsys
import dataclasses
import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from flows.core.config import ConfigError

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


def render(cls: str, rng: np.random.Generator, size: tuple[int, int], style: int = 0) -> Image.Image:
    """An RGB picture of class ``cls`` (BAD, NEUTRAL or GOOD) of ``size`` (width, height) drawn in
    ``style`` (0: the original look; see ``STYLES``)."""
    w, h = int(size[0]), int(size[1])
    if cls not in CLASSES:
        raise ValueError(f"render() draws {CLASSES}, not {cls!r}")
    if style != 0:
        return _render_look(cls, rng, w, h, look_of(style))
    draw = {"BAD": _bad, "GOOD": _good, "NEUTRAL": _neutral}[cls]
    img = draw(rng, w, h)
    if _chance(rng, 0.25):
        img = soften(img, _u(rng, 1.2, 2.5))
    if _chance(rng, 0.6):
        img = add_noise(img, rng, _u(rng, 1.0, 8.0), colour=_chance(rng, 0.3))
    return img


# --------------------------------------------------------------------------------------------
# Other looks (style >= 1). Same cues, other incidental features: every choice that style 0 makes
# the same way for every picture (hue families, background shapes, where the face and the text sit,
# the letter shapes, the marks, the page design, the frame) is made differently here, while what
# tells the classes apart (BAD loud and busy, GOOD calm and soft, NEUTRAL plain and low-saturation,
# each class sometimes borrowing another's look) stays.


@dataclasses.dataclass(frozen=True)
class Look:
    """One style's incidental choices; ranges are (lo, hi) fractions unless said otherwise."""
    name: str
    bait_hues: tuple[float, ...]          # BAD's loud hues
    bait_text: tuple[tuple[int, int, int], ...]  # BAD's text colours
    backgrounds: tuple[str, ...]          # BAD background families ("photo": a landscape under the bait)
    face: str                             # "box" (rounded square) or "oval" (tall ellipse)
    face_aspect: tuple[float, float]      # face height / width
    face_zones: tuple[tuple[float, float, float, float], ...]  # (x0, x1, y0, y1) of the face centre
    text_place: str                       # "banner" (bars at top/bottom) or "tilted" (rotated in a bubble)
    text_stretch: tuple[float, float]     # horizontal scale of the letters: a wide or condensed "font"
    marks: str                            # "chevrons" or "stars" (style 0: arrows)
    mark_colours: tuple[tuple[int, int, int], ...]
    highlight: str                        # "box" or "underline" (style 0: red circles)
    sky: str                              # GOOD: "bands" (posterised) or "radial" (a glow round the sun)
    sky_hues: tuple[float, float]         # GOOD's everyday sky hue range (style 0: any hue)
    land: str                             # GOOD: "peaks" (jagged) or "dunes" (broad, rim-lit)
    good_soften: float                    # chance of GOOD's soft focus (style 0: 0.7)
    page: str                             # NEUTRAL: "dark" (dark mode) or "notebook" (ruled paper)
    loud_bar: str                         # NEUTRAL's borrowed bait look: "sidebar" or "footer"
    chart: str                            # NEUTRAL's chart: "pie" or "hbars"
    columns: int                          # NEUTRAL's text columns
    frame: str                            # every class: "card" (inset on a backdrop) or "letterbox"
    finish: str                           # every class: "pixelate" or "tint" (style 0: soften)


LOOKS = {
    1: Look(name="neon", bait_hues=(0.28, 0.33, 0.47, 0.6, 0.72, 0.78),
            bait_text=((0, 255, 255), (255, 0, 255), (255, 255, 255), (200, 255, 0)),
            backgrounds=("rings", "rings", "stripes", "radial", "photo"), face="box", face_aspect=(0.8, 1.25),
            face_zones=((0.12, 0.3, 0.35, 0.7), (0.7, 0.88, 0.35, 0.7)), text_place="banner",
            text_stretch=(1.25, 1.6), marks="chevrons", mark_colours=((0, 255, 255), (255, 0, 255), (200, 255, 0)),
            highlight="box", sky="bands", sky_hues=(0.3, 0.62), land="peaks", good_soften=0.45, page="dark",
            loud_bar="sidebar", chart="pie", columns=2, frame="card", finish="pixelate"),
    2: Look(name="print", bait_hues=(0.07, 0.45, 0.58, 0.95),
            bait_text=((255, 255, 255), (0, 0, 0), (255, 40, 40)),
            backgrounds=("halftone", "halftone", "checker", "zigzag", "photo"), face="oval", face_aspect=(1.3, 1.6),
            face_zones=((0.1, 0.3, 0.75, 0.95), (0.7, 0.9, 0.75, 0.95), (0.4, 0.6, 0.8, 0.95)),
            text_place="tilted", text_stretch=(0.6, 0.8), marks="stars",
            mark_colours=((255, 255, 255), (255, 220, 0), (255, 40, 40)), highlight="underline", sky="radial",
            sky_hues=(0.02, 0.16), land="dunes", good_soften=0.6, page="notebook", loud_bar="footer",
            chart="hbars", columns=1, frame="letterbox", finish="tint"),
}
STYLES = (0, *LOOKS)  # the styles render() draws


def look_of(style: int) -> Look:
    """The Look of ``style`` (>= 1); ConfigError for a style that does not exist."""
    if isinstance(style, bool) or not isinstance(style, (int, np.integer)) or int(style) not in LOOKS:
        raise ConfigError(f"style: {style!r} is not one of {list(STYLES)}")
    return LOOKS[int(style)]


def _render_look(cls: str, rng, w: int, h: int, look: Look) -> Image.Image:
    """A picture of ``cls`` in ``look``: the class drawing, then a frame and a finish for every class
    alike (so neither is a cue)."""
    img = {"BAD": _bad_look, "GOOD": _good_look, "NEUTRAL": _neutral_look}[cls](rng, w, h, look)
    if _chance(rng, 0.5):
        img = _frame(img, rng, look)
    return _finish(img, rng, look)


def _frame(img: Image.Image, rng, look: Look) -> Image.Image:
    """A card inset on a flat low-saturation backdrop, or letterbox bars with the content squeezed
    between them (the elements' aspect changes)."""
    w, h = img.size
    if look.frame == "card":
        k = _u(rng, 0.84, 0.94)
        back = Image.new("RGB", (w, h), _hsv(_u(rng, 0, 1), _u(rng, 0.0, 0.1), _pick(rng, (0.12, 0.5, 0.93))))
        iw, ih = max(1, int(w * k)), max(1, int(h * k))
        back.paste(img.resize((iw, ih), Image.Resampling.BILINEAR), ((w - iw) // 2, (h - ih) // 2))
        return back
    bar = max(1, int(h * _u(rng, 0.08, 0.15)))
    back = Image.new("RGB", (w, h), (0, 0, 0))
    back.paste(img.resize((w, max(1, h - 2 * bar)), Image.Resampling.BILINEAR), (0, bar))
    return back


def _finish(img: Image.Image, rng, look: Look) -> Image.Image:
    """The whole-picture treatment: blocky pixelation or a warm print tint, then noise."""
    if look.finish == "pixelate" and _chance(rng, 0.25):
        w, h = img.size
        k = _u(rng, 2.0, 4.0)
        img = img.resize((max(1, int(w / k)), max(1, int(h / k))), Image.Resampling.BOX).resize(
            (w, h), Image.Resampling.NEAREST)
    elif look.finish == "tint" and _chance(rng, 0.5):
        img = Image.blend(img, Image.new("RGB", img.size, (255, 240, 210)), _u(rng, 0.05, 0.12))
    if _chance(rng, 0.6):
        img = add_noise(img, rng, _u(rng, 1.0, 8.0), colour=_chance(rng, 0.6 if look.finish == "pixelate" else 0.2))
    return img


def _radial(inner, outer, w: int, h: int, cx: float, cy: float, reach: float) -> Image.Image:
    """A radial gradient from ``inner`` at (cx, cy) to ``outer`` at distance ``reach``; computed at
    1/8 resolution and enlarged (smooth anyway, 64x cheaper)."""
    sw, sh = max(2, w // 8), max(2, h // 8)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    d = np.hypot(xx * w / sw - cx, yy * h / sh - cy) / max(reach, 1.0)
    t = np.clip(d, 0, 1)[..., None]
    arr = np.asarray(inner, np.float32) * (1 - t) + np.asarray(outer, np.float32) * t
    return Image.fromarray(arr.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)


def _look_palette(rng, look: Look, muted: bool):
    """Two loud colours from the look's hues (two muted ones for the ambiguous few) and a text colour."""
    s = (0.15, 0.4) if muted else (0.8, 1.0)
    c1 = _hsv(_pick(rng, look.bait_hues) + _u(rng, -0.02, 0.02), _u(rng, *s), _u(rng, 0.75, 1.0))
    c2 = _hsv(_pick(rng, look.bait_hues) + _u(rng, -0.02, 0.02), _u(rng, *s), _u(rng, 0.7, 1.0))
    return c1, c2, _pick(rng, look.bait_text)


def _bait_background(rng, w: int, h: int, kind: str, c1, c2) -> Image.Image:
    """A loud two-colour background: rings, diagonal stripes, a radial glow, halftone dots, a
    checkerboard or zigzag bands."""
    if kind == "radial":
        return _radial(c2, c1, w, h, _u(rng, 0.2, 0.8) * w, _u(rng, 0.2, 0.8) * h, max(w, h) * _u(rng, 0.5, 0.9))
    img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    m = min(w, h)
    if kind == "rings":
        cx, cy, step = _u(rng, 0, 1) * w, _u(rng, 0, 1) * h, m * _u(rng, 0.05, 0.12)
        for k, r in enumerate(np.arange(2.0 * max(w, h), 0, -step)):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c2 if k % 2 else c1)
    elif kind == "stripes":
        band, slope = m * _u(rng, 0.06, 0.15), _u(rng, -1.5, 1.5)
        for x in np.arange(-abs(slope) * h - band, w + abs(slope) * h, 2 * band):
            draw.polygon([(x, 0), (x + band, 0), (x + band + slope * h, h), (x + slope * h, h)], fill=c2)
    elif kind == "halftone":
        step = m * _u(rng, 0.04, 0.08)
        for j, y in enumerate(np.arange(0, h + step, step)):
            for x in np.arange((j % 2) * step / 2, w + step, step):
                r = step * 0.48 * (0.3 + 0.7 * x / w)  # dots grow across the picture, as in print
                draw.ellipse((x - r, y - r, x + r, y + r), fill=c2)
    elif kind == "checker":
        step = m * _u(rng, 0.08, 0.2)
        for i, x in enumerate(np.arange(0, w, step)):
            for j, y in enumerate(np.arange(0, h, step)):
                if (i + j) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=c2)
    elif kind == "zigzag":
        band, tooth = m * _u(rng, 0.08, 0.16), m * _u(rng, 0.04, 0.1)
        xs = np.arange(0, w + tooth, tooth)
        for y in np.arange(0, h + band, 2 * band):
            top = [(float(x), float(y + (tooth if k % 2 else 0))) for k, x in enumerate(xs)]
            draw.polygon(top + [(float(x), float(py + band)) for x, py in reversed(top)], fill=c2)
    return img


def _face_look(draw, rng, w: int, h: int, lw: int, look: Look) -> None:
    """The shocked face in the look's shape and place: wide white eyes and an open mouth."""
    x0, x1, y0, y1 = _pick(rng, look.face_zones)
    fw = min(w, h) * _u(rng, 0.13, 0.26)
    fh = fw * _u(rng, *look.face_aspect)
    fx, fy = _u(rng, x0, x1) * w, _u(rng, y0, y1) * h
    skin = _hsv(_u(rng, 0.04, 0.09), _u(rng, 0.3, 0.6), _u(rng, 0.55, 0.95))
    box = (fx - fw, fy - fh, fx + fw, fy + fh)
    if look.face == "box":
        draw.rounded_rectangle(box, radius=fw * 0.4, fill=skin, outline=(0, 0, 0), width=lw)
    else:
        draw.ellipse(box, fill=skin, outline=(0, 0, 0), width=lw)
    ew, eh = fw * 0.2, fw * (0.2 if look.face == "box" else 0.3)
    for ex in (-0.4, 0.4):
        eye = (fx + ex * fw - ew, fy - 0.3 * fh - eh, fx + ex * fw + ew, fy - 0.3 * fh + eh)
        if look.face == "box":
            draw.rounded_rectangle(eye, radius=ew * 0.3, fill=(255, 255, 255), outline=(0, 0, 0), width=max(1, lw // 2))
        else:
            draw.ellipse(eye, fill=(255, 255, 255), outline=(0, 0, 0), width=max(1, lw // 2))
        p = ew * 0.35
        draw.ellipse((fx + ex * fw - p, fy - 0.3 * fh - p, fx + ex * fw + p, fy - 0.3 * fh + p), fill=(0, 0, 0))
    mw, mh = fw * _u(rng, 0.25, 0.4), fh * _u(rng, 0.2, 0.35)
    mouth = (fx - mw, fy + 0.35 * fh - mh, fx + mw, fy + 0.35 * fh + mh)
    if look.face == "box":
        draw.rectangle(mouth, fill=(40, 0, 0))
    else:
        draw.ellipse(mouth, fill=(40, 0, 0))


def _chevrons(draw, rng, x: float, y: float, size: float, angle: float, fill) -> None:
    """Two or three stacked chevrons (">>") pointing along ``angle``: this look's arrows."""
    c, s = np.cos(angle), np.sin(angle)
    for k in range(int(rng.integers(2, 4))):
        off = k * size * 0.55
        pts = np.array([(-size * 0.5, -size * 0.5), (0, 0), (-size * 0.5, size * 0.5),
                        (-size * 0.8, size * 0.5), (-size * 0.3, 0), (-size * 0.8, -size * 0.5)]) + (off, 0)
        rot = pts @ np.array([[c, s], [-s, c]]) + (x, y)
        draw.polygon([tuple(p) for p in rot], fill=fill, outline=(0, 0, 0))


def _star(draw, x: float, y: float, r: float, points: int, fill, outline, width: int) -> None:
    """A comic-book burst: a star polygon with ``points`` spikes."""
    a = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    rr = np.where(np.arange(2 * points) % 2, r * 0.5, r)
    draw.polygon(list(zip((x + rr * np.cos(a)).tolist(), (y + rr * np.sin(a)).tolist())), fill=fill,
                 outline=outline, width=width)


def _marks(draw, rng, w: int, h: int, lw: int, look: Look) -> None:
    """The attention marks: highlights round "the thing", then chevrons or bursts."""
    m = min(w, h)
    for _ in range(int(rng.integers(0, 3))):
        x, y, r = _u(rng, 0.1, 0.9) * w, _u(rng, 0.1, 0.9) * h, m * _u(rng, 0.08, 0.22)
        colour = _pick(rng, look.mark_colours)
        if look.highlight == "box":
            draw.rectangle((x - r, y - r * _u(rng, 0.5, 1.0), x + r, y + r), outline=colour, width=lw * 2)
        else:
            draw.line((x - r, y + r * 0.3, x + r, y + r * 0.3 + _u(rng, -0.2, 0.2) * r), fill=colour, width=lw * 3)
    for _ in range(int(rng.integers(0, 4))):
        x, y, size = _u(rng, 0.1, 0.9) * w, _u(rng, 0.1, 0.9) * h, m * _u(rng, 0.1, 0.2)
        if look.marks == "chevrons":
            _chevrons(draw, rng, x, y, size, _u(rng, 0, 2 * np.pi), _pick(rng, look.mark_colours))
        else:
            _star(draw, x, y, size, int(rng.integers(7, 14)), _pick(rng, look.mark_colours), (0, 0, 0), lw)


def _text_layer(text: str, px: float, max_w: float, stretch: float, fill, stroke: int) -> Image.Image:
    """``text`` as an RGBA layer whose letters are stretched by ``stretch`` (a wide or condensed
    face from the one bundled font), no wider than ``max_w``."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f, _ = _fit_text(probe, text, px, max_w / stretch, stroke)
    l, t, r, b = probe.textbbox((0, 0), text, font=f, stroke_width=stroke)
    layer = Image.new("RGBA", (max(1, r - l + 2), max(1, b - t + 2)), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((1 - l, 1 - t), text, font=f, fill=fill, stroke_width=stroke,
                               stroke_fill=(0, 0, 0) if fill != (0, 0, 0) else (255, 255, 255))
    return layer.resize((max(1, int(layer.width * stretch)), layer.height), Image.Resampling.BILINEAR)


def _shout(img: Image.Image, rng, w: int, h: int, look: Look, fill, band_colour) -> None:
    """BAD's shouting text: in bars across the top and bottom, or tilted in a white bubble."""
    m = min(w, h)
    for k in range(int(rng.integers(1, 3))):
        stroke = max(1, int(m * _u(rng, 0.008, 0.02)))
        layer = _text_layer(_pick(rng, BAIT), m * _u(rng, 0.1, 0.2), 0.9 * w, _u(rng, *look.text_stretch),
                            fill, stroke)
        draw = ImageDraw.Draw(img)
        if look.text_place == "banner":
            bh = int(layer.height * 1.5)
            y = 0 if k == 0 else h - bh
            draw.rectangle((0, y, w, y + bh), fill=band_colour)
            img.paste(layer, ((w - layer.width) // 2, y + (bh - layer.height) // 2), layer)
        else:
            layer = layer.rotate(_u(rng, -15, 15), expand=True, resample=Image.Resampling.BILINEAR)
            x, y = _u(rng, 0, max(1, w - layer.width)), _u(rng, 0, max(1, h * 0.6 - layer.height))
            pad = 0.15 * layer.height
            draw.ellipse((x - pad, y - pad, x + layer.width + pad, y + layer.height + pad), fill=(255, 255, 255),
                         outline=(0, 0, 0), width=max(1, stroke))
            img.paste(layer, (int(x), int(y)), layer)


def _bad_look(rng, w: int, h: int, look: Look) -> Image.Image:
    """Clickbait in ``look``: loud background family, shocked face, shouting text, marks."""
    c1, c2, text_fill = _look_palette(rng, look, muted=_chance(rng, 0.15))
    kind = _pick(rng, look.backgrounds)
    img = _good_look(rng, w, h, look) if kind == "photo" else _bait_background(rng, w, h, kind, c1, c2)
    draw = ImageDraw.Draw(img)
    lw = max(2, int(min(w, h) * _u(rng, 0.01, 0.03)))
    if _chance(rng, 0.6):
        _face_look(draw, rng, w, h, lw, look)
    _marks(draw, rng, w, h, lw, look)
    _shout(img, rng, w, h, look, text_fill, _mix(c2, (0, 0, 0), _u(rng, 0.3, 0.7)))
    return img


def _sky_look(rng, look: Look) -> tuple[tuple, tuple]:
    """(top, bottom) sky colours: a vivid sunset (the 12% as loud as bait), night, or a calm day
    in the look's hue family."""
    if _chance(rng, 0.12):
        return _hsv(_u(rng, 0.75, 0.95), _u(rng, 0.5, 0.9), _u(rng, 0.5, 0.9)), \
            _hsv(_u(rng, 0.0, 0.1), _u(rng, 0.6, 0.95), _u(rng, 0.85, 1.0))
    hue = _u(rng, *look.sky_hues)
    if _chance(rng, 0.2):
        return _hsv(hue, _u(rng, 0.2, 0.5), _u(rng, 0.08, 0.25)), _hsv(hue, _u(rng, 0.1, 0.4), _u(rng, 0.25, 0.45))
    return _hsv(hue, _u(rng, 0.1, 0.4), _u(rng, 0.75, 1.0)), \
        _hsv(hue + _u(rng, -0.08, 0.08), _u(rng, 0.05, 0.3), _u(rng, 0.85, 1.0))


def _land_look(draw, rng, w: int, h: int, horizon: float, top, bottom, look: Look) -> None:
    """Ground layers: jagged peaks with a few trees, or broad dunes with a light rim."""
    land = _hsv(_u(rng, 0.08, 0.4), _u(rng, 0.1, 0.4), _u(rng, 0.3, 0.6))
    for layer in range(int(rng.integers(1, 4))):
        base = horizon - h * _u(rng, 0.0, 0.12) + layer * h * 0.06
        colour = _mix(bottom, land, 0.4 + 0.25 * layer)
        if look.land == "peaks":
            xs = np.sort(np.r_[0, rng.uniform(0, w, int(rng.integers(4, 10))), w])
            ys = base - h * rng.uniform(0.0, 0.18, len(xs)) * (np.arange(len(xs)) % 2)
            ridge = list(zip(xs.tolist(), ys.tolist()))
            draw.polygon([(0, h)] + ridge + [(w, h)], fill=colour)
            for _ in range(int(rng.integers(0, 6))):  # small dark firs on the nearest ridge
                tx, th = _u(rng, 0, w), h * _u(rng, 0.03, 0.07)
                ty = float(np.interp(tx, xs, ys)) + th * 0.3
                draw.polygon([(tx, ty - th), (tx - th * 0.35, ty), (tx + th * 0.35, ty)], fill=_mix(colour, (0, 0, 0), 0.4))
        else:
            xs = np.linspace(0, w, 32)
            ys = base + h * _u(rng, 0.03, 0.08) * np.sin(xs / w * _u(rng, 0.8, 2.5) * np.pi + _u(rng, 0, 6.3))
            ridge = list(zip(xs.tolist(), ys.tolist()))
            draw.polygon([(0, h)] + ridge + [(w, h)], fill=colour)
            draw.line(ridge, fill=_mix(colour, top, 0.5), width=max(1, h // 120))


def _good_look(rng, w: int, h: int, look: Look) -> Image.Image:
    """A calm landscape in ``look``: posterised or radial sky, a ringed or haloed sun, peaks or dunes."""
    top, bottom = _sky_look(rng, look)
    horizon = _u(rng, 0.45, 0.8) * h
    r, sx, sy = min(w, h) * _u(rng, 0.04, 0.12), _u(rng, 0.1, 0.9) * w, _u(rng, 0.15, 0.6) * horizon
    sun = _mix(bottom, (255, 250, 225), _u(rng, 0.4, 0.9))
    if look.sky == "bands":
        n = int(rng.integers(4, 9))
        img = _gradient(top, bottom, w, n).resize((w, h), Image.Resampling.NEAREST)  # n flat bands
        draw = ImageDraw.Draw(img)
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), outline=sun, width=max(1, int(r * 0.25)))
    else:
        img = _radial(_mix(bottom, sun, 0.5), top, w, h, sx, sy, max(w, h) * _u(rng, 0.6, 1.1))
        draw = ImageDraw.Draw(img)
        for k in (2.6, 1.9):
            draw.ellipse((sx - k * r, sy - k * r, sx + k * r, sy + k * r), fill=_mix(top, sun, 0.25 * (3 - k)))
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=sun)
    _land_look(draw, rng, w, h, horizon, top, bottom, look)
    return soften(img, _u(rng, 1.5, 4.0)) if _chance(rng, look.good_soften) else img


def _page_colours(rng, look: Look) -> tuple[tuple, tuple]:
    """(background, ink) of a plain page: dark mode, or cream ruled paper with blue-black ink."""
    if look.page == "dark":
        return _hsv(_u(rng, 0.55, 0.7), _u(rng, 0.0, 0.12), _u(rng, 0.1, 0.25)), \
            _hsv(_u(rng, 0.0, 1.0), _u(rng, 0.0, 0.12), _u(rng, 0.7, 0.92))
    return _hsv(_u(rng, 0.1, 0.16), _u(rng, 0.02, 0.1), _u(rng, 0.92, 1.0)), \
        _hsv(_u(rng, 0.6, 0.68), _u(rng, 0.2, 0.45), _u(rng, 0.2, 0.45))


def _neutral_look(rng, w: int, h: int, look: Look) -> Image.Image:
    """Everyday plain content in ``look``: a dark-mode page in columns, or ruled notebook paper,
    with text, a chart, a table or a small photo."""
    bg, ink = _page_colours(rng, look)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    m, x0, y, right = min(w, h), _u(rng, 0.05, 0.1) * w, _u(rng, 0.05, 0.1) * h, float(w)
    if look.page == "notebook":  # faint blue rules and the red margin line
        for ry in np.arange(y, h, m * _u(rng, 0.05, 0.08)):
            draw.line((0, ry, w, ry), fill=_mix(bg, (90, 140, 230), 0.35), width=1)
        draw.line((x0 * 0.8, 0, x0 * 0.8, h), fill=_mix(bg, (230, 60, 60), 0.6), width=max(1, m // 250))
    if _chance(rng, 0.15):  # the borrowed bait look: a loud sidebar or footer
        bar = _hsv(_pick(rng, look.bait_hues), _u(rng, 0.6, 1.0), _u(rng, 0.7, 1.0))
        if look.loud_bar == "sidebar":
            bw = _u(rng, 0.15, 0.28) * w
            draw.rectangle((0, 0, bw, h), fill=bar)
            x0 = bw + 0.04 * w
        else:
            draw.rectangle((0, h * _u(rng, 0.78, 0.88), w, h), fill=bar)
    block = _pick(rng, ("text", "text", "chart", "table", "photo"))
    if block == "chart":
        _chart_look(draw, rng, x0, y, (w - x0) * _u(rng, 0.5, 0.85), (h - y) * _u(rng, 0.5, 0.85), ink, bg, look)
        return img
    if block == "table":
        _table(draw, rng, x0, y, w - x0 - 0.05 * w, (h - y) * _u(rng, 0.5, 0.9), ink, m)
        return img
    if block == "photo":  # a small landscape of the same look, as in an article
        pw, ph = int(w * _u(rng, 0.3, 0.45)), int(h * _u(rng, 0.25, 0.4))
        img.paste(_good_look(rng, max(pw, 8), max(ph, 8), look), (int(w - pw - x0 * 0.5), int(y)))
        right = w - pw - x0  # the text runs beside the photo
    cols = look.columns if right == w else 1
    gap = 0.04 * w
    cw = (right - x0 - 0.05 * w - gap * (cols - 1)) / cols
    for c in range(cols):
        _column_lines(draw, rng, x0 + c * (cw + gap), y, cw, h, ink, m)
    return img


def _column_lines(draw, rng, x: float, y: float, cw: float, h: int, ink, m: int) -> None:
    """One column of paragraph lines, ``cw`` wide, down to the bottom: words that fit the column,
    or bars standing in for them."""
    px = m * _u(rng, 0.03, 0.05)
    as_bars, f = _chance(rng, 0.4), _font_px(px)
    while y < h - 1.5 * px:
        if as_bars:
            draw.rectangle((x, y, x + cw * _u(rng, 0.4, 1.0), y + px * 0.5), fill=ink)
        else:
            words = [_pick(rng, WORDS) for _ in range(int(rng.integers(3, 12)))]
            while len(words) > 1 and draw.textlength(" ".join(words), font=f) > cw:
                words.pop()
            draw.text((x, y), " ".join(words), font=f, fill=ink)
        y += px * _u(rng, 1.3, 2.0) * (2.5 if _chance(rng, 0.1) else 1)


def _chart_look(draw, rng, x: float, y: float, cw: float, ch: float, ink, bg, look: Look) -> None:
    """A muted pie chart with a legend, or horizontal bars on a baseline."""
    n = int(rng.integers(3, 8))
    vals = rng.uniform(0.1, 1.0, n)
    colours = [_mix(bg, _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.5), _u(rng, 0.5, 0.8)), 0.7) for _ in range(n)]
    if look.chart == "pie":
        r = min(cw, ch) * 0.45
        cx, cy, a0 = x + r, y + r, 0.0
        for v, colour in zip(vals / vals.sum() * 360, colours):
            draw.pieslice((cx - r, cy - r, cx + r, cy + r), a0, a0 + v, fill=colour, outline=ink)
            a0 += v
        for i, colour in enumerate(colours):  # the legend: swatches and bars standing in for names
            ly = y + i * r * 0.3
            draw.rectangle((cx + r * 1.3, ly, cx + r * 1.45, ly + r * 0.15), fill=colour)
            draw.rectangle((cx + r * 1.55, ly + r * 0.05, cx + r * (1.9 + 0.6 * vals[i]), ly + r * 0.1), fill=ink)
        return
    bh = ch / n
    draw.line((x, y, x, y + ch), fill=ink, width=max(1, int(min(cw, ch) / 150)))
    for i, (v, colour) in enumerate(zip(vals, colours)):
        draw.rectangle((x, y + i * bh + bh * 0.2, x + cw * v, y + (i + 0.8) * bh), fill=colour)


def _table(draw, rng, x: float, y: float, tw: float, th: float, ink, m: int) -> None:
    """A ruled table with short words in its cells."""
    cols, rows = int(rng.integers(2, 6)), int(rng.integers(3, 9))
    cw, rh = tw / cols, th / rows
    f = _font_px(min(rh * 0.6, m * 0.05))
    for j in range(rows + 1):
        draw.line((x, y + j * rh, x + tw, y + j * rh), fill=ink, width=2 if j in (0, 1, rows) else 1)
    for j in range(rows):
        for i in range(cols):
            draw.text((x + i * cw + 4, y + j * rh + rh * 0.2), _pick(rng, WORDS), font=f, fill=ink)


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
