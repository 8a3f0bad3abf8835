"""Frame sampling at a fixed rate, streamed: for scoring long videos (serving API, scanners).

One ffmpeg process per window decodes only what it needs (``-ss`` before ``-i`` seeks the input)
and writes raw RGB24 frames to stdout while the filter graph logs each frame's pts (microseconds) to
stderr. :func:`sample_frames` reads stdout one frame (exactly ``w*h*3`` bytes) at a time, so memory
stays at about one frame however long the video is; a thread drains stderr into a queue and the Nth
frame on stdout is paired with the Nth record.

Why a ``select`` on time and not the ``fps`` filter: ``fps`` stamps each output with its grid time,
while the frame it passes on can be up to half an output period away from it (seeking to 3.3 s with
``fps=2``, the frame stamped 3.8 s was decoded at 4.04 s). The select keeps the first real frame at
or after each ``start + k/fps``, so every timestamp is that of the pixels. With ``-ss`` before
``-i`` ffmpeg shifts timestamps to start at 0 at ``start`` and (without ``-copyts``) also
subtracts the file's start time, so ``start + pts`` is time from the start of the video, the same
timeline as the unseeked decode. ``-copyts`` would instead give raw container timestamps (13.0 for
3.0 s into a file whose timestamps begin at 10) and make the output ``-t`` cut everything.
"""
from __future__ import annotations

import math
import queue
import subprocess
import threading
import time
from collections import deque
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from flows.core.schema import FRAME
from flows.media.video import (Frame, VideoError, check_limits, command, local_input, log_record, output_size, popen,
                               probe, pts_seconds, run, video_input, video_output)

_TAG = "smp"  # metadata filter instance whose log lines carry the per-frame pts
_EPS = 1e-3  # of a sampling period: a frame this close before a grid time counts as on it


def grid_rate(fps: float) -> Fraction:
    """``fps`` as a small fraction (2.0 -> 2, 1/3 -> 1/3, 29.97 -> 2997/100): the frame grid's rate,
    exact in ffmpeg's select expressions (the one grid of preprocessing, serving and scans)."""
    return Fraction(fps).limit_denominator(1001)


def grid_slot(t: float, fps: float, offset: float = 0.0) -> int:
    """The grid slot of time ``t`` (+ ``offset`` s), exactly as :func:`grid_select` computes it."""
    r = grid_rate(fps)
    return math.floor((t + offset) * r.numerator / r.denominator + _EPS)


def grid_select(fps: float, offset: float = 0.0) -> str:
    """ffmpeg select: keep the first frame, then each frame that enters a new ``1/fps`` slot; slots
    count from ``-ss`` (``t``) plus ``offset`` s (a chunk that starts at ``offset`` keeps the grid of
    the whole video)."""
    r = grid_rate(fps)
    var = "%s" if not offset else f"(%s+{offset:.6f})"
    slot = f"floor({var}*{r.numerator}/{r.denominator}+{_EPS:g})"
    return f"if(isnan(prev_t),1,gt({slot % 't'},{slot % 'prev_t'}))"


