"""One ffmpeg pass per chunk of a video: frames on a fixed time grid, scene cuts, and the first
frame of every scene, together.

Why one pass: decoding is the cost (every frame of an h264 stream has to be decoded to get any of
them), and the ``select`` filter computes the scene score of every decoded frame anyway when its
expression uses ``scene``. So the expression keeps a frame when it enters a new ``1/fps`` slot (the
grid of ``flows.video_sample``) *or* when it starts a scene, and the per-frame log carries the
score: cut times and keyframes come out of the same decode as the sampled frames.

Chunks make the decode parallel and seekable (``-ss`` before ``-i``, see ``flows.video_sample``).
A chunk starts just after a keyframe (from the packet index, no decode), so its seek lands on that
keyframe and wastes nothing, and ``lead`` s later the chunk's own frames begin: the frames in
between give its first frame a scene reference and a grid reference (slots are global: the slot of
``seek + t``), so a cut or a grid time at a chunk boundary is seen exactly once.
"""
from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from fractions import Fraction

from flows.video import (_LOGLEVEL, _SAFE_INPUT, VideoError, _errors, _last_error, _num,
                         local_input, run)

TAG = "scan"  # metadata filter instance whose log lines carry pts + scene score
EPS = 1e-3  # of a sampling period, as in flows.video_sample: a frame this close before a grid time is on it
SEEK_PAST = 1e-3  # s after a keyframe: the demuxer's backward seek lands on that keyframe
SPAN_MARGIN = 0.01  # s decoded past a chunk's end; the owner filter [start, end) drops the extra
_RECORD = re.compile(rf"^\[metadata@{TAG} @ [^\]]*\] (?:\[\w+\] )?(.*)$")
_PTS = re.compile(r"frame:\d+\s+pts:(\S+)")


@dataclass(frozen=True)
class Chunk:
    seek: float  # s: where ffmpeg starts (-ss before -i); seek <= start
    start: float  # s: the chunk owns the frames with start <= t < end
    end: float
    last: bool  # decode to the end of the stream (no -t)


@dataclass(frozen=True, eq=False)
class ScanFrame:
    t: float  # s from the start of the video
    score: float  # ffmpeg scene score vs the previous decoded frame, 0..1
    grid: bool  # the first frame at or after a grid time start + k/fps
    pixels: bytes  # RGB24, height x width x 3


def keyframes_cmd(path: str) -> list[str]:
    """ffprobe listing each video packet's pts and flags, and the container start time (CSV)."""
    return ["ffprobe", "-hide_banner", "-loglevel", "error", *_SAFE_INPUT, "-select_streams", "V:0",
            "-show_entries", "packet=pts_time,flags:format=start_time", "-of", "csv", local_input(path)]


def parse_keyframes(text: str) -> list[float]:
    """``keyframes_cmd`` output -> sorted keyframe times (s) on the timeline ``-ss`` uses (from the
    container's start time). Packets without a timestamp are skipped."""
    start, times = 0.0, []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if parts[0] == "format" and len(parts) > 1:
            start = _num(parts[1]) or 0.0
        elif parts[0] == "packet" and len(parts) > 2 and "K" in parts[2]:
            t = _num(parts[1])
            if t is not None:
                times.append(t)
    return sorted(t - start for t in times)


def keyframe_times(path: str, timeout: float = 60.0) -> list[float]:
    """Keyframe times of ``path``'s first video stream, read from the packets (demux, no decode).
    [] when ffprobe fails: chunks then seek blind, which is slower, never wrong."""
    try:
        out, _ = run(keyframes_cmd(path), timeout)
    except VideoError:
        return []
    return parse_keyframes(out.decode("utf-8", "replace"))


def lead_for(video_fps: float) -> float:
    """Seconds decoded before a chunk's first own frame: three frames (0.2 s when fps unknown)."""
    return min(1.0, max(0.05, 3.0 / video_fps)) if video_fps > 0 else 0.2


def plan_chunks(duration: float, keyframes: list[float], chunk_s: float, lead: float) -> list[Chunk]:
    """Cover ``[0, duration)`` with chunks of about ``chunk_s`` s.

    Each later chunk seeks just past the last keyframe at or before its nominal start (when one
    exists in the second half of the previous chunk, else at the nominal start: the seek then
    decodes from the keyframe before, correct but slower) and owns frames from ``lead`` s after it.
    No chunk is shorter than ``chunk_s / 4``.
    """
    if not duration > 0:
        return []
    starts = [(0.0, 0.0)]
    while True:
        prev = starts[-1][1]
        target = prev + chunk_s
        if target >= duration - chunk_s / 4:
            break
        i = bisect.bisect_right(keyframes, target) - 1
        kf = keyframes[i] if i >= 0 else None
        seek = kf + SEEK_PAST if kf is not None and kf + SEEK_PAST > prev + chunk_s / 2 else target
        starts.append((seek, seek + lead))
    ends = [s for _, s in starts[1:]] + [duration]
    return [Chunk(seek, start, end, i == len(starts) - 1)
            for i, ((seek, start), end) in enumerate(zip(starts, ends))]


