"""Video probing and keyframe extraction with ffmpeg/ffprobe subprocesses.

Pure command builders (unit-testable without ffmpeg) plus one runner, :func:`run`. Frames travel
through pipes as raw RGB24, never through temp files. Every command reads only a local file: inputs
are passed as ``file:<abspath>`` under a protocol and demuxer whitelist, so a hostile path or a
playlist disguised as a video cannot make ffmpeg open URLs or other demuxers' side files. ffmpeg
commands are ffmpeg-python graphs compiled with that guard (``flows.media.video.graph``); ffprobe
has no graph, its argv is written out here with the same whitelists.

Needs ffmpeg >= 5.1 (``-fps_mode``); the select filter tags every frame it sees with
``lavfi.scene_score`` when its expression uses ``scene``, and ``metadata=mode=print`` logs that
together with ``pts_time`` per frame. That stderr log is how frames are matched to timestamps.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from flows.core.errors import ReasonError
from flows.media.video.graph import DEMUXERS, PROTOCOLS, command, source

# The input guard of an ffprobe argv (ffmpeg inputs get it from graph.source).
SAFE_INPUT = ["-protocol_whitelist", PROTOCOLS, "-format_whitelist", DEMUXERS]
_URLISH = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # "http:", "concat:", "subfile:", "file:" ...
_RECORD = re.compile(r"^\[metadata@(\w+) @ [^\]]*\] (?:\[\w+\] )?(.*)$")
_FRAME = re.compile(r"frame:\d+\s+pts:(\S+)(?:\s+pts_time:(\S+))?")
MIN_GAP = 0.5  # seconds: no two returned frames closer than this


class VideoError(ReasonError):
    """A video that cannot be used. ``reason`` is a code from ``flows.core.schema.REJECT_REASONS``."""


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about the first real video stream (not cover art).

    ``width``/``height`` are the *display* size in pixels: rotation metadata (phones) is applied,
    because ffmpeg auto-rotates decoded frames.
    """
    duration: float  # seconds
    width: int
    height: int
    fps: float  # average frames per second; 0.0 when unknown
    codec: str


@dataclass(frozen=True, eq=False)  # eq=False: comparing numpy arrays with == is ambiguous
class Frame:
    timestamp: float  # seconds from the start of the video
    kind: str  # "thumbnail" | "frame"
    image: np.ndarray  # uint8, H x W x 3, RGB
    scene_score: float | None  # ffmpeg scene score 0..1 of this frame vs the previous one


def local_input(path: str) -> str:
    """``path`` as an unambiguous local ffmpeg input (``file:/abs/path``), or VideoError.

    Anything with ``://`` or a ``proto:`` prefix is refused rather than stripped: a caller passing a
    URL here is a bug upstream. The ``file:`` prefix keeps names like ``-y.mp4`` from being options.
    """
    if not path or "://" in path or _URLISH.match(path):
        raise VideoError("video_error", "only local files")
    return "file:" + os.path.abspath(path)


