"""Span labels: manifest lines with start/end become frames sampled inside each span (no Ray).

The video is 10 s at 25 fps: red 0-4 s, blue 4-7 s, white 7-10 s, so every frame's colour tells
which second it came from.
"""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from flows.ingest import spans
from flows.core.config import ConfigError
from flows.ingest.config import load_preprocess
from flows.ingest.inputs import discover
from flows.ingest.process import STAGING_SCHEMA, process_batch
from flows.core.schema import REJECT_REASONS

CFG = load_preprocess(None, ["span_fps=2", "video_keyframes=3", "short_edge=64", "classes=[BAD, NEUTRAL, GOOD]"])


def _span(start, end, label=0, name="BAD", where="m.jsonl:1"):
    return {"start": start, "end": end, "label": label, "label_name": name, "pool": "clean",
            "where": where}


def _manifest(path, lines):
    path.write_text("".join(json.dumps(l) + "\n" for l in lines))
    return path


# ---------------------------------------------------------------- pure: no ffmpeg needed


@pytest.mark.parametrize("rec,ok", [
    ({"start": 0, "end": 1.5}, True), ({"start": 3.0, "end": 7.5}, True),
    ({"start": 2, "end": 2}, False), ({"start": 3, "end": 2}, False), ({"start": -1, "end": 2}, False),
    ({"start": 1}, False), ({"end": 1}, False), ({"start": "1", "end": 2}, False),
    ({"start": True, "end": 2}, False), ({"start": 0, "end": float("inf")}, False),
])
def test_parse_span(rec, ok):
    if ok:
        assert spans.parse_span(rec) == (rec["start"], rec["end"])
    else:
        with pytest.raises(ValueError):
            spans.parse_span(rec)


def test_plan_clamps_rejects_out_of_range_and_conflicts_and_merges_same_label():
    sp = [_span(1, 4, where="m:1"), _span(3, 5, where="m:2"), _span(5, 6, where="m:3"),  # one BAD run
          _span(8, 9.5, where="m:4"), _span(9, 12, 2, "GOOD", "m:5"),  # conflict (end clamped)
          _span(9.2, 9.4, where="m:6"),  # overlaps GOOD too: conflict
          _span(6.5, 7, 2, "GOOD", "m:7"),  # touches nothing: kept
          _span(10, 11, where="m:8")]  # starts at the end: bad_span
    kept, rejected = spans.plan_spans(sp, duration=10.0)
    assert [(k["start"], k["end"], k["label_name"]) for k in kept] == [(1, 6, "BAD"),
                                                                       (6.5, 7, "GOOD")]
    assert [p["where"] for p in kept[0]["parts"]] == ["m:1", "m:2", "m:3"]
    reasons = {r[0]["where"]: (r[1], r[2]) for r in rejected}
    assert set(reasons) == {"m:4", "m:5", "m:6", "m:8"}  # every span: kept (as a part) or rejected
    assert reasons["m:8"][0] == "bad_span" and "after the end" in reasons["m:8"][1]
    assert {reasons[w][0] for w in ("m:4", "m:5", "m:6")} == {"span_conflict"}
    assert "m:4" in reasons["m:5"][1] and "m:6" in reasons["m:5"][1]  # names the other spans
    assert "GOOD 9-12 s" in reasons["m:4"][1]  # as the line wrote it, not clamped
    assert "m:5" in reasons["m:4"][1] and "m:4" not in reasons["m:6"][1]  # same label: no clash
    assert all(r in REJECT_REASONS for r in ("bad_span", "span_conflict"))


def test_span_rate_caps_frames_per_span():
    assert spans.span_rate(4.0, 2.0, 32) == 2.0
    assert spans.span_rate(100.0, 2.0, 10) == 0.1  # 10 frames spread over the whole span


def test_config_knobs_are_checked():
    assert (CFG.span_fps, load_preprocess().span_max_frames) == (2.0, 32)
    for bad in ("span_fps=0", "span_max_frames=0", "span_fps=x"):
        with pytest.raises(ConfigError):
            load_preprocess(None, [bad])


