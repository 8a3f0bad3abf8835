"""The corpus' other looks (style >= 1). Same cues, other incidental features: every choice that
style 0 (``flows.corpus.draw``) makes the same way for every picture (hue families, background
shapes, where the face and the text sit, the letter shapes, the marks, the page design, the frame)
is made differently here, while what tells the classes apart (BAD loud and busy, GOOD calm and
soft, NEUTRAL plain and low-saturation, each class sometimes borrowing another's look) stays."""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from flows.core.config import ConfigError

from .paint import BAIT, WORDS, add_noise, chance, fit_text, font_px, gradient, hsv, mix, pick, soften, uniform

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


def render_look(cls: str, rng, w: int, h: int, look: Look) -> Image.Image:
    """A picture of ``cls`` in ``look``: the class drawing, then a frame and a finish for every class
    alike (so neither is a cue)."""
    img = {"BAD": _bad_look, "GOOD": _good_look, "NEUTRAL": _neutral_look}[cls](rng, w, h, look)
    if chance(rng, 0.5):
        img = _frame(img, rng, look)
    return _finish(img, rng, look)


def _frame(img: Image.Image, rng, look: Look) -> Image.Image:
    """A card inset on a flat low-saturation backdrop, or letterbox bars with the content squeezed
    between them (the elements' aspect changes)."""
    w, h = img.size
    if look.frame == "card":
        k = uniform(rng, 0.84, 0.94)
        back = Image.new("RGB", (w, h), hsv(uniform(rng, 0, 1), uniform(rng, 0.0, 0.1), pick(rng, (0.12, 0.5, 0.93))))
        iw, ih = max(1, int(w * k)), max(1, int(h * k))
        back.paste(img.resize((iw, ih), Image.Resampling.BILINEAR), ((w - iw) // 2, (h - ih) // 2))
        return back
    bar = max(1, int(h * uniform(rng, 0.08, 0.15)))
    back = Image.new("RGB", (w, h), (0, 0, 0))
    back.paste(img.resize((w, max(1, h - 2 * bar)), Image.Resampling.BILINEAR), (0, bar))
    return back


def _finish(img: Image.Image, rng, look: Look) -> Image.Image:
    """The whole-picture treatment: blocky pixelation or a warm print tint, then noise."""
    if look.finish == "pixelate" and chance(rng, 0.25):
        w, h = img.size
        k = uniform(rng, 2.0, 4.0)
        img = img.resize((max(1, int(w / k)), max(1, int(h / k))), Image.Resampling.BOX).resize(
            (w, h), Image.Resampling.NEAREST)
    elif look.finish == "tint" and chance(rng, 0.5):
        img = Image.blend(img, Image.new("RGB", img.size, (255, 240, 210)), uniform(rng, 0.05, 0.12))
    if chance(rng, 0.6):
        img = add_noise(img, rng, uniform(rng, 1.0, 8.0), colour=chance(rng, 0.6 if look.finish == "pixelate" else 0.2))
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
    c1 = hsv(pick(rng, look.bait_hues) + uniform(rng, -0.02, 0.02), uniform(rng, *s), uniform(rng, 0.75, 1.0))
    c2 = hsv(pick(rng, look.bait_hues) + uniform(rng, -0.02, 0.02), uniform(rng, *s), uniform(rng, 0.7, 1.0))
    return c1, c2, pick(rng, look.bait_text)


def _bait_background(rng, w: int, h: int, kind: str, c1, c2) -> Image.Image:
    """A loud two-colour background: rings, diagonal stripes, a radial glow, halftone dots, a
    checkerboard or zigzag bands."""
    if kind == "radial":
        return _radial(c2, c1, w, h, uniform(rng, 0.2, 0.8) * w, uniform(rng, 0.2, 0.8) * h, max(w, h) * uniform(rng, 0.5, 0.9))
    img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    m = min(w, h)
    if kind == "rings":
        cx, cy, step = uniform(rng, 0, 1) * w, uniform(rng, 0, 1) * h, m * uniform(rng, 0.05, 0.12)
        for k, r in enumerate(np.arange(2.0 * max(w, h), 0, -step)):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=c2 if k % 2 else c1)
    elif kind == "stripes":
        band, slope = m * uniform(rng, 0.06, 0.15), uniform(rng, -1.5, 1.5)
        for x in np.arange(-abs(slope) * h - band, w + abs(slope) * h, 2 * band):
            draw.polygon([(x, 0), (x + band, 0), (x + band + slope * h, h), (x + slope * h, h)], fill=c2)
    elif kind == "halftone":
        step = m * uniform(rng, 0.04, 0.08)
        for j, y in enumerate(np.arange(0, h + step, step)):
            for x in np.arange((j % 2) * step / 2, w + step, step):
                r = step * 0.48 * (0.3 + 0.7 * x / w)  # dots grow across the picture, as in print
                draw.ellipse((x - r, y - r, x + r, y + r), fill=c2)
    elif kind == "checker":
        step = m * uniform(rng, 0.08, 0.2)
        for i, x in enumerate(np.arange(0, w, step)):
            for j, y in enumerate(np.arange(0, h, step)):
                if (i + j) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=c2)
    elif kind == "zigzag":
        band, tooth = m * uniform(rng, 0.08, 0.16), m * uniform(rng, 0.04, 0.1)
        xs = np.arange(0, w + tooth, tooth)
        for y in np.arange(0, h + band, 2 * band):
            top = [(float(x), float(y + (tooth if k % 2 else 0))) for k, x in enumerate(xs)]
            draw.polygon(top + [(float(x), float(py + band)) for x, py in reversed(top)], fill=c2)
    return img


