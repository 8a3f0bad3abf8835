import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from flows.media.images import encode_budget, open_image, phash, prepare, resize_short, to_rgb
from flows.media.validate import Reject


def _bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = open_image(_bytes(img, "JPEG", exif=exif), max_pixels=10**6)
    assert out.size == (20, 40)


def test_transparency_is_composited_on_white_not_black():
    img = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert to_rgb(img).getpixel((5, 5)) == (255, 255, 255)
    p = Image.new("P", (10, 10), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    assert to_rgb(p).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_is_scaled_not_clipped():
    a = np.full((4, 4), 32768, dtype=np.uint16)
    img = Image.frombytes("I;16", (4, 4), a.astype("<u2").tobytes())
    v = to_rgb(img).getpixel((0, 0))
    assert 120 <= v[0] <= 135 and v[0] == v[1] == v[2]


def test_cmyk_and_palette_decode_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red in CMYK
    out = open_image(_bytes(cmyk, "JPEG"), max_pixels=10**6)
    r, g, b = out.getpixel((8, 8))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60
    pal = Image.new("RGB", (16, 16), "blue").convert("P")
    assert open_image(_bytes(pal, "PNG"), max_pixels=10**6).getpixel((1, 1))[2] > 200


def _png_with_declared_size(w, h):
    data = bytearray(_bytes(Image.new("L", (8, 8)), "PNG"))
    ihdr = 8 + 8  # signature, then length + type
    data[ihdr:ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12:12 + 4 + 13])) & 0xFFFFFFFF
    data[12 + 4 + 13:12 + 4 + 13 + 4] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_rejected_before_decoding():
    with pytest.raises(Reject) as e:
        open_image(_png_with_declared_size(30000, 30000), max_pixels=50_000_000)
    assert e.value.reason == "too_many_pixels"


def test_truncated_jpeg_is_decode_error():
    data = _bytes(_noise(64, 64), "JPEG")
    with pytest.raises(Reject) as e:
        open_image(data[: len(data) // 3], max_pixels=10**6)
    assert e.value.reason == "decode_error"


def test_too_small():
    with pytest.raises(Reject, match="too_small"):
        open_image(_bytes(Image.new("RGB", (4, 4)), "PNG"), max_pixels=10**6, min_side=16)


def test_draft_decoding_keeps_the_short_edge_at_least_the_target():
    big = _bytes(_noise(1600, 1200), "JPEG", quality=80)
    out = open_image(big, max_pixels=10**8, short_edge=256)
    assert min(out.size) >= 256 and min(out.size) < 1200  # decoded at a reduced scale


def test_resize_never_upscales_and_keeps_aspect():
    assert resize_short(Image.new("RGB", (100, 50)), 448).size == (100, 50)
    assert resize_short(Image.new("RGB", (1280, 720)), 448).size == (796, 448)


@pytest.mark.parametrize("budget", [8_000, 30_000, 200_000])
def test_budget_encode_fits_and_uses_the_highest_quality_that_fits(budget):
    img = _noise(300, 200)
    data, q, used = encode_budget(img, budget, 90, 40)
    assert len(data) <= budget
    if q < 90 and used.size == img.size:  # one quality step higher would not have fit
        buf = io.BytesIO()
        used.save(buf, "JPEG", quality=q + 1)
        assert len(buf.getvalue()) > budget


def test_budget_too_small_for_min_quality_shrinks_the_image():
    data, q, used = encode_budget(_noise(400, 400), 5_000, 90, 40)
    assert len(data) <= 5_000 and used.size[0] < 400


def test_phash_is_stable_under_recompression_and_differs_across_content():
    a = _noise(200, 200, seed=1).resize((64, 64)).resize((200, 200))
    again = Image.open(io.BytesIO(_bytes(a, "JPEG", quality=60)))
    other = _noise(200, 200, seed=2).resize((64, 64)).resize((200, 200))
    h = int(phash(a), 16)
    assert bin(h ^ int(phash(again), 16)).count("1") <= 4
    assert bin(h ^ int(phash(other), 16)).count("1") > 12


def test_prepare_reports_what_it_stored():
    out = prepare(_noise(900, 600), 448, 200_000, 90, 40)
    assert (out["width"], out["height"]) == (672, 448)
    assert out["bytes"] == len(out["image"]) and len(out["phash"]) == 16
