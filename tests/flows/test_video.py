"""flows.media.video: pure command builders, parsers and selection logic (no ffmpeg needed; the real
ffmpeg runs are in test_video_clips.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from flows.media import video
from flows.core.schema import REJECT_REASONS
from flows.media.video import VideoError, VideoInfo

S = "160x120"  # tiny frames keep the whole module fast


# ---------------------------------------------------------------- pure: no ffmpeg needed


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fail the test if anything tries to start a process."""
    def boom(*a, **kw):
        raise AssertionError("a subprocess was started")
    monkeypatch.setattr(video.subprocess, "Popen", boom)


@pytest.mark.parametrize("cmd", [
    video.probe_cmd("a.mp4"),
    video.keyframes_cmd("a.mp4", 64, 48, 0.3, 1.0, 12),
    video.scene_cmd("a.mp4", 0.3),
])
def test_builders_read_only_local_files(cmd):
    assert cmd[0] in ("ffmpeg", "ffprobe")
    i = cmd.index("-protocol_whitelist")
    assert cmd[i + 1] == "file,pipe"
    assert cmd[cmd.index("-format_whitelist") + 1] == video.DEMUXERS
    assert f"file:{os.path.abspath('a.mp4')}" in cmd
    # input options must come before the input
    src = cmd.index(f"file:{os.path.abspath('a.mp4')}")
    assert i < src and cmd.index("-format_whitelist") < src


def test_keyframes_cmd_shape():
    cmd = video.keyframes_cmd("a.mp4", 64, 48, 0.25, 1.5, 12)
    for flag in ("-nostdin", "-an", "-sn", "-hide_banner"):
        assert flag in cmd
    assert cmd[cmd.index("-frames:v") + 1] == "12"
    assert cmd[cmd.index("-fps_mode") + 1] == "vfr"
    # ffmpeg-python's layout: the graph, then the output's options (sorted), then the output
    assert cmd[cmd.index("-f") + 1] == "rawvideo" and cmd[cmd.index("-pix_fmt") + 1] == "rgb24"
    assert cmd.index("-filter_complex") < cmd.index("-f") < cmd.index("pipe:1")
    vf = cmd[cmd.index("-filter_complex") + 1]  # the expression's commas escaped for the graph
    assert "gt(scene\\,0.25)" in vf and "trunc(t/1.5)" in vf and "scale=64:48" in vf
    assert vf.startswith("[0:V:0]select=") and vf.endswith("format=rgb24[s4]")
    assert vf.index("select=") < vf.index("metadata@kf") < vf.index("scale=")
    assert cmd[cmd.index("-map") + 1] == "[s4]"


@pytest.mark.parametrize("path", [
    "http://example.com/a.mp4", "https://x/y.webm", "rtmp://h/live", "concat:a.mp4|b.mp4",
    "subfile:,,start,0,end,0,,:a.mp4", "file:/etc/passwd", "data:video/mp4;base64,AAAA", "",
])
def test_urls_refused_without_running_anything(path, no_subprocess):
    for call in (lambda: video.probe(path), lambda: video.extract_keyframes(path),
                 lambda: video.scene_cuts(path), lambda: video.probe_cmd(path)):
        with pytest.raises(VideoError) as e:
            call()
        assert e.value.reason == "video_error" and e.value.detail == "only local files"


def test_local_paths_become_file_urls():
    assert video.local_input("-y.mp4") == "file:" + os.path.abspath("-y.mp4")
    assert video.local_input("/tmp/a b.mp4") == "file:/tmp/a b.mp4"


@pytest.mark.parametrize("w,h,edge,expected", [
    (1920, 1080, 448, (796, 448)), (1080, 1920, 448, (448, 796)), (100, 50, 448, (100, 50)),
    (101, 51, 448, (100, 50)), (448, 448, 448, (448, 448)), (3, 1, 448, (2, 2)),
])
def test_output_size(w, h, edge, expected):
    assert video.output_size(w, h, edge) == expected


def test_output_size_even_and_never_upscales():
    for w in range(2, 700, 37):
        for h in range(2, 700, 41):
            for edge in (16, 224, 448):
                ow, oh = video.output_size(w, h, edge)
                assert ow % 2 == 0 and oh % 2 == 0
                assert ow <= max(w, 2) and oh <= max(h, 2)
                assert min(ow, oh) <= edge or min(w, h) <= edge
                assert abs(min(ow, oh) - min(edge, min(w, h))) <= 2


def test_reasons_are_schema_codes():
    for reason in ("video_error", "video_too_long", "video_too_big", "decode_error"):
        assert reason in REJECT_REASONS


def test_check_limits():
    info = VideoInfo(duration=10.0, width=1920, height=1080, fps=25.0, codec="h264")
    video.check_limits(info, max_seconds=10.0, max_pixels=1920 * 1080)
    with pytest.raises(VideoError) as e:
        video.check_limits(info, max_seconds=9.9, max_pixels=10**9)
    assert e.value.reason == "video_too_long"
    with pytest.raises(VideoError) as e:
        video.check_limits(info, max_seconds=100, max_pixels=1920 * 1080 - 1)
    assert e.value.reason == "video_too_big"


def _stream(**kw):
    return {"codec_type": "video", "codec_name": "h264", "width": 640, "height": 360,
            "avg_frame_rate": "30000/1001", "duration": "12.5", **kw}


