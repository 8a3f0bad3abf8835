"""Where each decode task of ``sift scan`` starts and ends: chunks of a video, snapped to keyframes.

Chunks make the decode parallel and seekable (``-ss`` before ``-i``, see ``flows.media.video.sample``).
A chunk starts just after a keyframe (from the packet index, no decode), so its seek lands on that
keyframe and wastes nothing, and ``lead`` s later the chunk's own frames begin: the frames in
between give its first frame a scene reference and a grid reference, so a cut or a grid time at a
chunk boundary is seen exactly once (``serve.offline.scan.decode``).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from flows.media.video import SAFE_INPUT, VideoError, local_input, number, run

SEEK_PAST = 1e-3  # s after a keyframe: the demuxer's backward seek lands on that keyframe


@dataclass(frozen=True)
class Chunk:
    seek: float  # s: where ffmpeg starts (-ss before -i); seek <= start
    start: float  # s: the chunk owns the frames with start <= t < end
    end: float
    last: bool  # decode to the end of the stream (no -t)


def keyframes_cmd(path: str) -> list[str]:
    """ffprobe listing each video packet's pts and flags, and the container start time (CSV)."""
    return ["ffprobe", "-hide_banner", "-loglevel", "error", *SAFE_INPUT, "-select_streams", "V:0",
            "-show_entries", "packet=pts_time,flags:format=start_time", "-of", "csv", local_input(path)]


def parse_keyframes(text: str) -> list[float]:
    """``keyframes_cmd`` output -> sorted keyframe times (s) on the timeline ``-ss`` uses (from the
    container's start time). Packets without a timestamp are skipped."""
    start, times = 0.0, []
    for line in text.splitlines():
        parts = line.strip().split(",")
        if parts[0] == "format" and len(parts) > 1:
            start = number(parts[1]) or 0.0
        elif parts[0] == "packet" and len(parts) > 2 and "K" in parts[2]:
            t = number(parts[1])
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
