import io

import pytest
from PIL import Image

from flows.ingest.config import load_preprocess
from flows.media.validate import Reject, check, read_head, sniff


def _img_bytes(fmt, mode="RGB", size=(8, 8)):
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_sniff_recognises_each_image_format_by_content(fmt):
    assert sniff(_img_bytes(fmt)[:64]).format == fmt


def test_sniff_video_containers():
    assert sniff(b"\x00\x00\x00\x18ftypisom" + b"\0" * 20).format == "mp4"
    assert sniff(b"\x00\x00\x00\x14ftypqt  " + b"\0" * 20).format == "mov"
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"webm").format == "webm"
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"matroska").format == "mkv"
    assert sniff(b"\x00\x00\x00\x18ftypheic" + b"\0" * 20).format == "HEIF"


def test_sniff_refuses_text_and_html():
    assert sniff(b"hello world, not an image") is None
    assert sniff(b"<!doctype html><html>") is None


def _check(head, size, **kw):
    cfg = load_preprocess(None, kw)
    return check(head, size, max_bytes=cfg.max_bytes, image_formats=cfg.image_formats,
                 video_formats=cfg.video_formats, max_video_bytes=cfg.max_video_bytes)


def test_check_reasons():
    png = _img_bytes("PNG")
    assert _check(png, len(png)).format == "PNG"
    for head, size, kw, reason in [
        (b"", 0, {}, "empty"),
        (b"plain text file", 15, {}, "not_media"),
        (png, len(png), {"image_formats": ["JPEG"]}, "unsupported_format"),
        (png, 10_000, {"max_bytes": 5000}, "too_large"),
        (b"\x00\x00\x00\x18ftypheic" + b"\0" * 20, 100, {}, "unsupported_format"),
    ]:
        with pytest.raises(Reject) as e:
            _check(head, size, **kw)
        assert e.value.reason == reason


def test_read_head_missing_and_directory(tmp_path):
    with pytest.raises(Reject, match="missing"):
        read_head(str(tmp_path / "nope.jpg"))
    with pytest.raises(Reject, match="not_media"):
        read_head(str(tmp_path))
