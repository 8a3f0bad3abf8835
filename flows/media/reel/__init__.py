"""Highlight reels: cut the selected segments of a video and join them into one mp4 with ffmpeg.

:func:`cut_reel` is the shell (``sift scan --reel LABEL`` calls it); the planning is pure
(``flows.media.reel.plan``).

1. *Inspect*: ffprobe the streams, then list the video packets (demuxing only): every frame time,
   the keyframes, and where the data really ends (packets stopping early: a truncated file).
2. *Plan*: merge touching/overlapping segments, clamp them to the video, snap both ends to the
   nearest frame time, so each piece is a whole number of frames and the pieces add up to the reel.
   Stream copy only when every cut starts and ends on a keyframe (or the end), the codec goes into
   mp4 (h264/hevc) and no overlay is drawn; else every piece is re-encoded (libx264 veryfast). All
   or nothing: the join copies pieces, and copied ones carry the source's codec parameters,
   re-encoded ones ours; one stream cannot mix the two.
3. *Cut*: per segment one ffmpeg writes a video piece and one a PCM audio piece into a
   TemporaryDirectory; the concat demuxer joins them (video copied, audio encoded to AAC once).
   Why not one ``filter_complex`` with trim/concat: trimming one input n times needs ``split``,
   which buffers every decoded frame between cuts (memory grows with the video), and n seeking
   inputs hold n decoders open; pieces run one small ffmpeg at a time. Why video and audio apart:
   ``-frames:v`` (the exact frame count) closes every stream of its output in ffmpeg 5.1, and ``-t``
   on a copied stream counts decode timestamps (B-frames would add frames past the cut); PCM pieces
   cut with ``-t`` are sample-exact, so no AAC padding accumulates at the joins.

The overlay ("LABEL 0.87") is ``drawtext`` from a text file (user text is never put into the graph;
``expansion=none`` prints ``%`` as is) in DejaVu Sans Bold found through fontconfig; without a font
file the reel is made without it and the result says ``overlay: False``. The ffmpeg commands are
ffmpeg-python graphs under sift's guard (``flows.media.video.graph``), which also escapes the font
and text file paths for the filtergraph. Only local files reach ffmpeg
(:func:`flows.media.video.local_input`); no shell is ever used.
"""
from __future__ import annotations

import functools
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import ffmpeg

from flows.media.reel.plan import Cut, Packets, merge_segments, parse_packets, plan_cuts
from flows.media.validate import Reject, check, read_head
from flows.media.video import (SAFE_INPUT, VideoError, VideoInfo, command, local_input, parse_probe, probe,
                               probe_cmd, run, source)

COPY_CODECS = ("h264", "hevc")  # stream-copyable into mp4 and joinable by the concat demuxer
EMPTY_SELECTION = "empty_selection"
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
_JOIN_FORMATS = "concat,mov,wav"  # the join reads only our list files and pieces
_X264 = {"c:v": "libx264", "preset": "veryfast", "crf": 20, "pix_fmt": "yuv420p"}
_NO_EXTRA = {"sn": None, "dn": None}  # a piece never carries a subtitle or data stream


def _ffmpeg(output) -> list[str]:
    """The argv of an ffmpeg-python ``output`` of the reel: guarded, quiet but for errors, and
    overwriting (our own temporary files)."""
    return command(output, loglevel="level+error", overwrite=True)


def overlay_text(label: str, score: float) -> str:
    """What the overlay shows: ``"BAD 0.87"``, or the label alone without a score."""
    return label if math.isnan(score) else f"{label} {score:.2f}".strip()


@functools.lru_cache(maxsize=1)
def find_font() -> str | None:
    """A bold sans font file for the overlay: fontconfig's DejaVu Sans Bold, else the Debian path,
    else None (then reels are made without the overlay)."""
    try:
        out, _ = run(["fc-match", "-f", "%{file}", "DejaVu Sans:style=Bold"], 10.0)
        found = out.decode("utf-8", "replace").strip()
    except VideoError:
        found = ""
    for path in (found, DEJAVU):
        if path and Path(path).is_file():
            return path
    return None


