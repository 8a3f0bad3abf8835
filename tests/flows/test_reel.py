"""flows.media.reel and flows.media.reel.plan: pure planning and commands, then real ffmpeg on generated clips.

The main clip is 10 s at 25 fps of five solid colours, 2 s each, with a keyframe exactly at every
colour change (and nowhere else) and B-frames, plus a sine audio track: so copy-exact cuts, the
colour each reel second must show and every duration are known in advance.
"""
from __future__ import annotations

import math
import os
import random
import shutil
import subprocess

import numpy as np
import pytest

from flows.media import reel
from flows.media.reel import plan as reel_plan
from flows.media.reel.plan import Cut
from flows.core.schema import REJECT_REASONS
from flows.media.video import VideoError, probe

COLOURS = ["red", "blue", "lime", "white", "yellow"]  # one per 2 s
RGB = {"red": (255, 0, 0), "blue": (0, 0, 255), "lime": (0, 255, 0), "white": (255, 255, 255),
       "yellow": (255, 255, 0)}


def _seg(start, end, label="BAD", score=0.5):
    return {"start": start, "end": end, "label": label, "score": score}


def _union(segments) -> float:
    """Length of the union of [start, end) intervals: what a reel of them must last."""
    total, cur = 0.0, None
    for s, e in sorted((x["start"], x["end"]) for x in segments):
        if cur and s <= cur[1]:
            cur[1] = max(cur[1], e)
        else:
            total += cur[1] - cur[0] if cur else 0.0
            cur = [s, e]
    return total + (cur[1] - cur[0] if cur else 0.0)


# ---------------------------------------------------------------- pure: no ffmpeg needed


def test_merge_sorts_clamps_merges_and_accounts_for_every_segment():
    segs = [_seg(6, 7, score=0.2), _seg(1, 2, "BAD", 0.9), _seg(1.5, 3, "GOOD", 0.95),
            _seg(3, 4, score=0.1), _seg(9, 12), _seg(-2, 0.5), _seg(5, 5), _seg(11, 12),
            {"start": "x", "end": 2}, {"end": 3}, {"start": float("nan"), "end": 1},
            {"start": 7.5, "end": 8, "score": None}]
    merged, dropped = reel_plan.merge_segments(segs, duration=10.0)
    assert [(m["start"], m["end"]) for m in merged] == [(0, 0.5), (1, 4), (6, 7), (7.5, 8), (9, 10)]
    assert merged[1]["label"] == "GOOD" and merged[1]["score"] == 0.95  # best-scored part
    assert math.isnan(merged[3]["score"])  # a score is optional
    assert len(dropped) == 5 and all(d["reason"] for d in dropped)  # 5-5, 11-12, "x", no start, nan
    assert len(segs) == 5 + 5 + 2  # 12 in: 1-2, 1.5-3 and 3-4 merged into one; 5 dropped


def test_packets_and_cuts_snap_to_frames_and_know_when_copy_is_exact():
    csv = "\n".join(["-0.080000,0.040000,KD"] +  # edit-list priming frame: not a frame of the video
                    [f"{i / 25:.6f},0.040000,{'K_' if i % 50 == 0 else '__'}" for i in range(250)])
    p = reel_plan.parse_packets(csv)
    assert len(p.times) == 250 and p.end == pytest.approx(10.0)
    assert sorted(p.keyframes) == [0.0, 2.0, 4.0, 6.0, 8.0]
    cuts, dropped = reel_plan.plan_cuts([_seg(2.0, 4.0), _seg(4.51, 5.31), _seg(8.0, 10.0),
                                    _seg(9.999, 10.0)], p)
    assert [(c.start, c.end, c.frames, c.copy) for c in cuts] == [
        (2.0, 4.0, 50, True), (4.52, 5.32, 20, False), (8.0, p.end, 50, True)]
    assert dropped and dropped[0]["reason"] == "shorter than a frame"
    # a start-time offset (MPEG-TS, edited mp4) is taken off: times are from the start of the file
    assert reel_plan.parse_packets("1.400000,0.040000,K_\n1.440000,0.040000,__", 1.4).times == (0.0,
                                                                                         0.04)


