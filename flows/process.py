"""The per-item preprocessing core: one work item in, output rows or one reject row out.

Pure Python (no Ray): ``process_batch`` is what the Ray actors call, what the single-process
benchmark baseline calls, and what the tests call. It never raises for a bad item.
"""
from __future__ import annotations

import hashlib
import math
import time
from typing import Iterable

import pyarrow as pa
from PIL import Image

from . import images, video
from .config import PreprocessConfig
from .schema import FRAME, IMAGE, THUMBNAIL
from .validate import Reject, check, read_head, read_limited, sha256_file

# staging schema: the output columns plus bookkeeping (reject info; which actor did it, when)
STAGING_SCHEMA = pa.schema([
    ("id", pa.string()), ("group_id", pa.string()), ("kind", pa.string()), ("label", pa.int32()),
    ("label_name", pa.string()), ("pool", pa.string()), ("score", pa.float64()),
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
            "score": float(item.get("score", math.nan)), "source": item["source"],
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


def process_video(path: str, sha: str, item: dict, cfg: PreprocessConfig) -> list[dict]:
    """Thumbnail + keyframes, each stored like an image; all share the video's group."""
    try:
        frames = video.extract_keyframes(
            path, short_edge=cfg.short_edge, k=cfg.video_keyframes, scene_threshold=cfg.scene_threshold,
            timeout=cfg.ffmpeg_timeout, max_seconds=cfg.max_video_seconds,
            max_pixels=cfg.max_video_pixels)
    except video.VideoError as exc:
        raise Reject(exc.reason, exc.detail) from None
    group = item["group"] or sha
    rows = []
    for fr in frames:
        stored = images.prepare(Image.fromarray(fr.image), cfg.short_edge, cfg.byte_budget,
                                cfg.max_quality, cfg.min_quality)
        kind = THUMBNAIL if fr.kind == "thumbnail" else FRAME
        rows.append({**_EMPTY, **_base(item), **stored, "id": f"{sha}#t={fr.timestamp:.3f}",
                     "group_id": group, "kind": kind, "sha256": sha,
                     "timestamp": float(fr.timestamp)})
    return rows


def process_item(item: dict, cfg: PreprocessConfig) -> list[dict]:
    """One work item -> its rows, or a single reject row. Never raises."""
    if item.get("reject"):
        return [reject_row(item, item["reject"], item.get("detail", ""))]
    path = item["path"]
    try:
        head, size = read_head(path)
        what = check(head, size, max_bytes=cfg.max_bytes, image_formats=cfg.image_formats,
                     video_formats=cfg.video_formats, max_video_bytes=cfg.max_video_bytes)
        if what.kind == "image":
            data = read_limited(path, cfg.max_bytes)
            return process_image(data, hashlib.sha256(data).hexdigest(), item, cfg)
        return process_video(path, sha256_file(path), item, cfg)
    except Reject as exc:
        return [reject_row(item, exc.reason, exc.detail)]
    except Exception as exc:  # a bug or an exotic failure must not lose the item or kill the job
        return [reject_row(item, "internal_error", f"{type(exc).__name__}: {exc}")]


def process_batch(items: Iterable[dict], cfg: PreprocessConfig, worker: str = "local") -> pa.Table:
    """Many work items -> one Arrow table in ``STAGING_SCHEMA`` (rows and rejects together)."""
    t0 = time.time()
    rows = [row for item in items for row in process_item(item, cfg)]
    t1 = time.time()
    for row in rows:
        row["worker"], row["t_start"], row["t_end"] = worker, t0, t1
    return pa.Table.from_pylist(rows, schema=STAGING_SCHEMA)