def video_piece_cmd(src: str, cut: Cut, out: str, copy: bool, fps: float,
                    draw: dict | None = None) -> list[str]:
    """One ffmpeg writing ``cut.frames`` video frames from ``cut.start`` to ``out`` (mov).

    Copy: ``-ss`` 1 µs past the keyframe, so the seek lands on it whatever the rounding of the
    printed pts, while the output timestamps still round to 0. Re-encode: ``-ss`` a quarter frame
    early (accurate seek drops the frames before it, so the first kept one is the frame at
    ``cut.start``), timestamps restarted at 0, ``draw`` (drawtext options, see :func:`drawtext`)
    applied, sizes made even for yuv420p.
    """
    if copy:
        v = source(local_input(src), ss=f"{cut.start + 1e-6:.6f}")["V:0"]
        codec = {"c:v": "copy"}
    else:
        early = 0.25 / fps if fps > 0 else 1e-3
        v = source(local_input(src), ss=f"{max(0.0, cut.start - early):.6f}")["V:0"]
        if draw:
            v = v.filter("drawtext", **draw)
        v = (v.filter("setpts", expr="PTS-STARTPTS")
             .filter("scale", w="trunc(iw/2)*2", h="trunc(ih/2)*2").filter("setsar", 1))
        codec = _X264
    return _ffmpeg(v.output("file:" + out, an=None, **_NO_EXTRA, **codec, fps_mode="passthrough",
                            **{"frames:v": cut.frames}, format="mov"))


def audio_piece_cmd(src: str, cut: Cut, out: str) -> list[str]:
    """One ffmpeg writing exactly ``cut.end - cut.start`` s of the first audio stream as PCM WAV
    (``apad`` fills a piece that runs past the end of the audio with silence)."""
    a = source(local_input(src), ss=f"{cut.start:.6f}")["a:0"].filter("apad")
    return _ffmpeg(a.output("file:" + out, vn=None, **_NO_EXTRA, t=f"{cut.end - cut.start:.6f}",
                            **{"c:a": "pcm_s16le"}, format="wav"))


def join_cmd(video_list: str, audio_list: str | None, out: str) -> list[str]:
    """The concat demuxer over the pieces: video copied, audio (when any) encoded to AAC once."""
    def concat(lst: str):
        return source("file:" + lst, protocols="file", formats=_JOIN_FORMATS, format="concat", safe=1)

    streams = [concat(video_list)["v:0"]]
    aac = {}
    if audio_list:
        streams.append(concat(audio_list)["a:0"])
        aac = {"c:a": "aac", "b:a": "128k"}
    return _ffmpeg(ffmpeg.output(*streams, "file:" + out, **{"c:v": "copy"}, **aac,
                                 movflags="+faststart", format="mp4"))