def test_overlay_text_and_escaping():
    assert reel.overlay_text("BAD", 0.8666) == "BAD 0.87"
    assert reel.overlay_text("BAD", math.nan) == "BAD"
    # paths are escaped for both filtergraph levels: option separators, quotes, brackets, commas
    cut = Cut(2.0, 4.0, 50, "BAD", 0.9, False)
    draw = reel.drawtext("/a b/it's:x[1],y;z", "/t/t.txt", 120)
    enc = reel.video_piece_cmd("v.mp4", cut, "/t/v.mov", False, 25.0, draw)
    graph = enc[enc.index("-filter_complex") + 1]
    assert ":fontfile=/a b/it\\\\\\'s\\\\:x\\[1\\]\\,y\\;z:" in graph
    assert ":textfile=/t/t.txt:" in graph and ":fontsize=10:" in graph and ":expansion=none:" in graph


def test_commands_read_only_local_files_and_our_pieces():
    cut = Cut(2.0, 4.0, 50, "BAD", 0.9, True)
    for cmd in (reel.video_piece_cmd("-v.mp4", cut, "/t/v.mov", True, 25.0),
                reel.video_piece_cmd("-v.mp4", cut, "/t/v.mov", False, 25.0, {"x": 1}),
                reel.audio_piece_cmd("-v.mp4", cut, "/t/a.wav")):
        src = cmd.index("file:" + os.path.abspath("-v.mp4"))
        assert cmd[cmd.index("-protocol_whitelist") + 1] == "file,pipe"
        assert cmd.index("-format_whitelist") < src and cmd[src - 1] == "-i"
        # the output: last before the guard's global options (ffmpeg-python puts them at the end)
        assert "-y" in cmd and cmd[cmd.index("-nostdin") - 1].startswith("file:/t/")
    copy = reel.video_piece_cmd("v.mp4", cut, "/t/v.mov", True, 25.0)
    assert copy[copy.index("-c:v") + 1] == "copy" and copy[copy.index("-frames:v") + 1] == "50"
    assert float(copy[copy.index("-ss") + 1]) == pytest.approx(2.0, abs=2e-6)  # on the keyframe
    enc = reel.video_piece_cmd("v.mp4", cut, "/t/v.mov", False, 25.0, {"x": 1})
    graph = enc[enc.index("-filter_complex") + 1]
    assert "libx264" in enc and graph.startswith("[0:V:0]drawtext=x=1[s0];[s0]setpts=")
    assert float(enc[enc.index("-ss") + 1]) == pytest.approx(2.0 - 0.25 / 25)
    audio = reel.audio_piece_cmd("v.mp4", cut, "/t/a.wav")
    assert float(audio[audio.index("-t") + 1]) == 2.0 and "pcm_s16le" in audio
    join = reel.join_cmd("/t/video.txt", "/t/audio.txt", "/t/reel.mp4")
    assert join.count("concat") == 2 and join[join.index("-c:v") + 1] == "copy"
    assert join[join.index("-format_whitelist") + 1] == "concat,mov,wav"
    assert "-map" in reel.join_cmd("/t/video.txt", None, "/t/r.mp4")
    assert "1:a:0" not in reel.join_cmd("/t/video.txt", None, "/t/r.mp4")


def test_reasons_are_schema_codes():
    assert reel.EMPTY_SELECTION in REJECT_REASONS


@pytest.mark.parametrize("path", ["http://x/a.mp4", "concat:a.mp4|b.mp4", "file:/etc/passwd", ""])
def test_urls_refused(path, tmp_path):
    with pytest.raises(VideoError) as e:
        reel.cut_reel(path, [_seg(0, 1)], tmp_path / "r.mp4")
    assert (e.value.reason, e.value.detail) == ("video_error", "only local files")
    assert not (tmp_path / "r.mp4").exists()


