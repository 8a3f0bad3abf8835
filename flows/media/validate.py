"""Safe validation of untrusted media before any decoder sees it.

The format is decided by content (magic bytes), never by the file name: a PNG named ``.jpg`` is a
PNG, a text file named ``.png`` is not media at all. Size limits are checked before decoding so a
hostile file cannot make a worker allocate gigabytes (decompression bombs, huge videos).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

from flows.core.errors import ReasonError


class Reject(ReasonError):
    """An input that cannot be used. ``reason`` is a code from ``flows.core.schema.REJECT_REASONS``."""


@dataclass(frozen=True)
class Sniffed:
    kind: str  # "image" | "video"
    format: str  # PIL format name for images ("JPEG", "PNG", ...), container for videos ("mp4", ...)


_ISO_BRANDS_MOV = {b"qt  "}
_ISO_BRANDS_HEIF = {b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def sniff(head: bytes) -> Sniffed | None:
    """Identify media from the first bytes (>= 32 recommended). Returns None for non-media.

    Images are named as Pillow names them so the allow-list reads the same everywhere.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed("image", "JPEG")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed("image", "PNG")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Sniffed("image", "GIF")
    if head.startswith(b"BM") and len(head) >= 14:
        return Sniffed("image", "BMP")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed("image", "TIFF")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("image", "WEBP")
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska or WebM
        return Sniffed("video", "webm" if b"webm" in head[:64] else "mkv")
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _ISO_BRANDS_HEIF:
            return Sniffed("image", "HEIF")
        return Sniffed("video", "mov" if brand in _ISO_BRANDS_MOV else "mp4")
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free"):  # old QuickTime without ftyp
        return Sniffed("video", "mov")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Sniffed("video", "avi")
    if head[:4] == b"\x00\x00\x01\x00" or head[:2] == b"\x00\x00" and head[2:4] == b"\x02\x00":
        return Sniffed("image", "ICO")
    return None


def check(head: bytes, size: int, *, max_bytes: int, image_formats, video_formats,
          max_video_bytes: int) -> Sniffed:
    """Validate a file from its first bytes and its size. Raises :class:`Reject`."""
    if size == 0:
        raise Reject("empty", "zero-byte file")
    what = sniff(head[:64])
    if what is None:
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head[:256])
        hint = "looks like text" if printable > 0.9 * min(len(head), 256) else "unknown binary"
        raise Reject("not_media", f"content is not an image or video ({hint})")
    allowed = image_formats if what.kind == "image" else video_formats
    if what.format not in allowed:
        raise Reject("unsupported_format", f"{what.kind} format {what.format} is not in {list(allowed)}")
    limit = max_bytes if what.kind == "image" else max_video_bytes
    if size > limit:
        raise Reject("too_large", f"{size} bytes > {limit}")
    return what


@contextlib.contextmanager
def _rejecting_os_errors(path: str):
    """Missing or unreadable files become a Reject with a reason, not an exception."""
    try:
        yield
    except FileNotFoundError:
        raise Reject("missing", path) from None
    except IsADirectoryError:
        raise Reject("not_media", f"{path} is a directory") from None
    except OSError as exc:
        raise Reject("missing", f"{path}: {exc.strerror}") from None


def read_head(path: str, n: int = 512) -> tuple[bytes, int]:
    """The first ``n`` bytes of a local file and its size."""
    with _rejecting_os_errors(path), open(path, "rb") as f:
        return f.read(n), os.fstat(f.fileno()).st_size


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Content hash of a file, streamed (videos can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_limited(path: str, limit: int) -> bytes:
    """Read a local file, refusing (without reading it all) one larger than ``limit`` bytes."""
    with _rejecting_os_errors(path), open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Reject("too_large", f"more than {limit} bytes")
    return data
