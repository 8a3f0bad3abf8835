"""The data contract between preprocessing and everything downstream.

Preprocessing writes parquet shards whose columns are listed in ``COLUMNS``; training, batch
prediction and the review loop read them. ``manifest.json`` beside the shards records the class list
and the noisy-pool priors, so a reader never has to guess what an integer label means.
"""
from __future__ import annotations

NO_LABEL = -1  # label of an item in the unlabeled pool
UNLABELED = "unlabeled"  # folder / JSONL label name of the unlabeled pool

# kinds of rows
IMAGE, THUMBNAIL, FRAME = "image", "thumbnail", "frame"
KINDS = (IMAGE, THUMBNAIL, FRAME)

# pools: how much a label can be trusted
CLEAN, NOISY, UNLABELED_POOL = "clean", "noisy", "unlabeled"

SPLITS = ("train", "val", "test")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".webm", ".mov", ".mkv"}

# column -> (arrow type name, meaning). The README's table is generated from this.
COLUMNS = {
    "id": ("string", "stable id: sha256 of the source file (+ '#t=<seconds>' for video frames)"),
    "group_id": ("string", "items that must share a split (video, source page, near-duplicate cluster)"),
    "kind": ("string", "image, thumbnail or frame"),
    "label": ("int32", "index into manifest['classes']; -1 for the unlabeled pool"),
    "label_name": ("string", "class name, or 'unlabeled'"),
    "pool": ("string", "clean, noisy or unlabeled (noisy: a class declared a noisy pool with priors)"),
    "score": ("float64", "optional regression target from the manifest; NaN when absent"),
    "tags": ("string", "the manifest's multi-label tags as a JSON list ('[]': none); '' when not annotated"),
    "split": ("string", "train, val or test, deterministic by group"),
    "source": ("string", "where the item came from (page URL, manifest source, or input folder)"),
    "path": ("string", "the input path or URL"),
    "timestamp": ("float64", "seconds into the video for frames and thumbnails; NaN for images"),
    "width": ("int32", "width of the stored image"),
    "height": ("int32", "height of the stored image"),
    "bytes": ("int32", "size of the stored JPEG in bytes (fits the byte budget)"),
    "quality": ("int32", "JPEG quality the byte-budget search settled on"),
    "sha256": ("string", "content hash of the source file"),
    "phash": ("string", "64-bit perceptual hash (hex) of the stored image"),
    "image": ("binary", "the stored image: RGB JPEG, shortest edge <= config.short_edge"),
}

# reject reason codes (rejects.parquet: path, source, reason, detail)
REJECT_REASONS = {
    "missing": "the file or URL does not exist",
    "empty": "zero-byte file",
    "too_large": "file exceeds max_bytes",
    "unsupported_format": "content is not an allowed image or video format",
    "not_media": "content is not an image or a video at all",
    "decode_error": "the decoder failed (truncated or corrupt data)",
    "too_many_pixels": "pixel count exceeds max_pixels (decompression-bomb guard)",
    "too_small": "image smaller than min_side",
    "video_too_long": "video duration exceeds max_video_seconds",
    "video_too_big": "video resolution exceeds max_video_pixels",
    "video_error": "ffprobe/ffmpeg failed or timed out",
    "bad_manifest_line": "a manifest line that is not valid JSON or lacks path/url, or names an unknown label",
    "fetch_failed": "a manifest URL the guarded downloader could not fetch (the detail starts with its reason code)",
    "bad_span": "a span (manifest start/end) not 0 <= start < end, after the video's end, or on an image",
    "span_conflict": "a span overlapping one of another label in the same video (detail names both)",
    "empty_selection": "a highlight reel whose segments hold no frame of the video (flows.media.reel)",
    "internal_error": "an unexpected error while processing (detail has the exception)",
}

# why an item was dropped as a duplicate (duplicates.parquet: id, path, reason, kept_id)
DUP_EXACT, DUP_NEAR = "exact", "near"