def test_ingest_groups_the_spans_of_a_video_into_one_item(tmp_path):
    m = _manifest(tmp_path / "m.jsonl", [
        {"path": "a.mp4", "start": 1, "end": 2, "label": "BAD", "group": "g"},
        {"path": "b.mp4", "label": "GOOD"},
        {"path": "a.mp4", "start": 4, "end": 6, "label": "good"},
        {"path": "b.mp4", "start": 0, "end": 1, "label": "BAD"},
        {"path": "a.mp4", "start": 6, "end": 5, "label": "BAD"},  # bad span
        {"path": "a.mp4", "start": 1, "end": 2, "label": "MAYBE"},  # unknown label
        {"path": "c.jpg", "label": "BAD"},
    ])
    items = discover(m, CFG.classes, CFG.noisy_pools)
    a, b, bad, unknown, c = items
    assert (a["path"], a["whole"], a["group"]) == (str(tmp_path / "a.mp4"), False, "g")
    assert [(s["start"], s["label_name"], s["where"]) for s in spans.spans_of(a)] == [
        (1.0, "BAD", "m.jsonl:1"), (4.0, "GOOD", "m.jsonl:3")]
    assert b["whole"] and b["label_name"] == "GOOD" and len(spans.spans_of(b)) == 1  # both used
    assert bad["reject"] == "bad_span" and "m.jsonl:5" in bad["detail"]
    assert unknown["reject"] == "bad_manifest_line" and "MAYBE" in unknown["detail"]
    assert c["spans"] == "" and c["whole"]
    assert len(items) == 5 and spans.count_entries(items) == 7  # every line is counted once


# ---------------------------------------------------------------- real ffmpeg on a generated clip


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=60)


def _colour(t: float) -> str:
    return "red" if t < 4 else "blue" if t < 7 else "white"


