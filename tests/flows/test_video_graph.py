"""flows.media.video.graph: every ffmpeg command sift builds with ffmpeg-python carries the guard.

Pure: the compiled argv of each graph is checked, nothing is started (the real runs of these
commands are in test_video_clips.py, test_video_sample_clips.py, test_reel.py and test_corpus.py).
"""
from __future__ import annotations

import os
import subprocess

import ffmpeg
import pytest

from flows.corpus.video import encode_cmd
from flows.media import reel
from flows.media import video
from flows.media.reel.plan import Cut
from flows.media.video import graph
from flows.media.video import sample as vs

SRC = "file:" + os.path.abspath("a.mp4")
CUT = Cut(2.0, 4.0, 50, "BAD", 0.9, True)


@pytest.fixture(autouse=True)
def no_subprocess(monkeypatch):
    """Building a command must never start one."""
    def boom(*a, **kw):
        raise AssertionError("a subprocess was started")
    monkeypatch.setattr(subprocess, "Popen", boom)


def inputs(cmd: list[str]) -> list[tuple[dict[str, str | None], str]]:
    """[(its options {flag: value or None}, url)] per ``-i`` of ``cmd``, options being what stands
    between the previous input (or the executable) and this ``-i``."""
    out, opts, i = [], {}, 1
    while i < len(cmd):
        if cmd[i] == "-i":
            out.append((opts, cmd[i + 1]))
            opts, i = {}, i + 2
        elif cmd[i].startswith("-") and i + 1 < len(cmd) and not cmd[i + 1].startswith("-"):
            opts[cmd[i]], i = cmd[i + 1], i + 2
        else:
            opts[cmd[i]], i = None, i + 1
    return out


def assert_guarded(cmd: list[str], loglevel: str = graph.LOGLEVEL, protocols: str = "file,pipe",
                   formats: str = video.DEMUXERS, urls: tuple[str, ...] = (SRC,)) -> None:
    """ffmpeg, the global options of the guard once each, and both whitelists on every input."""
    assert cmd[0] == "ffmpeg"
    for flag in ("-nostdin", "-hide_banner", "-nostats", "-loglevel"):
        assert cmd.count(flag) == 1, flag
    assert cmd[cmd.index("-loglevel") + 1] == loglevel
    got = inputs(cmd)
    assert [url for _, url in got] == list(urls)
    for opts, _ in got:
        assert opts.get("-protocol_whitelist") == protocols and opts.get("-format_whitelist") == formats
    assert graph.unguarded_inputs(cmd) == []


@pytest.mark.parametrize("build", [
    lambda: video.keyframes_cmd("a.mp4", 64, 48, 0.3, 1.0, 12),
    lambda: video.scene_cmd("a.mp4", 0.3),
    lambda: vs.sample_cmd("a.mp4", 84, 64, 2.0),
    lambda: vs.sample_cmd("a.mp4", 84, 64, 2.0, start=3, end=5, max_frames=5),
    lambda: vs.sample_cmd("a.mp4", 84, 64, 1.0, start=7.5, max_frames=1),  # frame_at's
], ids=["keyframes", "scene", "sample", "sample-window", "frame-at"])
def test_decode_graphs_carry_the_guard_and_read_the_first_video_stream(build):
    cmd = build()
    assert_guarded(cmd)
    fc = cmd[cmd.index("-filter_complex") + 1]
    assert fc.startswith("[0:V:0]")  # capital V: never a cover picture
    last = fc.rsplit("[", 1)[1].rstrip("]")
    assert cmd[cmd.index("-map") + 1] == f"[{last}]" and cmd.count("-map") == 1
    for flag in ("-an", "-sn", "-dn"):
        assert flag in cmd
    out = cmd[cmd.index("-nostdin") - 1]  # the output comes last before the global options
    assert out in ("pipe:1", "-")
    assert cmd[cmd.index("-fps_mode") + 1] in ("vfr", "passthrough")


def test_sample_graph_keeps_the_filter_order_and_seeks_the_input():
    cmd = vs.sample_cmd("a.mp4", 84, 64, 2.0, start=3, end=5, max_frames=5)
    (opts, _), = inputs(cmd)
    assert opts["-ss"] == "3.000000" and "-t" not in opts  # -t is the output's span
    fc = cmd[cmd.index("-filter_complex") + 1]
    names = [part.split("]", 1)[1].split("=", 1)[0] for part in fc.split(";")]
    assert names == ["select", "settb", "metadata", "metadata@smp", "scale", "setsar", "format"]
    assert f"select=expr={vs.select_expr(2.0).replace(',', chr(92) + ',')}[s0]" in fc


