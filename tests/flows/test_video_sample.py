"""flows.video_sample: pure builders, the streaming machinery against a fake ffmpeg (a Python
script: exact control over what arrives when), then real ffmpeg on clips generated per module."""
from __future__ import annotations

import gc
import os
import random
import shutil
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from flows import video, video_sample as vs
from flows.video import VideoError, VideoInfo

# ---------------------------------------------------------------- pure: no ffmpeg needed


def test_sample_cmd_seeks_the_input_and_streams_rgb():
    cmd = vs.sample_cmd("a.mp4", 84, 64, 2.0, start=3, end=5, max_frames=5)
    src = cmd.index("file:" + os.path.abspath("a.mp4"))
    assert cmd[cmd.index("-protocol_whitelist") + 1] == "file,pipe"
    assert cmd[cmd.index("-format_whitelist") + 1] == video.DEMUXERS
    assert cmd.index("-protocol_whitelist") < src and cmd.index("-format_whitelist") < src
    assert cmd[src - 1] == "-i" and cmd.index("-ss") < src  # input seeking: before -i
    assert float(cmd[cmd.index("-ss") + 1]) == 3.0
    assert cmd.index("-t") > src and float(cmd[cmd.index("-t") + 1]) == 2.0  # a span, not an end
    assert "-copyts" not in cmd  # timestamps restart at 0 at -ss; start is added back in Python
    for flag in ("-nostdin", "-an", "-sn", "-hide_banner"):
        assert flag in cmd
    assert cmd[cmd.index("-fps_mode") + 1] == "passthrough"
    assert cmd[cmd.index("-frames:v") + 1] == "5"
    assert cmd[-5:] == ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    vf = cmd[cmd.index("-vf") + 1]
    assert "floor(t*2/1+" in vf and "scale=84:64" in vf and "fps=" not in vf
    assert vf.index("select=") < vf.index("settb=AVTB") < vf.index("metadata@smp=mode=print")
    assert vf.index("metadata@smp=mode=print") < vf.index("scale=")
    plain = vs.sample_cmd("a.mp4", 84, 64, 2.0)
    assert "-ss" not in plain and "-t" not in plain and "-frames:v" not in plain
    assert "floor(t*1/3+" in vs.select_expr(1 / 3) and "2997/100" in vs.select_expr(29.97)


@pytest.fixture
def no_subprocess(monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("a subprocess was started")
    monkeypatch.setattr(vs.subprocess, "Popen", boom)


@pytest.mark.parametrize("path", ["http://x/a.mp4", "concat:a.mp4|b.mp4", "file:/etc/passwd", ""])
def test_urls_refused_without_running_anything(path, no_subprocess):
    for call in (lambda: vs.sample_cmd(path, 2, 2, 1.0), lambda: vs.sample_frames(path),
                 lambda: vs.frame_at(path, 1.0)):
        with pytest.raises(VideoError) as e:
            call()
        assert e.value.reason == "video_error" and e.value.detail == "only local files"


def test_sample_times():
    assert vs.sample_times(6.0, 2) == [k / 2 for k in range(12)]
    assert vs.sample_times(6.01, 2)[-1] == 6.0 and len(vs.sample_times(5.999, 2)) == 12
    assert vs.sample_times(7.0, 2, start=3, end=5) == [3.0, 3.5, 4.0, 4.5]
    assert vs.sample_times(7.0, 2, start=3.3, end=99) == pytest.approx([3.3, 3.8, 4.3, 4.8, 5.3,
                                                                        5.8, 6.3, 6.8])
    assert vs.sample_times(7.0, 2, start=6.8) == [6.8] and vs.sample_times(7.0, 2, start=9) == []
    assert vs.sample_times(10.0, 1 / 3) == pytest.approx([0, 3, 6, 9])
    for fps, start, end in ((0, None, None), (float("nan"), None, None), (2, -1, None),
                            (2, 3, 3), (2, 4, 3)):
        with pytest.raises(ValueError):
            vs.sample_times(10.0, fps, start, end)


@pytest.mark.parametrize("kw", [{"fps": 0}, {"start": -1}, {"start": 2, "end": 2}, {"chunk": 0}])
def test_bad_arguments_refused_without_running_anything(kw, no_subprocess):
    with pytest.raises(ValueError):
        vs.sample_frames("a.mp4", **kw)
    with pytest.raises(ValueError):
        vs.frame_at("a.mp4", -1.0)


W, H = 4, 2  # the fake's frame size: output_size(4, 2, 448)
_PRELUDE = f"""
import sys, time
W, H = {W}, {H}
def frame(i, n=W * H * 3):
    sys.stdout.buffer.write(bytes([i]) * n); sys.stdout.buffer.flush()
def rec(i, t):
    sys.stderr.write(f"[metadata@smp @ 0x1] [info] frame:{{i}} pts:{{round(t * 1e6)}} "
                     f"pts_time:{{t:.6g}}\\n")
    sys.stderr.write("[metadata@smp @ 0x1] [info] sift=1\\n"); sys.stderr.flush()
def err(msg):
    sys.stderr.write(f"[h264 @ 0x2] [error] {{msg}}\\n"); sys.stderr.flush()
"""


def _fake(monkeypatch, script: str, duration: float = 10.0) -> list[subprocess.Popen]:
    """sample_frames on a fake video whose "ffmpeg" runs ``script``; returns the started procs."""
    monkeypatch.setattr(vs, "probe", lambda path, timeout=20.0: VideoInfo(duration, W, H, 25, "x"))
    monkeypatch.setattr(vs, "sample_cmd", lambda *a, **kw: [sys.executable, "-c",
                                                            _PRELUDE + script])
    return []


def _gone(procs):
    assert procs
    for p in procs:
        assert p.returncode is not None  # reaped
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)