def _fps(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def slot(t: float, fps: float) -> int:
    """Grid slot of time ``t`` (s from the start of the video), exactly as the select computes it."""
    r = _fps(fps)
    return math.floor(t * r.numerator / r.denominator + EPS)


def select_expr(fps: float, seek: float, threshold: float, min_gap: float) -> str:
    """Keep a frame that starts a scene (score > ``threshold`` and at least ``min_gap`` s after the
    previous kept cut, remembered in ``st(0)``) or that enters a new grid slot. ``t`` counts from
    ``seek``; slots count from the start of the video (``t + seek``)."""
    r, a = _fps(fps), f"{seek:.6f}"
    sl = f"floor((%s+{a})*{r.numerator}/{r.denominator}+{EPS:g})"
    grid = f"if(isnan(prev_t),1,gt({sl % 't'},{sl % 'prev_t'}))"
    cut = f"gt(scene,{threshold:g})*gte(t+{a}-ld(0),{min_gap:g})"
    return f"if({cut},st(0,t+{a})+1,{grid})"


def max_frames(chunk: Chunk, fps: float, min_gap: float) -> int:
    """An upper bound of the frames the select can keep in ``chunk`` (grid + spaced cuts + lead)."""
    span = chunk.end - chunk.seek + SPAN_MARGIN
    return math.ceil(span * fps) + math.ceil(span / min_gap) + 4


def scan_cmd(path: str, width: int, height: int, fps: float, chunk: Chunk, threshold: float,
             min_gap: float) -> list[str]:
    """ffmpeg decoding ``chunk`` of the first real video stream: kept frames as raw RGB24 on
    stdout, one ``pts`` (µs from ``seek``, ``settb=AVTB``) + scene score record each on stderr.
    The select runs first (on the decoder's own pixels), so only kept frames are scaled."""
    seek = ["-ss", f"{chunk.seek:.6f}"] if chunk.seek > 0 else []
    span = [] if chunk.last else ["-t", f"{chunk.end - chunk.seek + SPAN_MARGIN:.6f}"]
    vf = (f"select='{select_expr(fps, chunk.seek, threshold, min_gap)}',settb=AVTB,"
          f"metadata=mode=add:key=sift:value=1,metadata@{TAG}=mode=print,"
          f"scale={width}:{height}:flags=area,setsar=1,format=rgb24")
    return ["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-loglevel", _LOGLEVEL, *_SAFE_INPUT,
            *seek, "-i", local_input(path), "-map", "0:V:0", "-an", "-sn", "-dn", "-vf", vf,
            "-fps_mode", "passthrough", *span, "-frames:v", str(max_frames(chunk, fps, min_gap)),
            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]


def parse_log(stderr: str) -> list[tuple[float, float]]:
    """``metadata@scan=mode=print`` log -> [(pts in s from the seek, scene score)] in output order.
    A pts that is not an integer (NOPTS) becomes NaN."""
    records: list[tuple[float, float]] = []
    for line in stderr.splitlines():
        m = _RECORD.match(line)
        if not m:
            continue
        body = m.group(1).strip()
        fm = _PTS.match(body)
        if fm:
            pts = fm.group(1)
            records.append((int(pts) / 1e6 if pts.lstrip("-").isdigit() else math.nan, 0.0))
        elif body.startswith("lavfi.scene_score=") and records:
            records[-1] = (records[-1][0], _num(body.split("=", 1)[1]) or 0.0)
    return records


def frames_of(out: bytes, records: list[tuple[float, float]], width: int, height: int,
              chunk: Chunk, fps: float) -> list[ScanFrame]:
    """Pair stdout frames with log records; keep the chunk's own frames, flag the grid ones.

    A kept frame is a grid frame when it is the first kept frame of its slot: the select keeps the
    first decoded frame of every slot, so that is exactly the one (lead frames included in the
    comparison, then dropped by the owner filter ``start <= t < end``).
    """
    size = width * height * 3
    n = len(out) // size
    if len(out) % size or len(records) < n:
        raise VideoError("decode_error", f"{len(out)} bytes / {len(records)} records for {width}x{height}")
    base = float(f"{chunk.seek:.6f}")
    end = math.inf if chunk.last else chunk.end
    frames, prev = [], None
    for i, (pts, score) in enumerate(records[:n]):
        if math.isnan(pts):
            raise VideoError("decode_error", "frame without timestamp")
        t = base + pts
        s = slot(t, fps)
        if chunk.start <= t < end:
            frames.append(ScanFrame(t, score, s != prev, out[i * size:(i + 1) * size]))
        prev = s
    return frames


def decode_chunk(path: str, width: int, height: int, fps: float, chunk: Chunk, threshold: float,
                 min_gap: float, timeout: float) -> list[ScanFrame]:
    """Decode ``chunk`` (see module docstring). VideoError: video_error (ffmpeg failed or timed out)
    or decode_error (no frames where the grid has some, a short frame, or a decode that logged
    errors and stopped well before the chunk's end: a truncated or corrupt file)."""
    out, err = run(scan_cmd(path, width, height, fps, chunk, threshold, min_gap), timeout)
    frames = frames_of(out, parse_log(err), width, height, chunk, fps)
    expected = chunk.end - chunk.start >= 1.0 / fps
    if expected and not frames:
        raise VideoError("decode_error", _last_error(err) if _errors(err) else "no frames decoded")
    if _errors(err) and frames and frames[-1].t < chunk.end - max(1.0, 2.0 / fps):
        raise VideoError("decode_error",
                         f"decoded to {frames[-1].t:.1f} s of {chunk.end:.1f} s: {_last_error(err)}")
    return frames
