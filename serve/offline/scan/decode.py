"""One ffmpeg pass per chunk of a video (``serve.offline.scan.plan``): frames on a fixed time grid, scene
cuts, and the first frame of every scene, together.

Why one pass: decoding is the cost (every frame of an h264 stream has to be decoded to get any of
them), and the ``select`` filter computes the scene score of every decoded frame anyway when its
expression uses ``scene``. So the expression keeps a frame when it enters a new ``1/fps`` slot (the
grid of ``flows.media.video.sample``) *or* when it starts a scene, and the per-frame log carries the
score: cut times and keyframes come out of the same decode as the sampled frames. Slots are global
(the slot of ``seek + t``), so a chunk's lead frames give its first frame a grid reference.

This module is what a decode worker imports (Ray pickles :func:`decode_task` by reference): it
stays free of torch and the model code.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from flows.media.video import (VideoError, command, error_lines, last_error, log_record, number, popen, pts_seconds,
                               video_input, video_output)
from flows.media.video.sample import grid_select, grid_slot

from serve.offline.scan.plan import Chunk

TAG = "scan"  # metadata filter instance whose log lines carry pts + scene score
SPAN_MARGIN = 0.01  # s decoded past a chunk's end; the owner filter [start, end) drops the extra
DECODED = pa.schema([("video", pa.int32()), ("t", pa.float64()), ("score", pa.float64()),
                     ("grid", pa.bool_()), ("frame", pa.large_binary()), ("height", pa.int32()),
                     ("width", pa.int32()), ("error", pa.string()), ("detail", pa.string())])


@dataclass(frozen=True, eq=False)
class ScanFrame:
    t: float  # s from the start of the video
    score: float  # ffmpeg scene score vs the previous decoded frame, 0..1
    grid: bool  # the first frame at or after a grid time start + k/fps
    pixels: memoryview  # RGB24, height x width x 3 (a view into the chunk's buffer)


@dataclass(frozen=True, eq=False)
class Decoded:
    """A chunk's own frames, in order: per frame ``t``, ``score`` and ``grid`` (as in ScanFrame),
    and all their pixels back to back in ``pixels`` (frame i at ``[i * size, (i + 1) * size)``):
    ffmpeg's output, never copied (``frame_column`` wraps it for Arrow as it is)."""
    t: list[float]
    score: list[float]
    grid: list[bool]
    pixels: memoryview
    size: int

    def __len__(self) -> int:
        return len(self.t)

    def __iter__(self):
        for i, (t, score, grid) in enumerate(zip(self.t, self.score, self.grid)):
            yield ScanFrame(t, score, grid, self.pixels[i * self.size:(i + 1) * self.size])

    def frame_column(self):
        """The pixels as a pyarrow large_binary array of ``len(self)`` frames, sharing the buffer."""
        offsets = np.arange(len(self) + 1, dtype=np.int64) * self.size
        return pa.Array.from_buffers(pa.large_binary(), len(self), [None, pa.py_buffer(offsets),
                                                              pa.py_buffer(self.pixels)])


def slot(t: float, fps: float) -> int:
    """Grid slot of time ``t`` (s from the start of the video), exactly as the select computes it."""
    return grid_slot(t, fps)


def select_expr(fps: float, seek: float, threshold: float, min_gap: float) -> str:
    """Keep a frame that starts a scene (score > ``threshold`` and at least ``min_gap`` s after the
    previous kept cut, remembered in ``st(0)``) or that enters a new grid slot. ``t`` counts from
    ``seek``; slots count from the start of the video (``t + seek``)."""
    a = f"{seek:.6f}"
    grid = grid_select(fps, offset=seek)
    cut = f"gt(scene,{threshold:g})*gte(t+{a}-ld(0),{min_gap:g})"
    return f"if({cut},st(0,t+{a})+1,{grid})"


def max_frames(chunk: Chunk, fps: float, min_gap: float) -> int:
    """An upper bound of the frames the select can keep in ``chunk`` (grid + spaced cuts + lead)."""
    span = chunk.end - chunk.seek + SPAN_MARGIN
    return math.ceil(span * fps) + math.ceil(span / min_gap) + 4


