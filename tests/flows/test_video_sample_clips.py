"""flows.media.video.sample on real ffmpeg: clips generated once per module (solid colours with a single
keyframe, so every seek decodes from 0; long, offset, truncated and random files)."""
from __future__ import annotations

import gc
import random
import shutil
import subprocess
import time
import tracemalloc

import numpy as np
import pytest

from flows.media import video
from flows.media.video import sample as vs
from flows.media.video import VideoError
from tests.flows.test_video_sample import _gone


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
