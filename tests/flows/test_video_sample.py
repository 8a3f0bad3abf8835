"""flows.media.video.sample: pure builders, and the streaming machinery against a fake ffmpeg (a Python
script: exact control over what arrives when). Real ffmpeg on generated clips: test_video_sample_clips.py."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from flows.media import video
from flows.media.video import sample as vs
from flows.media.video import VideoError, VideoInfo

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
    assert cmd[cmd.index("-f") + 1] == "rawvideo" and cmd[cmd.index("-pix_fmt") + 1] == "rgb24"
    assert src < cmd.index("-filter_complex") < cmd.index("-f") < cmd.index("pipe:1")
    vf = cmd[cmd.index("-filter_complex") + 1]
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