def drawtext(font: str, textfile: str, height: int) -> dict:
    """The overlay's drawtext options: the text of ``textfile`` top left in a dark box, sized to
    ``height``. Paths go in as they are: ffmpeg-python escapes them for the filtergraph."""
    px = max(10, round(height / 15))
    return {"fontfile": font, "textfile": textfile, "expansion": "none", "fontsize": px,
            "fontcolor": "white", "box": 1, "boxcolor": "black@0.6", "boxborderw": px // 4,
            "x": px // 2, "y": px // 2}


def inspect(path: str, timeout: float) -> tuple[VideoInfo, bool, Packets]:
    """(video info, has audio, packets) of ``path``. VideoError reasons: ``missing``, ``empty``,
    ``not_media``/``unsupported_format`` (content is not a video container), ``decode_error``
    (ffprobe cannot read it, or its packets stop before its duration: truncated), ``video_error``
    (ffprobe missing or timed out)."""
    local_input(path)  # refuse URLs before touching anything
    try:
        head, size = read_head(path)
        check(head, size, max_bytes=0, image_formats=(), video_formats=("mp4", "mov", "webm", "mkv"),
              max_video_bytes=1 << 62)
    except Reject as exc:
        raise VideoError(exc.reason, exc.detail) from None
    try:
        out, _ = run(probe_cmd(path), timeout)
        meta = json.loads(out or b"{}")
        info = parse_probe(meta)
    except ValueError:
        raise VideoError("decode_error", "ffprobe printed invalid JSON") from None
    except VideoError as exc:  # run()'s own failures stay video_error; the rest is the content
        if exc.reason == "video_error" and ("timed out" in exc.detail or "cannot run" in exc.detail):
            raise
        raise VideoError("decode_error", f"corrupt or truncated video: {exc.detail}") from None
    audio = any(s.get("codec_type") == "audio" for s in meta.get("streams", []))
    cmd = ["ffprobe", "-hide_banner", "-loglevel", "error", *SAFE_INPUT, "-select_streams", "V:0",
           "-show_entries", "packet=pts_time,duration_time,flags", "-of", "csv=p=0",
           local_input(path)]
    csv, _ = run(cmd, timeout)
    start = float(meta.get("format", {}).get("start_time") or 0.0)
    packets = parse_packets(csv.decode("utf-8", "replace"), start if math.isfinite(start) else 0.0)
    slack = max(0.5, 2.0 / info.fps) if info.fps else 0.5
    if not packets.times or packets.end < info.duration - slack:
        raise VideoError("decode_error", f"truncated video: its data ends at {packets.end:.2f} s "
                                         f"of {info.duration:.2f} s")
    return info, audio, packets


def cut_reel(video: str | Path, segments: list[dict], out: str | Path, overlay: bool = True,
             timeout: float = 600.0) -> dict:
    """Cut ``segments`` of ``video`` and join them into the mp4 ``out`` (written only on success).

    Returns ``{"path", "duration" (probed from the output, s), "segments" (the merged, frame-snapped
    segments used, in order), "mode" ("copy" | "reencode"), "overlay" (drawn or not), "dropped"
    (input segments not used, with a reason)}``. ``timeout`` bounds all ffmpeg runs together.
    VideoError reasons: those of :func:`inspect`, ``empty_selection`` (no segment holds a frame of
    the video), ``video_error`` (an ffmpeg step failed or the time ran out; detail says which).
    """
    deadline = time.monotonic() + timeout
    src, out = str(video), Path(out)

    def left(step: str) -> float:
        rest = deadline - time.monotonic()
        if rest <= 0:
            raise VideoError("video_error", f"reel timed out after {timeout:g} s ({step})")
        return rest

    info, has_audio, packets = inspect(src, left("probe"))
    merged, dropped = merge_segments(list(segments), packets.end)
    cuts, too_short = plan_cuts(merged, packets)
    if not cuts:
        raise VideoError(EMPTY_SELECTION, f"no segment holds a frame of the {packets.end:.2f} s "
                                          f"video ({len(segments)} given)")
    font = find_font() if overlay else None
    copy = font is None and info.codec in COPY_CODECS and all(c.copy for c in cuts)
    with tempfile.TemporaryDirectory(prefix="sift-reel-") as tmp:
        vlist, alist = [], []
        for i, cut in enumerate(cuts):
            draw = None
            if font:
                txt = Path(tmp, f"t{i:05d}.txt")
                txt.write_text(overlay_text(cut.label, cut.score), encoding="utf-8")
                draw = drawtext(font, str(txt), info.height)
            run(video_piece_cmd(src, cut, str(Path(tmp, f"v{i:05d}.mov")), copy, info.fps, draw),
                left(f"video piece {i}"))
            vlist.append(f"file 'v{i:05d}.mov'\n")
            if has_audio:
                run(audio_piece_cmd(src, cut, str(Path(tmp, f"a{i:05d}.wav"))),
                    left(f"audio piece {i}"))
                alist.append(f"file 'a{i:05d}.wav'\n")
        Path(tmp, "video.txt").write_text("".join(vlist))
        if alist:
            Path(tmp, "audio.txt").write_text("".join(alist))
        reel = str(Path(tmp, "reel.mp4"))
        run(join_cmd(str(Path(tmp, "video.txt")), str(Path(tmp, "audio.txt")) if alist else None,
                     reel), left("join"))
        duration = probe(reel, timeout=min(20.0, left("probe output"))).duration
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(reel, out)
    used = [{"start": round(c.start, 6), "end": round(c.end, 6), "label": c.label, "score": c.score}
            for c in cuts]
    return {"path": str(out), "duration": duration, "segments": used,
            "mode": "copy" if copy else "reencode", "overlay": font is not None,
            "dropped": dropped + too_short}