def _face_look(draw, rng, w: int, h: int, lw: int, look: Look) -> None:
    """The shocked face in the look's shape and place: wide white eyes and an open mouth."""
    x0, x1, y0, y1 = pick(rng, look.face_zones)
    fw = min(w, h) * uniform(rng, 0.13, 0.26)
    fh = fw * uniform(rng, *look.face_aspect)
    fx, fy = uniform(rng, x0, x1) * w, uniform(rng, y0, y1) * h
    skin = hsv(uniform(rng, 0.04, 0.09), uniform(rng, 0.3, 0.6), uniform(rng, 0.55, 0.95))
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
    mw, mh = fw * uniform(rng, 0.25, 0.4), fh * uniform(rng, 0.2, 0.35)
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
        x, y, r = uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.1, 0.9) * h, m * uniform(rng, 0.08, 0.22)
        colour = pick(rng, look.mark_colours)
        if look.highlight == "box":
            draw.rectangle((x - r, y - r * uniform(rng, 0.5, 1.0), x + r, y + r), outline=colour, width=lw * 2)
        else:
            draw.line((x - r, y + r * 0.3, x + r, y + r * 0.3 + uniform(rng, -0.2, 0.2) * r), fill=colour, width=lw * 3)
    for _ in range(int(rng.integers(0, 4))):
        x, y, size = uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.1, 0.9) * h, m * uniform(rng, 0.1, 0.2)
        if look.marks == "chevrons":
            _chevrons(draw, rng, x, y, size, uniform(rng, 0, 2 * np.pi), pick(rng, look.mark_colours))
        else:
            _star(draw, x, y, size, int(rng.integers(7, 14)), pick(rng, look.mark_colours), (0, 0, 0), lw)