def test_parse_probe():
    info = video.parse_probe({"streams": [{"codec_type": "audio"}, _stream()], "format": {}})
    assert info == VideoInfo(12.5, 640, 360, pytest.approx(29.97, abs=0.01), "h264")
    # no stream duration (webm): the container's
    info = video.parse_probe({"streams": [_stream(duration=None)], "format": {"duration": "3.0"}})
    assert info.duration == 3.0
    # phones: rotated 90 degrees -> display size is portrait
    rot = _stream(side_data_list=[{"side_data_type": "Display Matrix", "rotation": -90}])
    info = video.parse_probe({"streams": [rot]})
    assert (info.width, info.height) == (360, 640)
    no_avg = _stream(avg_frame_rate="0/0", r_frame_rate="25/1")
    assert video.parse_probe({"streams": [no_avg]}).fps == 25


@pytest.mark.parametrize("meta,reason", [
    ({"streams": [{"codec_type": "audio"}], "format": {"duration": "3"}}, "video_error"),
    ({"streams": [_stream(disposition={"attached_pic": 1})]}, "video_error"),  # cover art only
    ({"streams": [_stream(duration="nan")], "format": {}}, "decode_error"),
    ({"streams": [_stream(duration="N/A")], "format": {"duration": "N/A"}}, "decode_error"),
    ({"streams": [_stream(width=0)]}, "decode_error"),
])
def test_parse_probe_rejects(meta, reason):
    with pytest.raises(VideoError) as e:
        video.parse_probe(meta)
    assert e.value.reason == reason


def test_parse_records():
    err = "\n".join([
        "[info] Stream mapping:",
        "[metadata@kf @ 0x55] [info] frame:0    pts:0       pts_time:0",
        "[metadata@kf @ 0x55] [info] lavfi.scene_score=0.000000",
        "[h264 @ 0x56] [error] error while decoding MB 1 2",
        "[metadata@other @ 0x57] [info] frame:0    pts:9       pts_time:9",
        "[metadata@kf @ 0x55] [info] frame:1    pts:25600   pts_time:2.04",
        "[metadata@kf @ 0x55] [info] lavfi.scene_score=0.402456",
        "[metadata@kf @ 0x55] [info] frame:2    pts:NOPTS   pts_time:NOPTS",
    ])
    recs = video.parse_records(err, "kf")
    assert recs[:2] == [(0.0, 0.0), (2.04, 0.402456)]
    assert np.isnan(recs[2][0]) and recs[2][1] is None


def test_choose_prefers_cuts_pads_evenly_and_spaces():
    # 10 s clip, k=4: first frame, slots every 2 s, cuts at 3.0 (0.9) / 3.2 (0.5) / 7.0 (0.4)
    recs = [(0.0, 0.0), (2.0, 0.0), (3.0, 0.9), (3.2, 0.5), (4.0, 0.01), (6.0, 0.0), (7.0, 0.4),
            (8.0, 0.0)]
    picked = video.choose(recs, 10.0, k=4, scene_threshold=0.3)
    assert picked[0] == (1, "thumbnail")  # first non-cut frame at >= 1.0 s
    times = [recs[i][0] for i, kind in picked[1:]]
    assert times == sorted(times) and len(picked) == 5
    assert 3.0 in times and 7.0 in times and 3.2 not in times  # 3.2 is within 0.5 s of 3.0
    all_t = sorted(recs[i][0] for i, _ in picked)
    assert min(np.diff(all_t)) >= 0.5


def test_choose_single_scene_spreads_and_short_clip_thumbnail():
    recs = [(0.0, 0.0)] + [(2.0 * i, 0.001) for i in range(1, 5)]
    picked = video.choose(recs, 10.0, k=4, scene_threshold=0.3)
    assert [recs[i][0] for i, _ in picked] == [2.0, 0.0, 4.0, 6.0, 8.0]
    assert video.choose(recs, 10.0, k=0, scene_threshold=0.3) == [(1, "thumbnail")]
    short = [(0.0, 0.0), (0.2, 0.0), (0.4, 0.0)]
    assert video.choose(short, 0.5, k=2, scene_threshold=0.3)[0] == (0, "thumbnail")


def test_run_errors_and_timeout_kills_child(monkeypatch):
    with pytest.raises(VideoError) as e:
        video.run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"],
                  10)
    assert e.value.reason == "video_error" and e.value.detail == "boom"
    with pytest.raises(VideoError):
        video.run(["/nonexistent/ffmpeg"], 10)
    procs = _record_popen(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(VideoError) as e:
        video.run([sys.executable, "-c", "import time; time.sleep(30)"], 0.3)
    assert e.value.reason == "video_error" and "timed out" in e.value.detail
    assert time.monotonic() - t0 < 5
    _assert_gone(procs)


def _record_popen(monkeypatch) -> list[subprocess.Popen]:
    procs: list[subprocess.Popen] = []

    class Recording(subprocess.Popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            procs.append(self)

    monkeypatch.setattr(video.subprocess, "Popen", Recording)
    return procs


def _assert_gone(procs):
    assert procs
    for p in procs:
        assert p.returncode is not None  # killed and reaped: no zombie, no orphan
        with pytest.raises(ProcessLookupError):
            os.kill(p.pid, 0)
