"""flows.media.video on real ffmpeg: probing, scene cuts, keyframes, limits and broken inputs, on clips
generated once per module with lavfi sources, so every cut time is known exactly.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import time

import numpy as np
import pytest

from flows.media import video
from flows.media.video import Frame, VideoError
from tests.flows.test_video import _assert_gone, _record_popen

S = "160x120"  # tiny frames keep the whole module fast


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