def _window(duration: float, fps: float, start: float | None, end: float | None
            ) -> tuple[float, float]:
    """Validated ``[start, end)`` clamped to ``[0, duration]``."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, not {fps}")
    s = 0.0 if start is None else float(start)
    e = duration if end is None else min(float(end), duration)
    if not math.isfinite(s) or s < 0 or (end is not None and not float(end) > s):
        raise ValueError(f"need 0 <= start < end, not start={start}, end={end}")
    return s, e


def sample_times(duration: float, fps: float, start: float | None = None,
                 end: float | None = None) -> list[float]:
    """The grid ``start + k/fps`` inside ``[start, min(end, duration))``: where frames are taken.

    :func:`sample_frames` yields at most one frame per grid time, the first real frame at or after
    it (so at most this many; fewer when the video has fewer frames than the grid).
    """
    s, e = _window(duration, fps, start, end)
    n = max(0, math.ceil((e - s) * fps - _EPS))
    return [s + k / fps for k in range(n)]


def select_expr(fps: float) -> str:
    """Keep the first frame, then each frame that enters a new ``1/fps`` slot (slots counted
    from the first timestamp 0, i.e. from ``-ss``)."""
    return grid_select(fps)


def sample_cmd(path: str, out_w: int, out_h: int, fps: float, start: float | None = None,
               end: float | None = None, max_frames: int | None = None) -> list[str]:
    """One ffmpeg decoding ``[start, end)`` of the first real video stream of ``path``: frames at
    ``fps`` as raw RGB24 (out_h x out_w x 3) on stdout, one pts record each on stderr, relative
    to ``start`` (see the module docstring). ``end`` becomes the output ``-t end-start``.

    The select runs before scaling, so only kept frames are scaled. ``settb=AVTB``: the logged
    integer ``pts`` is then in microseconds (``pts_time`` is printed with 6 significant digits
    only: 1092.67 for 1092.6667). ``metadata=add`` gives each kept frame a key, since
    ``metadata=print`` logs only frames that have one. ``-fps_mode passthrough``: no frame
    duplicated or dropped after the log, so frames and records stay in step.
    """
    seek = {"ss": f"{start:.6f}"} if start else {}
    span = {"t": f"{end - (start or 0.0):.6f}"} if end is not None else {}
    cap = {"frames:v": max_frames} if max_frames is not None else {}
    v = (video_input(path, **seek).filter("select", expr=select_expr(fps)).filter("settb", "AVTB")
         .filter("metadata", mode="add", key="sift", value=1).filter(f"metadata@{_TAG}", mode="print")
         .filter("scale", out_w, out_h, flags="area").filter("setsar", 1).filter("format", "rgb24"))
    return command(video_output(v, "pipe:1", "passthrough", **span, **cap, format="rawvideo",
                                pix_fmt="rgb24"))


def sample_frames(path: str, fps: float = 2.0, short_edge: int = 448, start: float | None = None,
                  end: float | None = None, timeout: float = 600.0, max_seconds: float = 3600.0,
                  max_pixels: int = 8_294_400, chunk: float | None = None,
                  on_start: Callable[[subprocess.Popen], None] | None = None) -> Iterator[Frame]:
    """Frames (kind "frame", ``scene_score`` None) of ``path`` every ``1/fps`` s of
    ``[start, end)``, as a generator that streams them while ffmpeg decodes.

    The probe and the limits run now, so a bad or oversized file raises VideoError from this call;
    ffmpeg starts at the first ``next()``. ``chunk`` (s): decode the window as consecutive
    segments of about that length (rounded to whole periods, so the grid is unchanged), one ffmpeg
    each, every one seeking to its start. ``timeout`` limits each ffmpeg's wall time, time the
    consumer spends between frames included: at the deadline the process is killed even while the
    generator is suspended. Closing the generator (or dropping it) kills and reaps the process.
    ``on_start`` receives each ``Popen`` (tests, cancellation).

    VideoError reasons: video_error (probe failed, ffmpeg failed or timed out), video_too_long,
    video_too_big, decode_error (a window with no frames, a short frame, a frame without timestamp,
    or a decode that logged errors and stopped well before the end of its window). Errors found at
    the end of a window are raised after its frames have been yielded.
    """
    local_input(path)  # refuse URLs and bad arguments before running anything
    _window(math.inf, fps, start, end)
    if chunk is not None and not chunk > 0:
        raise ValueError(f"chunk must be > 0 s, not {chunk}")
    info = probe(path, timeout=min(20.0, timeout))
    check_limits(info, max_seconds, max_pixels)
    s, e = _window(info.duration, fps, start, end)
    w, h = output_size(info.width, info.height, short_edge)
    windows = []
    if e > s:
        step = max(1, round(chunk * fps)) / fps if chunk else e - s
        n = math.ceil((e - s) / step - 1e-9)
        windows = [(s + i * step, min(s + (i + 1) * step, e)) for i in range(n)]
    return _frames(path, w, h, fps, windows, timeout, on_start)


def _frames(path, w, h, fps, windows, timeout, on_start) -> Iterator[Frame]:
    for a, b in windows:
        yield from _stream(path, w, h, fps, a, b, timeout, on_start)


def _stream(path: str, w: int, h: int, fps: float, start: float, end: float, timeout: float,
            on_start) -> Iterator[Frame]:
    """One ffmpeg for ``[start, end)``; kills and reaps it however the generator ends."""
    expected = len(sample_times(end, fps, start, end))
    cmd = sample_cmd(path, w, h, fps, start, end, max_frames=expected + 1)
    proc = popen(cmd)
    times: queue.Queue = queue.Queue()  # pts_time per logged frame, then None at stderr EOF
    log = _Log()
    reader = threading.Thread(target=log.drain, args=(proc.stderr, times), daemon=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    late = VideoError("video_error", f"{cmd[0]} timed out after {timeout:g} s")
    try:
        reader.start()
        watchdog.start()
        if on_start is not None:
            on_start(proc)
        size, n, last = w * h * 3, 0, math.nan
        while True:
            buf = bytearray(size)  # a fresh buffer per frame: yielded images never alias
            got = _read_full(proc.stdout, buf)
            if got == 0:
                break
            if timed_out.is_set():
                raise late
            if got < size:
                raise VideoError("decode_error", f"short frame: {got} of {size} bytes")
            try:  # its record may still be on the way; a dead ffmpeg ends the queue with None
                t = times.get(timeout=timeout + 5.0)
            except queue.Empty:
                t = None
            if t is None or math.isnan(t):
                raise late if timed_out.is_set() else VideoError("decode_error",
                                                                 "frame without timestamp")
            n, last = n + 1, start + t
            yield Frame(last, FRAME, np.frombuffer(buf, np.uint8).reshape(h, w, 3), None)
        rc = proc.wait()
        reader.join()
        if timed_out.is_set():
            raise late
        if rc != 0:
            raise VideoError("video_error", log.last_error() or f"{cmd[0]} exited {rc}")
        if expected and n == 0:
            raise VideoError("decode_error", log.last_error() or "no frames decoded")
        if log.errors and n and last < end - max(1.0, 2.0 / fps):
            raise VideoError("decode_error",
                             f"decoded to {last:.1f} s of {end:.1f} s: {log.last_error()}")
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()  # reaped: no zombie
        proc.stdout.close()
        if reader.is_alive():
            reader.join(timeout=5.0)
        proc.stderr.close()


def _read_full(f, buf: bytearray) -> int:
    """Fill ``buf`` from ``f``; bytes read (fewer only at EOF)."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    return got


