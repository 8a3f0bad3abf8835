"""flows.video: pure command builders and selection logic, then real ffmpeg on generated clips.

Clips are generated once per module with lavfi sources, so every cut time is known exactly.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from flows import video
from flows.schema import REJECT_REASONS
from flows.video import Frame, VideoError, VideoInfo

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
    assert cmd[-5:] == ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    vf = cmd[cmd.index("-vf") + 1]
    assert "gt(scene,0.25)" in vf and "trunc(t/1.5)" in vf and "scale=64:48" in vf
    assert vf.index("select=") < vf.index("metadata@kf") < vf.index("scale=")


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


# ---------------------------------------------------------------- real ffmpeg on generated clips


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
                   check=True, timeout=60)


def _lavfi(out, sources: list[str], *codec: str) -> str:
    """Concatenate lavfi ``sources`` (each a full source spec) into ``out``."""
    ins = [a for src in sources for a in ("-f", "lavfi", "-i", src)]
    n = len(sources)
    graph = "".join(f"[{i}:v]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]"
    _ffmpeg(*ins, "-filter_complex", graph, "-map", "[v]", *codec, str(out))
    return str(out)


X264 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        pytest.skip("ffmpeg/ffprobe not installed")
    d = tmp_path_factory.mktemp("clips")
    c = {}
    # solid colours only: cuts at exactly 2.0 and 4.0 s, nothing else changes
    c["colors"] = _lavfi(d / "colors.mp4", [f"color=c=red:s={S}:d=2:r=25",
                                            f"color=c=blue:s={S}:d=2:r=25",
                                            f"color=c=white:s={S}:d=2:r=25"], *X264)
    # red | blue | moving test pattern: cuts at 2.0 and 5.0 s
    c["cuts"] = _lavfi(d / "cuts.mkv", [f"color=c=red:s={S}:d=2:r=25",
                                         f"color=c=blue:s={S}:d=3:r=25",
                                         f"testsrc=s={S}:d=2:r=25"], *X264)
    c["webm"] = _lavfi(d / "mixed.webm",
                       [f"color=c=red:s={S}:d=1.5:r=25", f"testsrc=s={S}:d=2:r=25"],
                       "-c:v", "libvpx", "-b:v", "300k", "-deadline", "realtime", "-cpu-used", "16",
                       "-threads", "1")  # libvpx's worker threads spin on 2-core boxes
    # one scene, 10 s; faststart so that half the file still has its index
    c["single"] = _lavfi(d / "single.mp4", [f"testsrc=s={S}:d=10:r=25"], *X264,
                         "-movflags", "+faststart")
    c["mov"] = str(d / "single.mov")
    _ffmpeg("-i", c["single"], "-c", "copy", c["mov"])
    # + a 9 s audio track and a cover picture (a second, bigger "video" stream)
    cover = str(d / "cover.png")
    _ffmpeg("-f", "lavfi", "-i", "color=c=lime:s=640x480", "-frames:v", "1", cover)
    c["av"] = str(d / "av.mp4")
    _ffmpeg("-i", c["colors"], "-f", "lavfi", "-i", "sine=d=9", "-i", cover, "-map", "0:v",
            "-map", "1:a", "-map", "2", "-c:v:0", "copy", "-c:a", "aac", "-c:v:1", "png",
            "-disposition:v:1", "attached_pic", c["av"])
    c["rotated"] = str(d / "-rotated.mp4")  # leading dash: must not be taken for an option
    try:  # ffmpeg >= 6.1 sets display rotation with an input option; 5.x with a metadata tag
        _ffmpeg("-display_rotation", "90", "-i", c["colors"], "-c", "copy", "file:" + c["rotated"])
    except subprocess.CalledProcessError:
        _ffmpeg("-i", c["colors"], "-c", "copy", "-metadata:s:v:0", "rotate=90",
                "file:" + c["rotated"])
    # 200 s of 640x360 by stream-copying a 2 s clip: cheap to make, seconds to decode
    seg = _lavfi(d / "seg.mp4", ["testsrc=s=640x360:d=2:r=25"], *X264)
    c["long"] = str(d / "long.mp4")
    _ffmpeg("-stream_loop", "99", "-i", seg, "-c", "copy", c["long"])
    # broken inputs
    c["random"] = str(d / "random.mp4")
    with open(c["random"], "wb") as f:
        f.write(random.Random(0).randbytes(200_000))
    c["zero"] = str(d / "zero.mp4")
    open(c["zero"], "wb").close()
    c["text"] = str(d / "notes.mp4")
    with open(c["text"], "w") as f:
        f.write("this is not a video\n" * 100)
    for name, src in (("half_moov", c["colors"]), ("half_faststart", c["single"])):
        data = open(src, "rb").read()
        c[name] = str(d / f"{name}.mp4")
        with open(c[name], "wb") as f:
            f.write(data[: len(data) // 2])
    return c


def _mean(fr: Frame) -> np.ndarray:
    return fr.image.reshape(-1, 3).mean(axis=0)


def _is(rgb, colour: str) -> bool:
    hi = {"red": (1, 0, 0), "lime": (0, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1)}[colour]
    return all((v > 200) if h else (v < 60) for v, h in zip(rgb, hi))


@pytest.mark.slow
@pytest.mark.parametrize("name,duration,fps,codec", [
    ("colors", 6.0, 25, "h264"), ("cuts", 7.0, 25, "h264"), ("webm", 3.5, 25, "vp8"),
    ("single", 10.0, 25, "h264"), ("mov", 10.0, 25, "h264"),
])
def test_probe(clips, name, duration, fps, codec):
    info = video.probe(clips[name])
    assert info.duration == pytest.approx(duration, abs=0.1)
    assert (info.width, info.height) == (160, 120)
    assert info.fps == pytest.approx(fps, abs=0.01) and info.codec == codec


@pytest.mark.slow
def test_probe_rotated_and_dash_name(clips):
    info = video.probe(clips["rotated"])
    if (info.width, info.height) == (160, 120):
        pytest.skip("this ffmpeg could not write rotation metadata")
    assert (info.width, info.height) == (120, 160)
    frames = video.extract_keyframes(clips["rotated"], short_edge=64, k=2)
    assert all(f.image.shape == (84, 64, 3) for f in frames)  # portrait, as displayed


@pytest.mark.slow
def test_cover_art_and_longer_audio_are_ignored(clips):
    info = video.probe(clips["av"])
    assert info.duration == pytest.approx(6.0, abs=0.1)  # the video's, not the 9 s audio's
    assert (info.width, info.height) == (160, 120)  # not the 640x480 cover
    frames = video.extract_keyframes(clips["av"], short_edge=64, k=4)
    _check_frames(frames, 4, (64, 84, 3))
    assert not any(_is(_mean(f), "lime") for f in frames)
    assert video.scene_cuts(clips["av"]) == pytest.approx([2.0, 4.0], abs=0.25)


@pytest.mark.slow
def test_scene_cuts_exact_on_solid_colours(clips):
    cuts = video.scene_cuts(clips["colors"])
    assert len(cuts) == 2
    assert cuts == pytest.approx([2.0, 4.0], abs=0.25)


@pytest.mark.slow
@pytest.mark.parametrize("name,known", [("cuts", [2.0, 5.0]), ("webm", [1.5])])
def test_scene_cuts_finds_known_cuts(clips, name, known):
    cuts = video.scene_cuts(clips[name])
    for t in known:
        assert any(abs(c - t) <= 0.25 for c in cuts), (t, cuts)


def _check_frames(frames: list[Frame], k: int, shape: tuple[int, int, int]):
    assert 1 <= len(frames) <= k + 1
    assert frames[0].kind == "thumbnail"
    assert all(f.kind == "frame" for f in frames[1:])
    times = [f.timestamp for f in frames[1:]]
    assert times == sorted(times)
    all_t = sorted(f.timestamp for f in frames)
    assert all(b - a >= 0.45 for a, b in zip(all_t, all_t[1:]))
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.shape == shape
        assert f.image.flags["C_CONTIGUOUS"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cuts", "colors"])
def test_extract_keyframes_hits_cuts_and_colours(clips, name):
    frames = video.extract_keyframes(clips[name], short_edge=64, k=8)
    _check_frames(frames, 8, (64, 84, 3))
    info = video.probe(clips[name])
    assert frames[0].timestamp >= 0.1 * info.duration - 0.05
    cuts, colours = {"cuts": ([2.0, 5.0], ["red", "blue", None]),
                     "colors": ([2.0, 4.0], ["red", "blue", "white"])}[name]
    for t in cuts:
        near = [f for f in frames if abs(f.timestamp - t) <= 0.25]
        assert near, (t, [f.timestamp for f in frames])
        assert max(f.scene_score or 0 for f in near) > 0.3
    for f in frames:  # every frame shows the scene it was taken from
        colour = colours[sum(f.timestamp >= t - 1e-3 for t in cuts)]
        if colour:
            assert _is(_mean(f), colour), (f.timestamp, _mean(f))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["single", "mov"])
def test_single_scene_is_padded_evenly(clips, name):
    frames = video.extract_keyframes(clips[name], short_edge=64, k=4)
    _check_frames(frames, 4, (64, 84, 3))
    assert len(frames) == 5
    all_t = sorted(f.timestamp for f in frames)
    assert all(b - a >= 1.5 for a, b in zip(all_t, all_t[1:]))  # spread, not bunched
    assert all_t[-1] - all_t[0] >= 6.0
    assert all((f.scene_score or 0) < 0.3 for f in frames)


@pytest.mark.slow
def test_webm_and_no_upscale(clips):
    frames = video.extract_keyframes(clips["webm"], short_edge=448, k=3)
    _check_frames(frames, 3, (120, 160, 3))
    assert any(abs(f.timestamp - 1.5) <= 0.25 for f in frames)
    assert _is(_mean(min(frames, key=lambda f: f.timestamp)), "red")


@pytest.mark.slow
def test_limits(clips):
    with pytest.raises(VideoError) as e:
        video.extract_keyframes(clips["cuts"], max_seconds=5.0)
    assert e.value.reason == "video_too_long"
    with pytest.raises(VideoError) as e:
        video.extract_keyframes(clips["cuts"], max_pixels=160 * 120 - 1)
    assert e.value.reason == "video_too_big"


@pytest.mark.slow
@pytest.mark.parametrize("name,reasons", [
    ("random", {"video_error"}), ("zero", {"video_error"}), ("text", {"video_error"}),
    ("half_moov", {"video_error", "decode_error"}), ("half_faststart", {"decode_error"}),
])
def test_broken_inputs_are_rejected_promptly(clips, name, reasons):
    t0 = time.monotonic()
    with pytest.raises(VideoError) as e:
        video.extract_keyframes(clips[name], short_edge=64, k=4, timeout=20)
    assert e.value.reason in reasons, (e.value.reason, e.value.detail)
    assert e.value.detail
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_missing_file(tmp_path):
    if not shutil.which("ffprobe"):
        pytest.skip("ffprobe not installed")
    with pytest.raises(VideoError) as e:
        video.probe(str(tmp_path / "nope.mp4"))
    assert e.value.reason == "video_error"


@pytest.mark.slow
def test_timeout_kills_ffmpeg(clips, monkeypatch):
    info = video.probe(clips["long"])
    assert info.duration == pytest.approx(200, abs=0.5)
    procs = _record_popen(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(VideoError) as e:  # the decode alone takes seconds
        video.run(video.keyframes_cmd(clips["long"], 64, 36, 0.3, 50.0, 40), timeout=0.3)
    assert e.value.reason == "video_error" and "timed out" in e.value.detail
    with pytest.raises(VideoError) as e:  # whole pipeline: probe + decode within 0.5 s
        video.extract_keyframes(clips["long"], short_edge=64, k=4, timeout=0.5)
    assert e.value.reason == "video_error"
    assert time.monotonic() - t0 < 5
    _assert_gone(procs)
