"""Every kind of bad input gets its reason, and the rest of the batch survives (no Ray)."""
import io
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import Image

from flows.ingest.config import load_preprocess
from flows.ingest.process import STAGING_SCHEMA, process_batch


def _jpeg(seed=0, size=(320, 200)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png(size=(64, 48)):
    buf = io.BytesIO()
    Image.new("RGB", size, "green").save(buf, "PNG")
    return buf.getvalue()


def _bomb():
    data = bytearray(_png())
    data[16:24] = struct.pack(">II", 30000, 30000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def _item(path, label=0):
    return {"path": str(path), "label": label, "label_name": "BAD", "pool": "clean", "group": "",
            "source": "test", "score": float("nan")}


def _files(tmp_path):
    good = _jpeg()
    files = {
        "ok.jpg": (good, None),
        "ok2.png": (_png(), None),
        "png_named.jpg": (_png((80, 60)), None),  # wrong extension, valid content: accepted
        "truncated.jpg": (good[: len(good) // 3], "decode_error"),
        "zero.jpg": (b"", "empty"),
        "bomb.png": (_bomb(), "too_many_pixels"),
        "text.jpg": (b"this is just text, not a picture\n" * 4, "not_media"),
        "page.png": (b"<!doctype html><html><body>hi</body></html>", "not_media"),
        "random.mp4": (b"\x00\x00\x00\x18ftypisom" + np.random.default_rng(1).bytes(4000), "decode_error"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return files


@pytest.mark.slow  # random.mp4 runs ffprobe
def test_bad_inputs_get_their_reason_and_the_rest_survives(tmp_path):
    files = _files(tmp_path)
    items = [_item(tmp_path / n) for n in files] + [_item(tmp_path / "missing.jpg")]
    table = process_batch(items, load_preprocess(), worker="t")
    assert table.schema == STAGING_SCHEMA
    rows = table.to_pylist()
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert set(by_name) == set(files) | {"missing.jpg"}  # nothing lost
    for name, (_, reason) in files.items():
        got = by_name[name]["reject_reason"] or None
        if reason == "decode_error" and name.endswith(".mp4"):
            assert got in ("decode_error", "video_error"), by_name[name]
        else:
            assert got == reason, (name, by_name[name]["reject_detail"])
    assert by_name["missing.jpg"]["reject_reason"] == "missing"
    ok = by_name["ok.jpg"]
    assert ok["kind"] == "image" and ok["bytes"] == len(ok["image"]) > 0 and ok["width"] == 320
    assert ok["id"] == ok["sha256"] == ok["group_id"]


def test_manifest_line_rejects_pass_straight_through(tmp_path):
    item = {**_item(tmp_path / "x.jpg"), "reject": "bad_manifest_line", "detail": "no path"}
    (row,) = process_batch([item], load_preprocess()).to_pylist()
    assert (row["reject_reason"], row["reject_detail"]) == ("bad_manifest_line", "no path")


def test_an_unexpected_exception_is_an_internal_error_reject(tmp_path, monkeypatch):
    (tmp_path / "ok.jpg").write_bytes(_jpeg())
    import flows.media.images as images

    monkeypatch.setattr(images, "prepare", lambda *a, **k: 1 / 0)
    (row,) = process_batch([_item(tmp_path / "ok.jpg")], load_preprocess()).to_pylist()
    assert row["reject_reason"] == "internal_error" and "ZeroDivisionError" in row["reject_detail"]


@pytest.mark.slow
def test_video_becomes_thumbnail_and_frames_in_one_group(tmp_path):
    path = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=320x240:d=2",
                    "-f", "lavfi", "-i", "color=c=blue:s=320x240:d=2", "-filter_complex",
                    "[0][1]concat=n=2:v=1[v]", "-map", "[v]", "-pix_fmt", "yuv420p", str(path)], check=True)
    rows = process_batch([_item(path)], load_preprocess(None, ["video_keyframes=3"])).to_pylist()
    assert not rows[0]["reject_reason"], rows[0]
    assert rows[0]["kind"] == "thumbnail" and {r["kind"] for r in rows[1:]} == {"frame"}
    assert len({r["group_id"] for r in rows}) == 1 and len({r["id"] for r in rows}) == len(rows)
    ts = [r["timestamp"] for r in rows[1:]]
    assert ts == sorted(ts) and all(0 <= t <= 4.0 for t in ts)
