"""Pure parsing of what a browser saw on a page: srcsets, CSS backgrounds, media URLs.

No browser, no network: the scraper's browser side returns raw attribute values (``src``,
``srcset``, ``poster``, computed ``background-image`` …) and these functions turn them into a
clean, deduplicated list of absolute media URLs with a kind guess.
"""
from __future__ import annotations

import posixpath
import re
from urllib.parse import urljoin, urlsplit, urlunsplit

# Schemes that never name a downloadable resource: lazy-load placeholders (data:, blob:) and
# script pseudo-URLs. Other schemes (file:, ftp:) are kept so the fetcher records ``bad_scheme``.
_SKIP_SCHEMES = ("data", "blob", "javascript", "about", "mailto", "tel")
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)""", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic"}
VIDEO_EXTS = {".mp4", ".m4v", ".webm", ".mov", ".mkv", ".ogv"}


def parse_srcset(srcset: str) -> list[tuple[str, float, str]]:
    """``srcset`` -> ``[(url, value, unit)]`` with unit ``"w"`` (width) or ``"x"`` (density).

    Follows the HTML tokenizer in spirit: a URL is a run of non-space characters (so commas
    *inside* URLs survive), a trailing comma ends a candidate without descriptors, and descriptors
    run to the next comma. A missing descriptor means ``1x``; unparsable ones are skipped.
    """
    out: list[tuple[str, float, str]] = []
    s, i, n = srcset or "", 0, len(srcset or "")
    while i < n:
        while i < n and (s[i].isspace() or s[i] == ","):
            i += 1
        start = i
        while i < n and not s[i].isspace():
            i += 1
        url = s[start:i]
        if not url:
            break
        descriptor = ""
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start = i
            while i < n and s[i] != ",":
                i += 1
            descriptor = s[start:i].strip()
        cand = _candidate(url, descriptor)
        if cand:
            out.append(cand)
    return out


def _candidate(url: str, descriptor: str) -> tuple[str, float, str] | None:
    """One srcset candidate, or None when its descriptor is not a single ``Nw`` / ``Nx``."""
    if not url:
        return None
    parts = descriptor.split()
    if not parts:
        return url, 1.0, "x"
    d = parts[0].lower()  # "100w 2x" is invalid HTML; the first descriptor is what browsers use
    try:
        if d.endswith("w"):
            return url, float(d[:-1]), "w"
        if d.endswith("x"):
            return url, float(d[:-1]), "x"
    except ValueError:
        return None
    return None


def best_srcset(srcset: str) -> str | None:
    """The largest candidate of a srcset: the highest width if any has one, else the highest density."""
    cands = parse_srcset(srcset)
    if not cands:
        return None
    widths = [c for c in cands if c[2] == "w"]
    pool = widths or cands
    return max(pool, key=lambda c: c[1])[0]


def css_urls(value: str) -> list[str]:
    """URLs inside ``url(...)`` of a CSS value (``background-image`` may list several layers)."""
    if not value or value == "none":
        return []
    return [next(g for g in m.groups() if g is not None).strip() for m in _CSS_URL.finditer(value)
            if any(m.groups())]


def normalize(url: str) -> str:
    """A canonical form for deduplication: lower-case scheme and host, default port dropped,
    fragment removed, empty path made ``/``, dot segments resolved. The query is kept (it often
    selects the size or version of an image)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port if parts.port and parts.port != _DEFAULT_PORTS.get(scheme) else None
    netloc = host + (f":{port}" if port else "")
    if parts.username:  # credentials in a media URL are kept as-is (rare, but not ours to drop)
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    path = parts.path or "/"
    if "/." in path:
        trailing = path.endswith("/")
        path = posixpath.normpath(path) + ("/" if trailing and path != "/" else "")
        path = "/" + path.lstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def resolve(base: str, url: str | None) -> str | None:
    """``url`` made absolute against the page ``base`` and normalized; None for placeholders
    (``data:``, ``blob:``, ``javascript:``) and empty values. A URL that cannot be parsed (an invalid
    port, a broken IPv6 literal) is returned as written: the fetcher makes it a ``bad_url`` failure
    row, so what a page pointed at is never dropped silently."""
    if not url or not url.strip():
        return None
    url = url.strip()
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return url
    if scheme in _SKIP_SCHEMES:
        return None
    try:
        return normalize(urljoin(base, url))
    except ValueError:
        return url


def guess_kind(url: str, content_type: str | None = None) -> str | None:
    """``"image"``, ``"video"`` or None, from a content type first, else the URL's extension.

    Only a hint for ordering and display: the fetcher decides by the bytes it receives.
    """
    if content_type:
        major = content_type.split(";")[0].strip().lower().split("/")[0]
        if major in ("image", "video"):
            return major
    ext = posixpath.splitext(urlsplit(url).path.lower())[1]
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def media_urls(base: str, record: dict) -> list[tuple[str, str | None]]:
    """URLs of one element record from the browser -> ``[(absolute url, kind hint)]``.

    ``record`` holds raw values: ``tag`` (img, video, source, other), ``src``, ``srcset``,
    ``poster``, ``bg`` (computed background-image) and ``lazy`` (values of lazy-load attributes).
    The largest srcset candidate wins over ``src``; lazy attributes are a fallback for images that
    were never scrolled into view.
    """
    tag = (record.get("tag") or "").lower()
    out: list[tuple[str | None, str | None]] = []
    if tag in ("img", "source", "image"):
        kind = "video" if record.get("in_video") else "image"
        # a placeholder src (data: GIF) or none at all: the lazy loader's attribute names the image
        cands = [best_srcset(record.get("srcset") or ""), record.get("src")]
        cands += [best_srcset(v) if "," in v or " " in v.strip() else v for v in record.get("lazy") or ()]
        out.append((next((u for u in map(lambda c: resolve(base, c), cands) if u), None), kind))
    elif tag == "video":
        out.append((resolve(base, record.get("src")), "video"))
        out.append((resolve(base, record.get("poster")), "image"))
    out += [(resolve(base, u), "image") for u in css_urls(record.get("bg") or "")]
    return [(u, k if k else guess_kind(u)) for u, k in out if u]


def collect(base: str, records: list[dict], limit: int | None = None) -> list[tuple[str, str | None]]:
    """All media URLs of a page's element records, first occurrence kept, at most ``limit``."""
    seen: set[str] = set()
    out: list[tuple[str, str | None]] = []
    for rec in records:
        for url, kind in media_urls(rec.get("base") or base, rec):
            if url not in seen:
                seen.add(url)
                out.append((url, kind))
                if limit is not None and len(out) >= limit:
                    return out
    return out


def host_key(url: str) -> str:
    """``host[:port]`` of a URL, lower-cased: the unit of rate limiting and robots caching."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host