# ---------------------------------------------------------------- real ffmpeg on generated clips


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=60)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("reel")
    ins = [a for c in COLOURS for a in ("-f", "lavfi", "-i", f"color=c={c}:s=160x120:d=2:r=25")]
    graph = "".join(f"[{i}:v]" for i in range(5)) + "concat=n=5:v=1:a=0[v]"
    # keyframes exactly at 0, 2, 4, 6, 8 s (GOP 50, no scene-cut keyframes); veryfast has B-frames
    gop = ["-c:v", "libx264", "-preset", "veryfast", "-g", "50", "-keyint_min", "50",
           "-sc_threshold", "0", "-pix_fmt", "yuv420p"]
    c = {"silent": str(d / "silent.mp4")}
    _ffmpeg(*ins, "-filter_complex", graph, "-map", "[v]", *gop, c["silent"])
    c["av"] = str(d / "av.mp4")
    _ffmpeg("-i", c["silent"], "-f", "lavfi", "-i", "sine=f=440:d=10", "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-c:a", "aac", c["av"])
    c["webm"] = str(d / "vp8.webm")  # not copyable into mp4: always re-encoded
    _ffmpeg("-i", c["silent"], "-c:v", "libvpx", "-b:v", "200k", "-deadline", "realtime",
            "-cpu-used", "16", "-threads", "1", c["webm"])
    # broken inputs
    c["random"] = str(d / "random.mp4")  # an mp4 header, then noise
    with open(c["random"], "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypisom" + random.Random(0).randbytes(20_000))
    c["zero"] = str(d / "zero.mp4")
    open(c["zero"], "wb").close()
    c["text"] = str(d / "notes.mp4")
    with open(c["text"], "w") as f:
        f.write("not a video\n" * 50)
    faststart = str(d / "faststart.mp4")
    _ffmpeg("-i", c["av"], "-c", "copy", "-movflags", "+faststart", faststart)
    for name, src in (("half_moov", c["av"]), ("half_faststart", faststart)):
        data = open(src, "rb").read()
        c[name] = str(d / f"{name}.mp4")
        with open(c[name], "wb") as f:
            f.write(data[: len(data) // 2])  # moov-at-end: no index; faststart: data stops at ~5 s
    return c


def _streams(path: str) -> dict[str, float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration",
                          "-of", "csv=p=0", path], capture_output=True, text=True, check=True)
    return {k: float(v) for k, v in (line.split(",") for line in out.stdout.split())}


def _frame(path: str, t: float) -> np.ndarray:
    out = subprocess.run(["ffmpeg", "-v", "error", "-ss", f"{t}", "-i", path, "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                         check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(120, 160, 3)


def _colour_at(path: str, t: float) -> str:
    """The colour the middle of the frame at ``t`` shows (the overlay sits top-left)."""
    mean = _frame(path, t)[40:, 40:].reshape(-1, 3).mean(axis=0)
    return min(RGB, key=lambda c: np.abs(mean - RGB[c]).sum())


def _source_colour(t: float) -> str:
    return COLOURS[int(t // 2)]


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["av", "silent"])
def test_copy_mode_reel_lasts_the_selection_and_shows_it(clips, tmp_path, clip):
    segs = [_seg(6.0, 8.0, score=0.7), _seg(2.0, 4.0, score=0.9), _seg(8.0, 10.0, score=0.6)]
    out = tmp_path / "reels" / "r.mp4"
    r = reel.cut_reel(clips[clip], segs, out, overlay=False)
    selected = _union(segs)  # 6.0: 6-8 and 8-10 touch and are merged
    print(f"copy {clip}: selected {selected:.3f} s, reel {r['duration']:.3f} s")
    assert r["mode"] == "copy" and r["path"] == str(out) and out.is_file()
    assert [(s["start"], s["end"]) for s in r["segments"]] == [(2.0, 4.0), (6.0, 10.0)]
    assert abs(r["duration"] - selected) <= 0.1
    assert r["duration"] == pytest.approx(probe(str(out)).duration)
    streams = _streams(str(out))
    assert ("audio" in streams) == (clip == "av")
    if clip == "av":
        assert abs(streams["audio"] - selected) <= 0.1
    # the reel shows the selected seconds, in order: 2-4 s, then 6-10 s of the source
    for t, src_t in ((0.5, 2.5), (1.9, 3.9), (2.1, 6.1), (4.5, 8.5)):
        assert _colour_at(str(out), t) == _source_colour(src_t), t


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["av", "webm"])
def test_reencode_mode_cuts_between_keyframes_exactly(clips, tmp_path, clip):
    segs = [_seg(1.3, 2.9, score=0.9), _seg(4.1, 5.0, score=0.7), _seg(4.9, 6.02, "GOOD", 0.95),
            _seg(7.7, 9.6, score=0.7)]
    out = tmp_path / "r.mp4"
    r = reel.cut_reel(clips[clip], segs, out, overlay=False)
    selected, used = _union(segs), sum(s["end"] - s["start"] for s in r["segments"])
    print(f"reencode {clip}: selected {selected:.3f} s, used {used:.3f} s, "
          f"reel {r['duration']:.3f} s")
    assert r["mode"] == "reencode" and len(r["segments"]) == 3 and not r["overlay"]
    assert abs(r["duration"] - selected) <= 0.1
    assert abs(r["duration"] - used) <= 0.041  # the snapped segments: exact to a frame
    for s, orig in zip(r["segments"], [(1.3, 2.9), (4.1, 6.02), (7.7, 9.6)]):
        assert abs(s["start"] - orig[0]) <= 0.021 and abs(s["end"] - orig[1]) <= 0.021
    assert r["segments"][1]["label"] == "GOOD"  # the merged segment's best part
    # reel second 1.5 is source 4.08 + (1.5 - 1.6): the cut at source 2.88 -> 4.08 is where it belongs
    start = [0.0]
    for s in r["segments"]:
        start.append(start[-1] + s["end"] - s["start"])
    for k, s in enumerate(r["segments"]):
        mid = start[k] + (s["end"] - s["start"]) / 2
        assert _colour_at(str(out), mid) == _source_colour((s["start"] + s["end"]) / 2)
    if clip == "av":
        assert abs(_streams(str(out))["audio"] - selected) <= 0.1


@pytest.mark.slow
def test_overlay_forces_reencode_and_draws_label_and_score(clips, tmp_path):
    if reel.find_font() is None:
        pytest.skip("no font for the overlay")
    segs = [_seg(2.0, 4.0, "BAD", 0.87)]  # keyframe-aligned: copy would be exact without overlay
    plain = reel.cut_reel(clips["av"], segs, tmp_path / "plain.mp4", overlay=False)
    drawn = reel.cut_reel(clips["av"], segs, tmp_path / "drawn.mp4")
    assert (plain["mode"], drawn["mode"]) == ("copy", "reencode") and drawn["overlay"]
    assert abs(drawn["duration"] - 2.0) <= 0.1
    a, b = _frame(str(tmp_path / "plain.mp4"), 1.0), _frame(str(tmp_path / "drawn.mp4"), 1.0)
    corner = np.abs(a[:20, :80].astype(int) - b[:20, :80]).mean()
    rest = np.abs(a[40:, 40:].astype(int) - b[40:, 40:]).mean()
    assert corner > 20 and rest < 5  # text box top-left, the picture untouched elsewhere


@pytest.mark.slow
@pytest.mark.parametrize("name,reason", [
    ("random", "decode_error"), ("half_moov", "decode_error"), ("half_faststart", "decode_error"),
    ("zero", "empty"), ("text", "not_media")])
def test_broken_inputs_give_a_clear_error_and_no_output(clips, tmp_path, name, reason):
    out = tmp_path / "r.mp4"
    with pytest.raises(VideoError) as e:
        reel.cut_reel(clips[name], [_seg(1.0, 2.0)], out)
    assert e.value.reason == reason and e.value.detail, e.value
    assert reason in REJECT_REASONS and not out.exists()
    if name == "half_faststart":
        assert "truncated" in e.value.detail


@pytest.mark.slow
def test_missing_file_empty_selection_and_timeout(clips, tmp_path):
    out = tmp_path / "r.mp4"
    with pytest.raises(VideoError) as e:
        reel.cut_reel(tmp_path / "nope.mp4", [_seg(0, 1)], out)
    assert e.value.reason == "missing"
    for segs in ([], [_seg(11, 12)], [_seg(3, 2)], [_seg(5.0, 5.01)]):
        with pytest.raises(VideoError) as e:
            reel.cut_reel(clips["av"], segs, out)
        assert e.value.reason == reel.EMPTY_SELECTION, segs
    with pytest.raises(VideoError) as e:
        reel.cut_reel(clips["av"], [_seg(1.3, 9.6)], out, timeout=0.05)
    assert e.value.reason == "video_error" and "timed out" in e.value.detail
    assert not out.exists()
