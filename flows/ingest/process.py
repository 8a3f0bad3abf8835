"""The per-item preprocessing core: one work item in, output rows or one reject row out.

Pure Python (no Ray): ``process_batch`` is what the Ray actors call, what the single-process
benchmark baseline calls, and what the tests call. It never raises for a bad item.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import time
from typing import Iterable

import pyarrow as pa
from PIL import Image

from flows.ingest import spans
from flows.media import images, video
from flows.media.video.sample import sample_frames
from flows.ingest.config import PreprocessConfig
from flows.core.schema import FRAME, IMAGE, THUMBNAIL
from flows.media.validate import Reject, check, read_head, read_limited, sha256_file

# staging schema: the output columns plus bookkeeping (reject info; which actor did it, when)
STAGING_SCHEMA = pa.schema([
    ("id", pa.string()), ("group_id", pa.string()), ("kind", pa.string()), ("label", pa.int32()),
    ("label_name", pa.string()), ("pool", pa.string()), ("score", pa.float64()), ("tags", pa.string()),
    ("source", pa.string()), ("path", pa.string()), ("timestamp", pa.float64()),
    ("width", pa.int32()), ("height", pa.int32()), ("bytes", pa.int32()), ("quality", pa.int32()),
    ("sha256", pa.string()), ("phash", pa.string()), ("image", pa.binary()),
    ("reject_reason", pa.string()), ("reject_detail", pa.string()),
    ("worker", pa.string()), ("t_start", pa.float64()), ("t_end", pa.float64()),
])
_EMPTY = {"timestamp": math.nan, "width": 0, "height": 0, "bytes": 0, "quality": 0,
          "phash": "", "image": b"", "reject_reason": "", "reject_detail": ""}


def _base(item: dict) -> dict:
    return {"label": int(item["label"]), "label_name": item["label_name"], "pool": item["pool"],
            "score": float(item.get("score", math.nan)), "tags": item.get("tags") or "", "source": item["source"],
            "path": item["path"]}


def reject_row(item: dict, reason: str, detail: str) -> dict:
    row = {**_EMPTY, **_base(item), "id": "", "group_id": item.get("group", ""), "kind": "",
           "sha256": "", "reject_reason": reason, "reject_detail": detail[:500]}
    return row


def process_image(data: bytes, sha: str, item: dict, cfg: PreprocessConfig) -> list[dict]:
    img = images.open_image(data, max_pixels=cfg.max_pixels, min_side=cfg.min_side,
                            short_edge=cfg.short_edge)
    stored = images.prepare(img, cfg.short_edge, cfg.byte_budget, cfg.max_quality, cfg.min_quality)
    return [{**_EMPTY, **_base(item), **stored, "id": sha, "group_id": item["group"] or sha,
             "kind": IMAGE, "sha256": sha}]


def _frame_row(item: dict, sha: str, group: str, fr: video.Frame, kind: str, cfg) -> dict:
    """A decoded video frame stored like an image, in the video's group."""
    stored = images.prepare(Image.fromarray(fr.image), cfg.short_edge, cfg.byte_budget,
                            cfg.max_quality, cfg.min_quality)
    return {**_EMPTY, **_base(item), **stored, "id": f"{sha}#t={fr.timestamp:.3f}",
            "group_id": group, "kind": kind, "sha256": sha, "timestamp": float(fr.timestamp)}


def sample_video(path: str, cfg: PreprocessConfig) -> list[video.Frame]:
    """``video_mode=sample``: frames from ``video_start_s`` on an even grid of ``video_fps`` (or the
    video's own rate / ``video_every_n_frames``), lowered so at most ``video_max_frames`` cover the
    rest of the video (the span sampler's rule). VideoError when it cannot be decoded or the start
    is past the end."""
    info = video.probe(path, timeout=min(20.0, cfg.ffmpeg_timeout))
    video.check_limits(info, cfg.max_video_seconds, cfg.max_video_pixels)
    length = info.duration - cfg.video_start_s
    if not length > 0:
        raise video.VideoError("video_error", f"video_start_s={cfg.video_start_s:g} is past the end "
                                              f"({info.duration:.2f} s)")
    if cfg.video_every_n_frames and not info.fps > 0:
        raise video.VideoError("video_error", "video_every_n_frames: the video's frame rate is unknown")
    fps = cfg.video_fps or info.fps / cfg.video_every_n_frames
    frames = sample_frames(path, fps=spans.span_rate(length, fps, cfg.video_max_frames), short_edge=cfg.short_edge,
                           start=cfg.video_start_s, timeout=cfg.ffmpeg_timeout,
                           max_seconds=cfg.max_video_seconds, max_pixels=cfg.max_video_pixels)
    try:
        return list(itertools.islice(frames, cfg.video_max_frames))
    finally:
        frames.close()  # kills ffmpeg if the cap stopped us early