def test_reel_graphs_carry_the_guard():
    for cmd in (reel.video_piece_cmd("a.mp4", CUT, "/t/v.mov", True, 25.0),
                reel.video_piece_cmd("a.mp4", CUT, "/t/v.mov", False, 25.0, {"x": 1}),
                reel.audio_piece_cmd("a.mp4", CUT, "/t/a.wav")):
        assert_guarded(cmd, loglevel="level+error")
        assert cmd[-1] == "-y" and cmd[cmd.index("-nostdin") - 1].startswith("file:/t/")
    copy = reel.video_piece_cmd("a.mp4", CUT, "/t/v.mov", True, 25.0)
    assert "-filter_complex" not in copy and copy[copy.index("-map") + 1] == "0:V:0"
    join = reel.join_cmd("/t/video.txt", "/t/audio.txt", "/t/r.mp4")
    assert_guarded(join, loglevel="level+error", protocols="file", formats="concat,mov,wav",
                   urls=("file:/t/video.txt", "file:/t/audio.txt"))
    for opts, _ in inputs(join):
        assert opts["-f"] == "concat" and opts["-safe"] == "1"
    maps = [join[i + 1] for i, a in enumerate(join) if a == "-map"]
    assert maps == ["0:v:0", "1:a:0"]
    silent = reel.join_cmd("/t/video.txt", None, "/t/r.mp4")
    assert_guarded(silent, loglevel="level+error", protocols="file", formats="concat,mov,wav",
                   urls=("file:/t/video.txt",))
    assert [silent[i + 1] for i, a in enumerate(silent) if a == "-map"] == ["0:v:0"]


def test_drawtext_paths_are_escaped_by_ffmpeg_python():
    draw = reel.drawtext("/f/it's:a,b[1];c=d.ttf", "/t/x'y.txt", 120)
    cmd = reel.video_piece_cmd("a.mp4", CUT, "/t/v.mov", False, 25.0, draw)
    fc = cmd[cmd.index("-filter_complex") + 1]
    # value level (\ ' = :), then graph level (\ ' [ ] , ;)
    assert ":fontfile=/f/it\\\\\\'s\\\\:a\\,b\\[1\\]\\;c\\\\=d.ttf:" in fc
    assert ":textfile=/t/x\\\\\\'y.txt:" in fc


def test_probe_argv_is_written_out_with_the_same_whitelists():
    cmd = video.probe_cmd("a.mp4")  # ffprobe has no graph in ffmpeg-python
    assert cmd[0] == "ffprobe" and cmd[-1] == SRC and "-hide_banner" in cmd
    assert cmd[cmd.index("-protocol_whitelist") + 1] == "file,pipe"
    assert cmd[cmd.index("-format_whitelist") + 1] == video.DEMUXERS


def test_command_refuses_an_input_without_the_whitelists():
    bare = ffmpeg.input("file:/a.mp4").output("-", format="null")
    with pytest.raises(ValueError, match="whitelists"):
        graph.command(bare)
    half = ffmpeg.input("file:/b.mp4", protocol_whitelist="file")
    mixed = ffmpeg.output(graph.source("file:/a.mp4")["v:0"], half["a:0"], "-", format="null")
    assert graph.unguarded_inputs(mixed.compile()) == ["file:/b.mp4"]
    assert graph.unguarded_inputs(graph.source("file:/a.mp4").output("-").compile()) == []


def test_corpus_encoder_reads_raw_frames_from_stdin():
    cmd = encode_cmd("/t/v.webm", (64, 48), 10)
    (opts, url), = inputs(cmd)
    assert url == "pipe:0"
    assert opts == {"-f": "rawvideo", "-pix_fmt": "rgb24", "-r": "10", "-s": "64x48"}
    assert cmd[cmd.index("-c:v") + 1] == "libvpx" and cmd[cmd.index("-g") + 1] == "20"
    assert cmd[cmd.index("-flags:v") + 1] == "+bitexact" and cmd[cmd.index("-fflags") + 1] == "+bitexact"
    assert cmd[-1] == "-y" and cmd[cmd.index("-loglevel") + 1] == "error"
    assert cmd[cmd.index("-hide_banner") - 1] == "/t/v.webm"
    mp4 = encode_cmd("/t/v.mp4", (64, 48), 10)
    assert mp4[mp4.index("-c:v") + 1] == "libx264" and mp4[mp4.index("-crf") + 1] == "26"