def _text_layer(text: str, px: float, max_w: float, stretch: float, fill, stroke: int) -> Image.Image:
    """``text`` as an RGBA layer whose letters are stretched by ``stretch`` (a wide or condensed
    face from the one bundled font), no wider than ``max_w``."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    f, _ = fit_text(probe, text, px, max_w / stretch, stroke)
    l, t, r, b = probe.textbbox((0, 0), text, font=f, stroke_width=stroke)
    layer = Image.new("RGBA", (max(1, r - l + 2), max(1, b - t + 2)), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((1 - l, 1 - t), text, font=f, fill=fill, stroke_width=stroke,
                               stroke_fill=(0, 0, 0) if fill != (0, 0, 0) else (255, 255, 255))
    return layer.resize((max(1, int(layer.width * stretch)), layer.height), Image.Resampling.BILINEAR)


def _shout(img: Image.Image, rng, w: int, h: int, look: Look, fill, band_colour) -> None:
    """BAD's shouting text: in bars across the top and bottom, or tilted in a white bubble."""
    m = min(w, h)
    for k in range(int(rng.integers(1, 3))):
        stroke = max(1, int(m * uniform(rng, 0.008, 0.02)))
        layer = _text_layer(pick(rng, BAIT), m * uniform(rng, 0.1, 0.2), 0.9 * w, uniform(rng, *look.text_stretch),
                            fill, stroke)
        draw = ImageDraw.Draw(img)
        if look.text_place == "banner":
            bh = int(layer.height * 1.5)
            y = 0 if k == 0 else h - bh
            draw.rectangle((0, y, w, y + bh), fill=band_colour)
            img.paste(layer, ((w - layer.width) // 2, y + (bh - layer.height) // 2), layer)
        else:
            layer = layer.rotate(uniform(rng, -15, 15), expand=True, resample=Image.Resampling.BILINEAR)
            x, y = uniform(rng, 0, max(1, w - layer.width)), uniform(rng, 0, max(1, h * 0.6 - layer.height))
            pad = 0.15 * layer.height
            draw.ellipse((x - pad, y - pad, x + layer.width + pad, y + layer.height + pad), fill=(255, 255, 255),
                         outline=(0, 0, 0), width=max(1, stroke))
            img.paste(layer, (int(x), int(y)), layer)


def _bad_look(rng, w: int, h: int, look: Look) -> Image.Image:
    """Clickbait in ``look``: loud background family, shocked face, shouting text, marks."""
    c1, c2, text_fill = _look_palette(rng, look, muted=chance(rng, 0.15))
    kind = pick(rng, look.backgrounds)
    img = _good_look(rng, w, h, look) if kind == "photo" else _bait_background(rng, w, h, kind, c1, c2)
    draw = ImageDraw.Draw(img)
    lw = max(2, int(min(w, h) * uniform(rng, 0.01, 0.03)))
    if chance(rng, 0.6):
        _face_look(draw, rng, w, h, lw, look)
    _marks(draw, rng, w, h, lw, look)
    _shout(img, rng, w, h, look, text_fill, mix(c2, (0, 0, 0), uniform(rng, 0.3, 0.7)))
    return img


def _sky_look(rng, look: Look) -> tuple[tuple, tuple]:
    """(top, bottom) sky colours: a vivid sunset (the 12% as loud as bait), night, or a calm day
    in the look's hue family."""
    if chance(rng, 0.12):
        return hsv(uniform(rng, 0.75, 0.95), uniform(rng, 0.5, 0.9), uniform(rng, 0.5, 0.9)), \
            hsv(uniform(rng, 0.0, 0.1), uniform(rng, 0.6, 0.95), uniform(rng, 0.85, 1.0))
    hue = uniform(rng, *look.sky_hues)
    if chance(rng, 0.2):
        return hsv(hue, uniform(rng, 0.2, 0.5), uniform(rng, 0.08, 0.25)), hsv(hue, uniform(rng, 0.1, 0.4), uniform(rng, 0.25, 0.45))
    return hsv(hue, uniform(rng, 0.1, 0.4), uniform(rng, 0.75, 1.0)), \
        hsv(hue + uniform(rng, -0.08, 0.08), uniform(rng, 0.05, 0.3), uniform(rng, 0.85, 1.0))


def _land_look(draw, rng, w: int, h: int, horizon: float, top, bottom, look: Look) -> None:
    """Ground layers: jagged peaks with a few trees, or broad dunes with a light rim."""
    land = hsv(uniform(rng, 0.08, 0.4), uniform(rng, 0.1, 0.4), uniform(rng, 0.3, 0.6))
    for layer in range(int(rng.integers(1, 4))):
        base = horizon - h * uniform(rng, 0.0, 0.12) + layer * h * 0.06
        colour = mix(bottom, land, 0.4 + 0.25 * layer)
        if look.land == "peaks":
            xs = np.sort(np.r_[0, rng.uniform(0, w, int(rng.integers(4, 10))), w])
            ys = base - h * rng.uniform(0.0, 0.18, len(xs)) * (np.arange(len(xs)) % 2)
            ridge = list(zip(xs.tolist(), ys.tolist()))
            draw.polygon([(0, h)] + ridge + [(w, h)], fill=colour)
            for _ in range(int(rng.integers(0, 6))):  # small dark firs on the nearest ridge
                tx, th = uniform(rng, 0, w), h * uniform(rng, 0.03, 0.07)
                ty = float(np.interp(tx, xs, ys)) + th * 0.3
                draw.polygon([(tx, ty - th), (tx - th * 0.35, ty), (tx + th * 0.35, ty)], fill=mix(colour, (0, 0, 0), 0.4))
        else:
            xs = np.linspace(0, w, 32)
            ys = base + h * uniform(rng, 0.03, 0.08) * np.sin(xs / w * uniform(rng, 0.8, 2.5) * np.pi + uniform(rng, 0, 6.3))
            ridge = list(zip(xs.tolist(), ys.tolist()))
            draw.polygon([(0, h)] + ridge + [(w, h)], fill=colour)
            draw.line(ridge, fill=mix(colour, top, 0.5), width=max(1, h // 120))


def _good_look(rng, w: int, h: int, look: Look) -> Image.Image:
    """A calm landscape in ``look``: posterised or radial sky, a ringed or haloed sun, peaks or dunes."""
    top, bottom = _sky_look(rng, look)
    horizon = uniform(rng, 0.45, 0.8) * h
    r, sx, sy = min(w, h) * uniform(rng, 0.04, 0.12), uniform(rng, 0.1, 0.9) * w, uniform(rng, 0.15, 0.6) * horizon
    sun = mix(bottom, (255, 250, 225), uniform(rng, 0.4, 0.9))
    if look.sky == "bands":
        n = int(rng.integers(4, 9))
        img = gradient(top, bottom, w, n).resize((w, h), Image.Resampling.NEAREST)  # n flat bands
        draw = ImageDraw.Draw(img)
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), outline=sun, width=max(1, int(r * 0.25)))
    else:
        img = _radial(mix(bottom, sun, 0.5), top, w, h, sx, sy, max(w, h) * uniform(rng, 0.6, 1.1))
        draw = ImageDraw.Draw(img)
        for k in (2.6, 1.9):
            draw.ellipse((sx - k * r, sy - k * r, sx + k * r, sy + k * r), fill=mix(top, sun, 0.25 * (3 - k)))
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=sun)
    _land_look(draw, rng, w, h, horizon, top, bottom, look)
    return soften(img, uniform(rng, 1.5, 4.0)) if chance(rng, look.good_soften) else img


def _page_colours(rng, look: Look) -> tuple[tuple, tuple]:
    """(background, ink) of a plain page: dark mode, or cream ruled paper with blue-black ink."""
    if look.page == "dark":
        return hsv(uniform(rng, 0.55, 0.7), uniform(rng, 0.0, 0.12), uniform(rng, 0.1, 0.25)), \
            hsv(uniform(rng, 0.0, 1.0), uniform(rng, 0.0, 0.12), uniform(rng, 0.7, 0.92))
    return hsv(uniform(rng, 0.1, 0.16), uniform(rng, 0.02, 0.1), uniform(rng, 0.92, 1.0)), \
        hsv(uniform(rng, 0.6, 0.68), uniform(rng, 0.2, 0.45), uniform(rng, 0.2, 0.45))


def _neutral_look(rng, w: int, h: int, look: Look) -> Image.Image:
    """Everyday plain content in ``look``: a dark-mode page in columns, or ruled notebook paper,
    with text, a chart, a table or a small photo."""
    bg, ink = _page_colours(rng, look)
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    m, x0, y, right = min(w, h), uniform(rng, 0.05, 0.1) * w, uniform(rng, 0.05, 0.1) * h, float(w)
    if look.page == "notebook":  # faint blue rules and the red margin line
        for ry in np.arange(y, h, m * uniform(rng, 0.05, 0.08)):
            draw.line((0, ry, w, ry), fill=mix(bg, (90, 140, 230), 0.35), width=1)
        draw.line((x0 * 0.8, 0, x0 * 0.8, h), fill=mix(bg, (230, 60, 60), 0.6), width=max(1, m // 250))
    if chance(rng, 0.15):  # the borrowed bait look: a loud sidebar or footer
        bar = hsv(pick(rng, look.bait_hues), uniform(rng, 0.6, 1.0), uniform(rng, 0.7, 1.0))
        if look.loud_bar == "sidebar":
            bw = uniform(rng, 0.15, 0.28) * w
            draw.rectangle((0, 0, bw, h), fill=bar)
            x0 = bw + 0.04 * w
        else:
            draw.rectangle((0, h * uniform(rng, 0.78, 0.88), w, h), fill=bar)
    block = pick(rng, ("text", "text", "chart", "table", "photo"))
    if block == "chart":
        _chart_look(draw, rng, x0, y, (w - x0) * uniform(rng, 0.5, 0.85), (h - y) * uniform(rng, 0.5, 0.85), ink, bg, look)
        return img
    if block == "table":
        _table(draw, rng, x0, y, w - x0 - 0.05 * w, (h - y) * uniform(rng, 0.5, 0.9), ink, m)
        return img
    if block == "photo":  # a small landscape of the same look, as in an article
        pw, ph = int(w * uniform(rng, 0.3, 0.45)), int(h * uniform(rng, 0.25, 0.4))
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
    px = m * uniform(rng, 0.03, 0.05)
    as_bars, f = chance(rng, 0.4), font_px(px)
    while y < h - 1.5 * px:
        if as_bars:
            draw.rectangle((x, y, x + cw * uniform(rng, 0.4, 1.0), y + px * 0.5), fill=ink)
        else:
            words = [pick(rng, WORDS) for _ in range(int(rng.integers(3, 12)))]
            while len(words) > 1 and draw.textlength(" ".join(words), font=f) > cw:
                words.pop()
            draw.text((x, y), " ".join(words), font=f, fill=ink)
        y += px * uniform(rng, 1.3, 2.0) * (2.5 if chance(rng, 0.1) else 1)


def _chart_look(draw, rng, x: float, y: float, cw: float, ch: float, ink, bg, look: Look) -> None:
    """A muted pie chart with a legend, or horizontal bars on a baseline."""
    n = int(rng.integers(3, 8))
    vals = rng.uniform(0.1, 1.0, n)
    colours = [mix(bg, hsv(uniform(rng, 0, 1), uniform(rng, 0.2, 0.5), uniform(rng, 0.5, 0.8)), 0.7) for _ in range(n)]
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
    f = font_px(min(rh * 0.6, m * 0.05))
    for j in range(rows + 1):
        draw.line((x, y + j * rh, x + tw, y + j * rh), fill=ink, width=2 if j in (0, 1, rows) else 1)
    for j in range(rows):
        for i in range(cols):
            draw.text((x + i * cw + 4, y + j * rh + rh * 0.2), pick(rng, WORDS), font=f, fill=ink)