def process_video(path: str, sha: str, item: dict, cfg: PreprocessConfig) -> list[dict]:
    """Thumbnail + keyframes (or, ``video_mode=sample``, frames on a grid), each stored like an
    image; all share the video's group."""
    try:
        if cfg.video_mode == "sample":
            frames = sample_video(path, cfg)
        else:
            frames = video.extract_keyframes(
                path, short_edge=cfg.short_edge, k=cfg.video_keyframes, scene_threshold=cfg.scene_threshold,
                timeout=cfg.ffmpeg_timeout, max_seconds=cfg.max_video_seconds,
                max_pixels=cfg.max_video_pixels)
    except video.VideoError as exc:
        raise Reject(exc.reason, exc.detail) from None
    group = item["group"] or sha
    return [_frame_row(item, sha, group, fr, THUMBNAIL if fr.kind == "thumbnail" else FRAME, cfg)
            for fr in frames]


def _as_span(item: dict, span: dict) -> dict:
    """``item`` (a work item or a row) with the label of ``span``."""
    return {**item, **{k: span[k] for k in ("label", "label_name", "pool")}}


def reject_rows(item: dict, reason: str, detail: str) -> list[dict]:
    """One reject row per manifest line the item stands for: its whole line (if any), each span."""
    rows = [reject_row(item, reason, detail)] if item.get("whole", True) else []
    return rows + [reject_row(_as_span(item, sp), reason, f"{spans.describe(sp)}: {detail}")
                   for sp in spans.spans_of(item)]


def process_spans(path: str, sha: str, item: dict, cfg: PreprocessConfig,
                  whole: list[dict]) -> list[dict]:
    """Frame rows sampled inside the item's spans (labeled by span), reject rows for the spans that
    cannot be used, and the ``whole`` video's rows relabeled where they fall inside a span.

    A span that fails to decode is rejected as a whole (its partial frames dropped); the others
    still count. Every row shares the video's group, so all of them land in one split.
    """
    try:
        info = video.probe(path, timeout=min(20.0, cfg.ffmpeg_timeout))
        video.check_limits(info, cfg.max_video_seconds, cfg.max_video_pixels)
    except video.VideoError as exc:
        raise Reject(exc.reason, exc.detail) from None
    kept, rejected = spans.plan_spans(spans.spans_of(item), info.duration)
    rows = [reject_row(_as_span(item, sp), reason, detail) for sp, reason, detail in rejected]
    group = item["group"] or sha
    taken: dict[str, dict] = {}
    for sp in kept:
        try:
            frames = spans.sample_span(path, sp, cfg)
        except video.VideoError as exc:
            rows += [reject_row(_as_span(item, part), exc.reason, f"{spans.describe(part)}: "
                                f"{exc.detail}") for part in sp["parts"]]
            continue
        for fr in frames:
            row = _frame_row(_as_span(item, sp), sha, group, fr, FRAME, cfg)
            taken.setdefault(row["id"], row)
    for row in whole:  # spans win inside spans
        inside = [sp for sp in kept if sp["start"] <= row["timestamp"] < sp["end"]]
        if row["id"] not in taken:
            rows.append(_as_span(row, inside[0]) if inside else row)
    return [*rows, *taken.values()]


def process_item(item: dict, cfg: PreprocessConfig) -> list[dict]:
    """One work item -> its rows, or reject rows (one per manifest line it stands for). Never
    raises. Spans on an image are rejected (``bad_span``); the image itself is still used."""
    if item.get("reject"):
        return [reject_row(item, item["reject"], item.get("detail", ""))]
    # a fetched URL is read from its downloaded file; its rows keep the URL as their path
    path, whole, has_spans = item.get("local") or item["path"], item.get("whole", True), bool(item.get("spans"))
    try:
        head, size = read_head(path)
        what = check(head, size, max_bytes=cfg.max_bytes, image_formats=cfg.image_formats,
                     video_formats=cfg.video_formats, max_video_bytes=cfg.max_video_bytes)
        if what.kind == "image":
            data = read_limited(path, cfg.max_bytes)
            rows = process_image(data, hashlib.sha256(data).hexdigest(), item, cfg) if whole else []
            return rows + reject_rows({**item, "whole": False}, "bad_span",
                                      "spans need a video, this is an image")
        sha = sha256_file(path)
        rows = process_video(path, sha, item, cfg) if whole else []
        return process_spans(path, sha, item, cfg, rows) if has_spans else rows
    except Reject as exc:
        return reject_rows(item, exc.reason, exc.detail)
    except Exception as exc:  # a bug or an exotic failure must not lose the item or kill the job
        return reject_rows(item, "internal_error", f"{type(exc).__name__}: {exc}")


def process_batch(items: Iterable[dict], cfg: PreprocessConfig, worker: str = "local") -> pa.Table:
    """Many work items -> one Arrow table in ``STAGING_SCHEMA`` (rows and rejects together)."""
    t0 = time.time()
    rows = [row for item in items for row in process_item(item, cfg)]
    t1 = time.time()
    for row in rows:
        row["worker"], row["t_start"], row["t_end"] = worker, t0, t1
    return pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)