class _Log:
    """Collects ffmpeg's stderr in a thread: records go to a queue, the rest is kept briefly."""

    def __init__(self):
        self.tail: deque[str] = deque(maxlen=20)
        self.error_lines: deque[str] = deque(maxlen=5)
        self.errors = 0

    def drain(self, stream, times: queue.Queue) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                rec = log_record(line, _TAG)
                if rec is not None and rec[0] == "frame":
                    times.put(pts_seconds(rec[1]))
                elif "[error]" in line or "[fatal]" in line:
                    self.errors += 1
                    self.error_lines.append(line)
                elif line and f"metadata@{_TAG}" not in line:
                    self.tail.append(line)
        except (OSError, ValueError):  # the pipe closed under us: the process is being torn down
            pass
        finally:
            times.put(None)

    def last_error(self) -> str:
        lines = [ln.strip() for ln in (self.error_lines or self.tail) if ln.strip()]
        return lines[-1][:300] if lines else ""


def frame_at(path: str, t: float, short_edge: int = 448, timeout: float = 30.0,
             max_pixels: int = 8_294_400) -> np.ndarray:
    """The first frame at or after ``t`` s (input seeking: decodes from the keyframe before ``t``
    only), ``short_edge`` px, uint8 H x W x 3 RGB. VideoError decode_error when there is none."""
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"t must be >= 0, not {t}")
    deadline = time.monotonic() + timeout
    info = probe(path, timeout=min(20.0, timeout))
    check_limits(info, math.inf, max_pixels)
    w, h = output_size(info.width, info.height, short_edge)
    out, _ = run(sample_cmd(path, w, h, 1.0, start=t, max_frames=1),
                 max(0.1, deadline - time.monotonic()))
    if len(out) != w * h * 3:
        raise VideoError("decode_error", f"no frame at {t:g} s")
    return np.frombuffer(bytearray(out), np.uint8).reshape(h, w, 3)