def scan_cmd(path: str, width: int, height: int, fps: float, chunk: Chunk, threshold: float,
             min_gap: float, threads: int = 1) -> list[str]:
    """ffmpeg decoding ``chunk`` of the first real video stream: kept frames as raw RGB24 on
    stdout, one ``pts`` (µs from ``seek``, ``settb=AVTB``) + scene score record each on stderr.
    The select runs first (on the decoder's own pixels), so only kept frames are scaled.
    ``threads``: the decoder's (0: ffmpeg's choice, a frame thread per core and more). Chunks run
    in parallel, so one each is the default: on the 10-minute bench video, two chunks at a time
    took 27.0 CPU-s with one thread each and 29.3 with ffmpeg's choice, and less wall time."""
    seek = {"ss": f"{chunk.seek:.6f}"} if chunk.seek > 0 else {}
    span = {} if chunk.last else {"t": f"{chunk.end - chunk.seek + SPAN_MARGIN:.6f}"}
    v = (video_input(path, **seek, **({"threads": threads} if threads else {}))
         .filter("select", expr=select_expr(fps, chunk.seek, threshold, min_gap)).filter("settb", "AVTB")
         .filter("metadata", mode="add", key="sift", value=1).filter(f"metadata@{TAG}", mode="print")
         .filter("scale", width, height, flags="area").filter("setsar", 1).filter("format", "rgb24"))
    return command(video_output(v, "pipe:1", "passthrough", **span, format="rawvideo", pix_fmt="rgb24",
                                **{"frames:v": max_frames(chunk, fps, min_gap)}))


def parse_log(stderr: str) -> list[tuple[float, float]]:
    """``metadata@scan=mode=print`` log -> [(pts in s from the seek, scene score)] in output order.
    A pts that is not an integer (NOPTS) becomes NaN."""
    records: list[tuple[float, float]] = []
    for line in stderr.splitlines():
        rec = log_record(line, TAG)
        if rec is None:
            continue
        if rec[0] == "frame":
            records.append((pts_seconds(rec[1]), 0.0))
        elif rec[1] == "lavfi.scene_score" and records:
            records[-1] = (records[-1][0], number(rec[2]) or 0.0)
    return records


def frames_of(out: memoryview, records: list[tuple[float, float]], width: int, height: int,
              chunk: Chunk, fps: float) -> Decoded:
    """Pair stdout frames with log records; keep the chunk's own frames, flag the grid ones.

    A kept frame is a grid frame when it is the first kept frame of its slot: the select keeps the
    first decoded frame of every slot, so that is exactly the one (lead frames included in the
    comparison, then dropped by the owner filter ``start <= t < end``). Timestamps only grow, so
    the owned frames are one run of the output, and their pixels a slice of it.
    """
    size = width * height * 3
    n = len(out) // size
    if len(out) % size or len(records) < n:
        raise VideoError("decode_error", f"{len(out)} bytes / {len(records)} records for {width}x{height}")
    base = float(f"{chunk.seek:.6f}")
    end = math.inf if chunk.last else chunk.end
    ts, scores, grid, first, prev = [], [], [], None, None
    for i, (pts, score) in enumerate(records[:n]):
        if math.isnan(pts):
            raise VideoError("decode_error", "frame without timestamp")
        t = base + pts
        s = slot(t, fps)
        if chunk.start <= t < end:
            first = i if first is None else first
            ts.append(t)
            scores.append(score)
            grid.append(s != prev)
        prev = s
    first = first or 0
    return Decoded(ts, scores, grid, memoryview(out)[first * size:(first + len(ts)) * size], size)


def decode_chunk(path: str, width: int, height: int, fps: float, chunk: Chunk, threshold: float,
                 min_gap: float, timeout: float, threads: int = 1) -> Decoded:
    """Decode ``chunk`` (see module docstring). VideoError: video_error (ffmpeg failed or timed out)
    or decode_error (no frames where the grid has some, a short frame, or a decode that logged
    errors and stopped well before the chunk's end: a truncated or corrupt file)."""
    hint = (math.ceil((chunk.end - chunk.seek + SPAN_MARGIN) * fps) + 8) * width * height * 3
    cmd = scan_cmd(path, width, height, fps, chunk, threshold, min_gap, threads)
    out, err = run_large(cmd, timeout, hint)
    frames = frames_of(out, parse_log(err), width, height, chunk, fps)
    expected = chunk.end - chunk.start >= 1.0 / fps
    if expected and not len(frames):
        raise VideoError("decode_error", last_error(err) if error_lines(err) else "no frames decoded")
    if error_lines(err) and len(frames) and frames.t[-1] < chunk.end - max(1.0, 2.0 / fps):
        raise VideoError("decode_error",
                         f"decoded to {frames.t[-1]:.1f} s of {chunk.end:.1f} s: {last_error(err)}")
    return frames