def test_frames_pair_with_records_in_order_whenever_they_arrive(monkeypatch):
    # records trail their frames by 0.1 s, then two arrive before their frames
    procs = _fake(monkeypatch, "for i in range(3):\n frame(i); time.sleep(0.1); rec(i, i / 2)\n"
                               "rec(3, 1.5); rec(4, 2.0); time.sleep(0.1); frame(3); frame(4)")
    gen = vs.sample_frames("a.mp4", start=2.0, end=6.0, on_start=procs.append)
    assert procs == []  # nothing runs before the first next()
    frames = list(gen)
    assert [f.timestamp for f in frames] == [2.0, 2.5, 3.0, 3.5, 4.0]  # start added back
    for i, f in enumerate(frames):
        assert f.kind == "frame" and f.scene_score is None
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
        assert (f.image == i).all() and f.image.flags["WRITEABLE"]
    _gone(procs)


@pytest.mark.parametrize("script,reason,detail,n", [
    ("frame(0); rec(0, 0); err('boom'); sys.exit(1)", "video_error", "boom", 1),
    ("frame(0); rec(0, 0); frame(1, 5)", "decode_error", "short frame", 1),
    ("frame(0); rec(0, 0); frame(1)", "decode_error", "frame without timestamp", 1),
    ("frame(0); sys.stderr.write('[metadata@smp @ 0x1] [info] frame:0 pts:NOPTS pts_time:NOPTS')",
     "decode_error", "frame without timestamp", 0),
    ("err('moov atom not found')", "decode_error", "moov atom not found", 0),
    ("pass", "decode_error", "no frames decoded", 0),
    ("frame(0); rec(0, 0); frame(1); rec(1, 0.5); err('partial file')", "decode_error",
     "decoded to 0.5 s of 10.0 s", 2),
])
def test_stream_errors(monkeypatch, script, reason, detail, n):
    procs = _fake(monkeypatch, script)
    got = []
    with pytest.raises(VideoError) as e:
        for f in vs.sample_frames("a.mp4", on_start=procs.append):
            got.append(f)
    assert e.value.reason == reason and detail in e.value.detail
    assert len(got) == n  # frames before the failure were streamed
    _gone(procs)


def test_on_start_failure_kills(monkeypatch):
    procs = _fake(monkeypatch, "time.sleep(30)")

    def on_start(p):
        procs.append(p)
        raise RuntimeError("cancelled")
    with pytest.raises(RuntimeError):
        next(vs.sample_frames("a.mp4", on_start=on_start))
    _gone(procs)


# ---------------------------------------------------------------- real ffmpeg on generated clips


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=60)