def popen(cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` (stdin closed, stdout and stderr piped): where every ffmpeg and ffprobe of sift
    starts. VideoError("video_error") when the executable cannot run."""
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        raise VideoError("video_error", f"cannot run {cmd[0]}: {exc}") from None


def run(cmd: list[str], timeout: float) -> tuple[bytes, str]:
    """Run ``cmd``; return (stdout bytes, stderr text).

    Raises VideoError("video_error") on a timeout (the child is killed and reaped first), a missing
    executable or a non-zero exit (detail: the last stderr line).
    """
    proc = popen(cmd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:  # timeout, KeyboardInterrupt, task cancellation: never orphan it
        proc.kill()
        proc.communicate()  # reap it and close the pipes: no zombie left behind
        if isinstance(exc, subprocess.TimeoutExpired):
            raise VideoError("video_error", f"{cmd[0]} timed out after {timeout:g} s") from None
        raise
    text = err.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise VideoError("video_error", last_error(text) or f"{cmd[0]} exited {proc.returncode}")
    return out, text


def error_lines(stderr: str) -> list[str]:
    """Error-level lines of a ``-loglevel level+...`` log."""
    return [ln for ln in stderr.splitlines() if "[error]" in ln or "[fatal]" in ln]


def last_error(stderr: str) -> str:
    """The last error line, else the last line (ffprobe's log has no level tags): a short detail."""
    lines = [ln.strip() for ln in (error_lines(stderr) or stderr.splitlines()) if ln.strip()]
    return lines[-1][:300] if lines else ""


def probe_cmd(path: str) -> list[str]:
    """ffprobe command printing streams and format as JSON on stdout."""
    return ["ffprobe", "-hide_banner", "-loglevel", "error", *SAFE_INPUT,
            "-of", "json", "-show_streams", "-show_format", local_input(path)]


def probe(path: str, timeout: float = 20.0) -> VideoInfo:
    """Probe ``path``. VideoError: ``video_error`` (ffprobe failed, no video stream) or
    ``decode_error`` (no usable duration)."""
    out, _ = run(probe_cmd(path), timeout)
    try:
        meta = json.loads(out or b"{}")
    except ValueError:
        raise VideoError("video_error", "ffprobe printed invalid JSON") from None
    return parse_probe(meta)


def parse_probe(meta: dict) -> VideoInfo:
    """ffprobe's JSON -> VideoInfo of the first video stream that is not a cover picture."""
    streams = [s for s in meta.get("streams", []) if s.get("codec_type") == "video"
               and not s.get("disposition", {}).get("attached_pic")]
    if not streams:
        raise VideoError("video_error", "no video stream")
    s = streams[0]
    # The stream's own duration first: the container's also covers a longer audio track.
    duration = number(s.get("duration")) or number(meta.get("format", {}).get("duration"))
    if not duration or duration <= 0:
        raise VideoError("decode_error", "no duration")
    width, height = int(s.get("width") or 0), int(s.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoError("decode_error", "no frame size")
    if round(abs(_rotation(s))) % 180 == 90:  # ffmpeg auto-rotates the decoded frames too
        width, height = height, width
    fps = number(s.get("avg_frame_rate")) or number(s.get("r_frame_rate")) or 0.0
    return VideoInfo(duration, width, height, fps, str(s.get("codec_name", "")))


def number(value) -> float | None:
    """'25/1', '7.000000', 7 -> float; missing, '0/0', 'N/A' or NaN -> None."""
    try:
        if isinstance(value, str) and "/" in value:
            num, den = value.split("/", 1)
            value = float(num) / float(den)
        value = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _rotation(stream: dict) -> float:
    """Degrees of display rotation: side data (ffmpeg >= 5) or the legacy ``rotate`` tag."""
    sides = [d["rotation"] for d in stream.get("side_data_list") or [] if "rotation" in d]
    return number(sides[0] if sides else stream.get("tags", {}).get("rotate")) or 0.0


def check_limits(info: VideoInfo, max_seconds: float, max_pixels: int) -> None:
    """Raise VideoError ``video_too_long`` / ``video_too_big`` before anything is decoded."""
    if info.duration > max_seconds:
        raise VideoError("video_too_long", f"{info.duration:.1f} s > {max_seconds:g} s")
    if info.width * info.height > max_pixels:
        raise VideoError("video_too_big", f"{info.width}x{info.height} > {max_pixels} pixels")


def output_size(width: int, height: int, short_edge: int) -> tuple[int, int]:
    """(w, h) with the shortest edge ``short_edge`` px, never upscaled, both even (yuv-friendly)."""
    scale = min(1.0, short_edge / min(width, height))

    def even(x: float) -> int:  # round down to even, so rounding never upscales
        return max(2, int(x + 1e-6) // 2 * 2)

    return even(width * scale), even(height * scale)


def select_expr(scene_threshold: float, interval: float, scene_gap: float) -> str:
    """ffmpeg ``select`` expression: the first frame, or a scene change at least ``scene_gap`` s
    after the previously selected frame, or the first frame of each ``interval``-s slot.

    ``scene_gap`` bounds how many frames a cut-heavy clip can emit (so ``-frames:v`` never stops the
    decode before the end). ``if(isnan(...))`` because NaN arithmetic would drop the first frame.
    """
    return (f"if(isnan(prev_selected_t),1,"
            f"gt(gt(scene,{scene_threshold:g})*gte(t-prev_selected_t,{scene_gap:g})"
            f"+gt(trunc(t/{interval:g}),trunc(prev_t/{interval:g})),0))")


def keyframes_cmd(path: str, out_w: int, out_h: int, scene_threshold: float, interval: float,
                  max_frames: int) -> list[str]:
    """One decode pass: selected frames as raw RGB24 (out_h x out_w x 3 each) on stdout, and per
    frame a ``pts_time`` + ``lavfi.scene_score`` record on stderr (see :func:`parse_records`).

    Selection runs before scaling so only selected frames are scaled and converted. Cuts closer
    than interval/3 to the previous pick are skipped: at most ~4 frames per interval.
    """
    v = (video_input(path)
         .filter("select", expr=select_expr(scene_threshold, interval, interval / 3))
         .filter("metadata@kf", mode="print")
         .filter("scale", out_w, out_h, flags="area").filter("setsar", 1).filter("format", "rgb24"))
    return command(video_output(v, "pipe:1", "vfr", **{"frames:v": max_frames}, format="rawvideo",
                                pix_fmt="rgb24"))


def scene_cmd(path: str, threshold: float) -> list[str]:
    """One pass on a 160-px-wide copy, logging only frames whose scene score > ``threshold``."""
    v = (video_input(path).filter("scale", 160, -2)
         .filter("select", expr=f"gt(scene,{threshold:g})").filter("metadata@cut", mode="print"))
    return command(video_output(v, "-", "vfr", format="null"))


def video_input(path: str, **options):
    """The first real video stream of local ``path`` (ffmpeg-python stream; ``options`` are input
    options such as ``ss=``), read under the guard. ``V`` (capital) skips cover-art streams."""
    return source(local_input(path), **options)["V:0"]


def video_output(stream, url: str, fps_mode: str, **options):
    """ffmpeg-python output of the video ``stream`` alone to ``url`` (no audio, subtitle or data
    stream). ``fps_mode``: ``vfr`` or ``passthrough``, since otherwise raw/null output would
    duplicate selected frames to a constant rate."""
    return stream.output(url, an=None, sn=None, dn=None, fps_mode=fps_mode, **options)


def log_record(line: str, tag: str) -> tuple[str, str, str] | None:
    """One line of a ``metadata@<tag>=mode=print`` log (ffmpeg's per-frame record) ->
    ("frame", pts, pts_time) for a record's first line (pts_time "" when not printed),
    ("meta", key, value) for its ``key=value`` lines, None for any other line or tag. The one parser
    of these logs: keyframes, sampling and scans read them through it."""
    m = _RECORD.match(line)
    if not m or m.group(1) != tag:
        return None
    body = m.group(2).strip()
    fm = _FRAME.match(body)
    if fm:
        return "frame", fm.group(1), fm.group(2) or ""
    key, sep, value = body.partition("=")
    return ("meta", key, value) if sep else None


def pts_seconds(pts: str, time_base: float = 1e-6) -> float:
    """An integer ``pts`` string in ``time_base`` units -> seconds; NOPTS (not an integer) -> NaN."""
    return int(pts) * time_base if pts.lstrip("-").isdigit() else math.nan


def parse_records(stderr: str, tag: str) -> list[tuple[float, float | None]]:
    """``metadata@<tag>=mode=print`` log -> [(pts_time s, scene score or None)] in output order.

    A record is a ``frame:N pts:P pts_time:T`` line followed by its ``key=value`` lines. NOPTS
    timestamps come back as NaN.
    """
    records: list[tuple[float, float | None]] = []
    for line in stderr.splitlines():
        rec = log_record(line, tag)
        if rec is None:
            continue
        if rec[0] == "frame":
            t = number(rec[2])
            records.append((math.nan if t is None else t, None))
        elif rec[1] == "lavfi.scene_score" and records:
            records[-1] = (records[-1][0], number(rec[2]))
    return records


def scene_cuts(path: str, threshold: float = 0.3, timeout: float = 120.0) -> list[float]:
    """Times (s) of frames whose scene score exceeds ``threshold``, in order."""
    _, err = run(scene_cmd(path, threshold), timeout)
    return [t for t, _ in parse_records(err, "cut")]


def choose(records: list[tuple[float, float | None]], duration: float, k: int,
           scene_threshold: float, min_gap: float = MIN_GAP) -> list[tuple[int, str]]:
    """Pick [(index into records, kind)]: the thumbnail, then up to ``k`` frames sorted by time.

    Thumbnail: the first non-cut frame at or after 10% of the duration (cut frames can be mid
    transition), else the first frame. Frames: cuts by descending score, then the evenly spaced
    frames farthest from everything chosen, then the first frame; none within ``min_gap`` s of
    another.
    """
    times = [t for t, _ in records]

    def is_cut(i: int) -> bool:
        return i > 0 and (records[i][1] or 0.0) > scene_threshold

    late = [i for i, t in enumerate(times) if t >= 0.1 * duration - 1e-3] if duration >= 1.0 else []
    thumb = next((i for i in late if not is_cut(i)), late[0] if late else 0)
    chosen = [thumb]

    def fits(i: int) -> bool:
        return all(abs(times[i] - times[j]) >= min_gap for j in chosen)

    cuts = [i for i in range(len(records)) if is_cut(i)]
    for i in sorted(cuts, key=lambda i: (-(records[i][1] or 0.0), times[i])):
        if len(chosen) <= k and fits(i):
            chosen.append(i)
    evens = [i for i in range(1, len(records)) if not is_cut(i)]
    while len(chosen) <= k:  # farthest-point padding spreads the frames over the whole clip
        free = [i for i in evens if i not in chosen and fits(i)]
        if not free:
            break
        chosen.append(max(free, key=lambda i: min(abs(times[i] - times[j]) for j in chosen)))
    if len(chosen) <= k and 0 not in chosen and fits(0):
        chosen.append(0)  # last resort: the first frame is often a black fade-in
    frames = sorted(chosen[1:], key=lambda i: times[i])
    return [(thumb, "thumbnail")] + [(i, "frame") for i in frames]


def extract_keyframes(path: str, short_edge: int = 448, k: int = 8, scene_threshold: float = 0.3,
                      timeout: float = 60.0, max_seconds: float = 3600.0,
                      max_pixels: int = 8_294_400) -> list[Frame]:
    """The thumbnail, then up to ``k`` keyframes of ``path`` sorted by time.

    One probe plus one decode, both within ``timeout`` s in total; at most ``4k + 8`` frames of
    ``short_edge`` px are ever held in memory. VideoError reasons: video_error, video_too_long,
    video_too_big, decode_error (no frames, or a decode that died well before the end).
    """
    deadline = time.monotonic() + timeout
    info = probe(path, timeout=min(20.0, timeout))
    check_limits(info, max_seconds, max_pixels)
    w, h = output_size(info.width, info.height, short_edge)
    interval = info.duration / (max(k, 1) + 1)
    max_frames = 4 * k + 8  # >= what select_expr can emit: 3 cuts per interval + slots + first
    cmd = keyframes_cmd(path, w, h, scene_threshold, interval, max_frames)
    out, err = run(cmd, max(0.1, deadline - time.monotonic()))

    size = w * h * 3
    n = len(out) // size
    records = parse_records(err, "kf")
    if len(out) % size or len(records) < n:
        raise VideoError("decode_error", f"{len(out)} bytes / {len(records)} records for {w}x{h}")
    if n == 0:
        raise VideoError("decode_error", last_error(err) if error_lines(err) else "no frames decoded")
    records = records[:n]  # the filter may log a frame or two past the -frames:v cap
    if any(math.isnan(t) for t, _ in records):
        raise VideoError("decode_error", "frame without timestamp")
    # A decode that logged errors and stopped short of the end is a truncated or corrupt file.
    end = records[-1][0]
    if n < max_frames and error_lines(err) and end < info.duration - 2 * interval - 1.0:
        raise VideoError("decode_error",
                         f"decoded {end:.1f} s of {info.duration:.1f} s: {last_error(err)}")
    pixels = np.frombuffer(out, np.uint8).reshape(n, h, w, 3)
    # .copy(): the chosen frames must not keep the whole stdout buffer alive.
    return [Frame(records[i][0], kind, pixels[i].copy(), records[i][1])
            for i, kind in choose(records, info.duration, k, scene_threshold)]