def _seen(row) -> str:
    r, g, b = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB")).reshape(-1, 3).mean(0)
    return "white" if min(r, g, b) > 200 else "red" if r > 200 else "blue" if b > 200 else "?"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("spans")
    ins = [a for c, n in (("red", 4), ("blue", 3), ("white", 3))
           for a in ("-f", "lavfi", "-i", f"color=c={c}:s=160x120:d={n}:r=25")]
    _ffmpeg(*ins, "-filter_complex", "[0][1][2]concat=n=3:v=1[v]", "-map", "[v]", "-c:v", "libx264",
            "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
            str(d / "v.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=160x120:d=10:r=25", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(d / "full.mp4"))
    data = (d / "full.mp4").read_bytes()
    (d / "half.mp4").write_bytes(data[: len(data) // 2])  # index intact, data stops near 5 s
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40)
    Image.new("RGB", (64, 48), "green").save(d / "img.png")
    return d


def _run(d, lines, cfg=CFG):
    items = discover(_manifest(d / "m.jsonl", lines), cfg.classes, cfg.noisy_pools)
    table = process_batch(items, cfg)
    assert table.schema == STAGING_SCHEMA
    rows = table.to_pylist()
    return [r for r in rows if not r["reject_reason"]], [r for r in rows if r["reject_reason"]]


@pytest.mark.slow
def test_span_frames_labels_times_and_one_group(clips):
    lines = [{"path": "v.mp4", "start": 1, "end": 4, "label": "BAD"},
             {"path": "v.mp4", "start": 4.5, "end": 7.5, "label": "GOOD"},
             {"path": "v.mp4", "start": 2, "end": 3, "label": "BAD"},  # inside 1-4: merged
             {"path": "v.mp4", "start": 8, "end": 9.5, "label": "BAD"},  # conflicts with the next
             {"path": "v.mp4", "start": 9, "end": 12, "label": "GOOD"},
             {"path": "v.mp4", "start": 12, "end": 13, "label": "GOOD"},  # after the end
             {"path": "v.mp4", "start": 3, "end": 2, "label": "GOOD"},  # not a span
             {"path": "corrupt.mp4", "start": 1, "end": 2, "label": "GOOD"},
             {"path": "corrupt.mp4", "start": 3, "end": 4, "label": "BAD"},
             {"path": "img.png", "label": "NEUTRAL"}]
    ok, rej = _run(clips, lines)
    frames = [r for r in ok if r["path"].endswith("v.mp4")]
    assert {r["kind"] for r in frames} == {"frame"}  # spans only: no thumbnail, no keyframes
    by_label = {lab: sorted(r["timestamp"] for r in frames if r["label_name"] == lab)
                for lab in ("BAD", "GOOD")}
    # 2 fps: 6 frames in 1-4 s (the 2-3 s line adds none), 6 in 4.5-7.5 s
    assert len(by_label["BAD"]) == 6 and len(by_label["GOOD"]) == 6
    assert all(1 <= t < 4 for t in by_label["BAD"]) and all(4.5 <= t < 7.5 for t in by_label["GOOD"])
    assert by_label["BAD"] == pytest.approx([1, 1.5, 2, 2.5, 3, 3.5], abs=0.041)
    assert all(_seen(r) == _colour(r["timestamp"]) for r in frames)  # the pixels of that time
    assert len({r["group_id"] for r in frames}) == 1 and len({r["id"] for r in frames}) == len(frames)
    assert all(r["id"].endswith(f"#t={r['timestamp']:.3f}") for r in frames)
    why = sorted((r["path"].rsplit("/", 1)[-1], r["reject_reason"], r["label_name"]) for r in rej)
    assert why == [("corrupt.mp4", "video_error", "BAD"), ("corrupt.mp4", "video_error", "GOOD"),
                   ("v.mp4", "bad_span", "GOOD"), ("v.mp4", "bad_span", "GOOD"),
                   ("v.mp4", "span_conflict", "BAD"), ("v.mp4", "span_conflict", "GOOD")]
    assert all("m.jsonl:" in r["reject_detail"] for r in rej)  # each names its line
    assert [r["kind"] for r in ok if r["path"].endswith("img.png")] == ["image"]  # the rest is fine


@pytest.mark.slow
def test_whole_line_and_spans_both_count_and_spans_win_inside(clips):
    lines = [{"path": "v.mp4", "label": "NEUTRAL", "group": "clip-1"},
             {"path": "v.mp4", "start": 4, "end": 7, "label": "BAD"}]
    ok, rej = _run(clips, lines)
    assert not rej and {r["group_id"] for r in ok} == {"clip-1"}
    whole = [r for r in ok if r["label_name"] != "BAD" or r["kind"] == "thumbnail"]
    assert [r["kind"] for r in ok].count("thumbnail") == 1 and len(whole) >= 2
    for r in ok:  # every row inside the span carries the span's label, every row outside the line's
        assert r["label_name"] == ("BAD" if 4 <= r["timestamp"] < 7 else "NEUTRAL"), r["timestamp"]
        assert _seen(r) == _colour(r["timestamp"])
    assert sum(4 <= r["timestamp"] < 7 for r in ok) >= 6 and len({r["id"] for r in ok}) == len(ok)


@pytest.mark.slow
def test_cap_spreads_frames_over_a_long_span(clips):
    cfg = load_preprocess(None, ["span_fps=5", "span_max_frames=4", "short_edge=64", "classes=[BAD, NEUTRAL, GOOD]"])
    ok, rej = _run(clips, [{"path": "v.mp4", "start": 0, "end": 10, "label": "GOOD"}], cfg)
    assert not rej
    assert [r["timestamp"] for r in ok] == pytest.approx([0, 2.5, 5, 7.5], abs=0.041)


@pytest.mark.slow
def test_truncated_video_rejects_only_the_spans_past_its_data(clips):
    lines = [{"path": "half.mp4", "start": 0.5, "end": 1.5, "label": "BAD"},
             {"path": "half.mp4", "start": 8, "end": 9, "label": "GOOD"}]
    ok, rej = _run(clips, lines)
    assert [r["label_name"] for r in ok] == ["BAD", "BAD"]
    assert len(rej) == 1 and rej[0]["label_name"] == "GOOD"
    assert rej[0]["reject_reason"] == "decode_error" and "m.jsonl:2" in rej[0]["reject_detail"]
    assert not math.isnan(ok[0]["timestamp"])