def run_large(cmd: list[str], timeout: float, size_hint: int) -> tuple[memoryview, str]:
    """:func:`run` for a command that writes a lot to stdout (raw frames): same errors, but stdout
    goes straight into one buffer of about ``size_hint`` bytes (doubled when short) through a 1 MiB
    pipe, and stderr is drained by a thread. Why: ``communicate`` reads 32 KiB at a time and joins
    the pieces (a second copy); at ~1 MB a frame that was ~0.2 s of CPU per 100 frames.
    Returns (a view of the bytes written, stderr text)."""
    proc = popen(cmd)
    _widen_pipe(proc.stdout)
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    timed_out = threading.Event()
    watchdog = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
    watchdog.daemon = True
    buf, n = bytearray(max(1 << 20, size_hint)), 0
    try:
        drain.start()
        watchdog.start()
        while True:
            if n == len(buf):
                buf.extend(bytes(len(buf)))
            k = proc.stdout.raw.readinto(memoryview(buf)[n:])
            if not k:
                break
            n += k
        proc.wait()
        drain.join()
    finally:  # timeout, KeyboardInterrupt, task cancellation: never orphan it
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        drain.join(timeout=5.0)
        proc.stdout.close()
        proc.stderr.close()
    if timed_out.is_set():
        raise VideoError("video_error", f"{cmd[0]} timed out after {timeout:g} s")
    text = b"".join(err).decode("utf-8", "replace")
    if proc.returncode != 0:
        raise VideoError("video_error", last_error(text) or f"{cmd[0]} exited {proc.returncode}")
    return memoryview(buf)[:n], text


def _widen_pipe(f) -> None:
    """Ask Linux for a 1 MiB pipe (64 KiB by default): a frame in a few writes, not sixteen."""
    try:
        import fcntl

        fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ImportError):  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
        pass


def decode_task(batch: pa.Table, cfg) -> pa.Table:
    """Ray Data shell around ``decode_chunk``: chunk items (``serve.offline.scan.plan_video``) -> one row
    per kept frame (raw RGB), or one error row per chunk that failed. ``cfg``: a ScanConfig. The
    frame column wraps ffmpeg's output as it is."""
    parts = []
    for it in batch.to_pylist():
        chunk = Chunk(it["seek"], it["start"], it["end"], it["last"])
        try:
            d = decode_chunk(it["path"], it["width"], it["height"], cfg.fps, chunk,
                             cfg.scene_threshold, cfg.min_scene_s, cfg.ffmpeg_timeout, cfg.ffmpeg_threads)
        except VideoError as exc:
            parts.append(_error_row(it["video"], exc.reason, exc.detail))
            continue
        except Exception as exc:  # an unexpected failure is this video's error, not the job's
            parts.append(_error_row(it["video"], "internal_error", f"{type(exc).__name__}: {exc}"[:300]))
            continue
        n = len(d)
        full = lambda v, t: pa.array([v] * n, t)
        parts.append(pa.table([full(it["video"], pa.int32()), pa.array(d.t, pa.float64()),
                               pa.array(d.score, pa.float64()), pa.array(d.grid, pa.bool_()),
                               d.frame_column(), full(it["height"], pa.int32()),
                               full(it["width"], pa.int32()), full("", pa.string()),
                               full("", pa.string())], schema=DECODED))
    return pa.concat_tables(parts) if parts else DECODED.empty_table()


def _error_row(video: int, reason: str, detail: str) -> pa.Table:
    return pa.Table.from_pylist([{"video": video, "t": math.nan, "score": 0.0, "grid": False, "frame": b"",
                                  "height": 0, "width": 0, "error": reason, "detail": detail}], schema=DECODED)
