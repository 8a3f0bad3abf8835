"""The pure half of ``flows.media.reel``: which frames a highlight reel is cut from.

Segments are merged and clamped, the video's packet list (from ffprobe) gives its frame times and
keyframes, and each merged segment becomes a :class:`Cut` whose ends are frame times, so each piece
holds a whole number of frames and the pieces' durations add up to the reel's. No ffmpeg here.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

_TOUCH = 1e-3  # s: segments this close are one


@dataclass(frozen=True)
class Packets:
    """The video stream's frame times (s from the start of the file, sorted) and keyframes."""
    times: tuple[float, ...]
    keyframes: frozenset[float]
    end: float  # end of the last frame: where the video data really stops


@dataclass(frozen=True)
class Cut:
    start: float  # a frame time
    end: float  # a frame time, or Packets.end
    frames: int  # video frames in [start, end)
    label: str
    score: float
    copy: bool  # starts and ends on keyframes: stream copy would be exact


def merge_segments(segments: list[dict], duration: float) -> tuple[list[dict], list[dict]]:
    """Segments (``start, end`` s, ``label``, ``score``; any order) -> (merged, dropped).

    Clamped to ``[0, duration]``; touching or overlapping ones become one whose score is the max
    and whose label is that of its best-scored part. Dropped: ``{"segment", "reason"}`` for the
    malformed, the empty and those outside the video, so every input segment is accounted for.
    """
    kept, dropped = [], []
    for seg in segments:
        try:
            s, e = float(seg["start"]), float(seg["end"])
            score = math.nan if seg.get("score") is None else float(seg["score"])
            if not (math.isfinite(s) and math.isfinite(e)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            dropped.append({"segment": seg, "reason": "not a segment with numeric start and end"})
            continue
        s, e = max(0.0, s), min(duration, e)
        if e - s <= _TOUCH:
            dropped.append({"segment": seg, "reason": "empty or outside the video"})
            continue
        kept.append({"start": s, "end": e, "label": str(seg.get("label", "")), "score": score})
    merged: list[dict] = []
    for seg in sorted(kept, key=lambda x: (x["start"], x["end"])):
        last = merged[-1] if merged else None
        if last and seg["start"] <= last["end"] + _TOUCH:
            if _nan_low(seg["score"]) > _nan_low(last["score"]):
                last["label"] = seg["label"]
            last["score"] = max(last["score"], seg["score"], key=_nan_low)
            last["end"] = max(last["end"], seg["end"])
        else:
            merged.append(dict(seg))
    return merged, dropped


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def parse_packets(csv: str, start_time: float = 0.0) -> Packets:
    """``ffprobe -show_entries packet=pts_time,duration_time,flags -of csv=p=0`` -> Packets.

    Packets without a pts, and discarded ones before the start (edit-list priming), are skipped.
    """
    times, keys, end = [], set(), 0.0
    for line in csv.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3:
            continue
        try:
            t = round(float(parts[0]) - start_time, 6)  # ffprobe prints 6 decimals
        except ValueError:
            continue
        if "D" in parts[2] and t < 0:
            continue
        try:
            dur = float(parts[1])
        except ValueError:
            dur = 0.0
        times.append(t)
        end = max(end, t + dur)
        if "K" in parts[2]:
            keys.add(t)
    times.sort()
    return Packets(tuple(times), frozenset(keys), round(max(end, times[-1] if times else 0.0), 6))


def _snap(t: float, grid: list[float]) -> float:
    """The grid point nearest to ``t`` (ties go to the earlier one)."""
    i = bisect.bisect_left(grid, t)
    near = [grid[j] for j in (i - 1, i) if 0 <= j < len(grid)]
    return min(near, key=lambda g: (abs(g - t), g))


def plan_cuts(merged: list[dict], packets: Packets) -> tuple[list[Cut], list[dict]]:
    """Merged segments -> cuts snapped to frame times (each end moves by at most half a frame),
    and the segments that held no whole frame (dropped, with a reason)."""
    grid = [*packets.times, packets.end] if packets.times else []
    cuts, dropped = [], []
    for seg in merged:
        s, e = _snap(seg["start"], grid), _snap(seg["end"], grid)
        n = bisect.bisect_left(packets.times, e) - bisect.bisect_left(packets.times, s)
        if n <= 0:
            dropped.append({"segment": seg, "reason": "shorter than a frame"})
            continue
        copy = s in packets.keyframes and (e in packets.keyframes or e == packets.end)
        cuts.append(Cut(s, e, n, seg["label"], seg["score"], copy))
    return cuts, dropped