def _colours(out, spec: list[tuple[str, float]], *extra: str) -> str:
    """Solid colours for the given seconds each, 25 fps, 160x120, one keyframe (at 0) only: every
    seek must decode from 0 and drop what precedes the target."""
    ins = [a for c, d in spec for a in ("-f", "lavfi", "-i", f"color=c={c}:s=160x120:d={d}:r=25")]
    graph = "".join(f"[{i}:v]" for i in range(len(spec))) + f"concat=n={len(spec)}:v=1:a=0[v]"
    _ffmpeg(*ins, "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", "-g", "1000", "-sc_threshold", "0", *extra,
            str(out))
    return str(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("sample")
    c = {"colors": _colours(d / "colors.mp4", [("red", 2), ("blue", 2), ("white", 2)]),
         "rb": _colours(d / "rb.mp4", [("red", 4), ("blue", 3)])}
    c["rb_offset"] = str(d / "rb_offset.mp4")  # container timestamps start at 10 s
    _ffmpeg("-i", c["rb"], "-c", "copy", "-output_ts_offset", "10", c["rb_offset"])
    seg = str(d / "seg.mp4")  # 60 s of 320x240 by stream-copying a 2 s clip
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=320x240:d=2:r=25", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", seg)
    c["long"] = str(d / "long.mp4")
    _ffmpeg("-stream_loop", "29", "-i", seg, "-c", "copy", c["long"])
    seg3 = str(d / "seg3.mp4")  # 1200 s at 3 fps: frame times k/3 past 1000 s, cheap to decode
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=160x120:d=2:r=3", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", seg3)
    c["thirds"] = str(d / "thirds.mp4")
    _ffmpeg("-stream_loop", "599", "-i", seg3, "-c", "copy", c["thirds"])
    c["random"] = str(d / "random.mp4")
    with open(c["random"], "wb") as f:
        f.write(random.Random(0).randbytes(200_000))
    whole = str(d / "whole.mp4")  # faststart: half the file still has its index
    _ffmpeg("-f", "lavfi", "-i", "testsrc=s=160x120:d=10:r=25", "-c:v", "libx264", "-preset",
            "ultrafast", "-pix_fmt", "yuv420p", "-movflags", "+faststart", whole)
    data = open(whole, "rb").read()
    c["half"] = str(d / "half.mp4")
    with open(c["half"], "wb") as f:
        f.write(data[: len(data) // 2])
    return c


def _colour(img: np.ndarray) -> str:
    r, g, b = img.reshape(-1, 3).mean(axis=0)
    return {(1, 0, 0): "red", (0, 0, 1): "blue", (1, 1, 1): "white"}.get(
        (int(r > 200), int(g > 200), int(b > 200)), f"rgb({r:.0f},{g:.0f},{b:.0f})")


@pytest.fixture(scope="module")
def colors_frames(clips):
    return list(vs.sample_frames(clips["colors"], fps=2.0, short_edge=64))


@pytest.mark.slow
def test_timestamps_shape_and_content(colors_frames):
    frames = colors_frames
    assert 11 <= len(frames) <= 13
    want = vs.sample_times(6.0, 2.0)
    assert [f.timestamp for f in frames] == pytest.approx(want[:len(frames)], abs=0.05)
    for f in frames:
        assert f.kind == "frame" and f.scene_score is None
        assert f.image.shape == (64, 84, 3) and f.image.dtype == np.uint8
        assert _colour(f.image) == ["red", "blue", "white"][int(f.timestamp // 2)], f.timestamp


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rb", "rb_offset"])
def test_seeking_keeps_absolute_video_time(clips, name):
    """[3, 5) of red 0-4 s / blue 4-7 s: seeked timestamps are video time (start added back; the
    file's own start time of 10 s is not), on the same timeline as an unseeked decode."""
    frames = list(vs.sample_frames(clips[name], short_edge=64, start=3, end=5))
    assert [f.timestamp for f in frames] == pytest.approx([3.0, 3.5, 4.0, 4.5], abs=0.05)
    assert [_colour(f.image) for f in frames] == ["red", "red", "blue", "blue"]
    if name == "rb":
        return
    full = [f.timestamp for f in vs.sample_frames(clips[name], short_edge=64)]
    assert [f.timestamp for f in frames] == pytest.approx([t for t in full if 3 <= t < 5],
                                                          abs=1e-6)
    odd = list(vs.sample_frames(clips[name], short_edge=64, start=3.3, end=5))  # off the frame grid
    assert [f.timestamp for f in odd] == pytest.approx([3.32, 3.8, 4.32, 4.8], abs=0.005)
    assert [_colour(f.image) for f in odd] == ["red", "red", "blue", "blue"]


@pytest.mark.slow
def test_timestamps_exact_far_into_a_long_window(clips):
    """No seek, so ffmpeg's own times reach 1000+ s, where its 6-digit pts_time would be 10 ms off
    (1003.33 for 1003.3333): timestamps come from the integer pts instead."""
    frames = list(vs.sample_frames(clips["thirds"], fps=0.3, short_edge=64, end=1005))
    grid = vs.sample_times(1200.0, 0.3, end=1005)
    assert len(frames) == len(grid) == 302 and frames[-1].timestamp > 1000
    for f, g in zip(frames, grid):  # the first frame at or after each grid time, to the microsecond
        assert abs(f.timestamp * 3 - round(f.timestamp * 3)) < 1e-4
        assert g - 1e-6 <= f.timestamp < g + 1 / 3


@pytest.mark.slow
def test_chunks_give_the_same_frames(clips, colors_frames):
    procs: list = []
    whole = colors_frames
    chunked = list(vs.sample_frames(clips["colors"], short_edge=64, chunk=2.6,
                                    on_start=procs.append))  # 2.6 s -> 5 periods: 2.5 s
    assert len(procs) == 3
    assert [f.timestamp for f in chunked] == pytest.approx([f.timestamp for f in whole], abs=1e-6)
    assert all((a.image == b.image).all() for a, b in zip(whole, chunked))
    _gone(procs)


@pytest.mark.slow
def test_closing_early_kills_ffmpeg(clips):
    procs: list = []
    gen = vs.sample_frames(clips["long"], fps=10, short_edge=240, on_start=procs.append)
    assert [round(next(gen).timestamp, 2) for _ in range(2)] == [0.0, 0.12]
    assert procs[0].poll() is None  # still decoding (blocked on the full pipe)
    gen.close()
    _gone(procs)
    gen = vs.sample_frames(clips["long"], fps=10, short_edge=240, on_start=procs.append)
    next(gen)
    del gen  # dropped without close(): the generator's finally still runs
    gc.collect()
    _gone(procs)


@pytest.mark.slow
def test_memory_stays_bounded(clips):
    frame_bytes = 320 * 240 * 3
    tracemalloc.start()
    try:
        n, last = 0, -1.0
        for f in vs.sample_frames(clips["long"], fps=10, short_edge=240):
            assert 0 < f.timestamp - last <= 0.141 or n == 0
            n, last = n + 1, f.timestamp
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 600 and last == pytest.approx(59.92, abs=0.05)
    assert peak < 6 * frame_bytes, (peak, n * frame_bytes)  # vs 138 MB for all 600


@pytest.mark.slow
def test_timeout_kills_ffmpeg(clips, monkeypatch):
    info = video.probe(clips["long"])  # probed beforehand: a loaded box must not time the probe out
    monkeypatch.setattr(vs, "probe", lambda *a, **kw: info)
    procs: list = []
    gen = vs.sample_frames(clips["long"], fps=10, short_edge=240, timeout=0.8,
                           on_start=procs.append)
    t0 = time.monotonic()
    with pytest.raises(VideoError) as e:
        for i, _ in enumerate(gen):
            if i == 0:
                time.sleep(1.0)  # a slow consumer counts against the timeout
    assert e.value.reason == "video_error" and "timed out" in e.value.detail
    assert time.monotonic() - t0 < 4
    _gone(procs)


@pytest.mark.slow
@pytest.mark.parametrize("name,reason,frames", [("random", "video_error", 0),
                                                ("half", "decode_error", 8)])
def test_corrupt_files_rejected_promptly(clips, name, reason, frames):
    t0 = time.monotonic()
    got = []
    with pytest.raises(VideoError) as e:
        for f in vs.sample_frames(clips[name], short_edge=64, timeout=20):
            got.append(f)
    assert e.value.reason == reason and e.value.detail
    assert len(got) >= frames  # the readable half streamed before the error
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_limits_raise_at_call_time(clips):
    started: list = []
    for kw, reason in (({"max_seconds": 5.0}, "video_too_long"),
                       ({"max_pixels": 160 * 120 - 1}, "video_too_big")):
        with pytest.raises(VideoError) as e:
            vs.sample_frames(clips["colors"], on_start=started.append, **kw)  # no next() needed
        assert e.value.reason == reason
    assert started == []  # refused after the probe, before any decode


@pytest.mark.slow
def test_frame_at(clips):
    img = vs.frame_at(clips["colors"], 4.5, short_edge=64)
    assert img.shape == (64, 84, 3) and _colour(img) == "white" and img.flags["WRITEABLE"]
    with pytest.raises(VideoError) as e:
        vs.frame_at(clips["colors"], 60.0)
    assert e.value.reason == "decode_error"
