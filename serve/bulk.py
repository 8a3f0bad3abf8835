"""The remote side of ``sift classify`` / ``sift score-folder``: many files against a running API.

Images go in requests of up to ``batch`` files (``POST /v1/classify``, multipart field ``files``; the
API takes up to ``max_items``), ``concurrency`` requests in flight; each video alone to
``/v1/classify/video``. Results come back in the order of the files given, one per file, whatever
the order the requests finish in.

A request that gets 503 (overloaded) or loses its connection is retried with exponential back-off
and jitter (:class:`Retry`); when its tries are spent its files are reported failed (``status`` 503,
or ``None`` with ``error.code`` ``unreachable``), never dropped. A response that carries per-item
``results`` (200, or the all-failed answer: the items' common status or 422, ``error.code``
``all_failed``) is mapped item by item and not retried. A 413 splits the request in two (a server
with a smaller ``max_items`` or body limit). A server that cannot be reached at the start, or a
401, is one :class:`~flows.core.errors.SiftError` line (the CLI exits 2).
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from flows.core.config import ConfigError
from flows.core.errors import SiftError
from flows.core.schema import VIDEO_EXTS

RETRY_STATUSES = frozenset({503})
MAX_REQUEST_BYTES = 16_000_000  # file data per request; below the API's max_body_bytes default (25 MB)


@dataclass(frozen=True)
class Retry:
    """``tries`` attempts per request; before try n+2 wait :meth:`delay` (n counts from 0)."""

    tries: int = 5
    base_s: float = 0.5
    cap_s: float = 10.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Exponential back-off with equal jitter: d = min(cap, base * 2**attempt), then a uniform
        draw in [d/2, d]: it grows with every try, and clients that failed together spread out."""
        d = min(self.cap_s, self.base_s * 2 ** attempt)
        return d / 2 + rand() * d / 2


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def plan_batches(files: list[Path], batch: int, max_bytes: int = MAX_REQUEST_BYTES,
                 sizes: list[int] | None = None) -> list[list[int]]:
    """Indices of ``files`` grouped into requests: each video alone; the images, in input order, in
    groups of at most ``batch`` files and ``max_bytes`` of data (``sizes``: bytes per file, default
    read from disk; an image larger than ``max_bytes`` goes alone). Every index is in exactly one
    group, groups are ordered by their first index."""
    if batch < 1:
        raise ConfigError(f"--batch {batch}: must be >= 1")
    if sizes is None:
        sizes = [_size(f) for f in files]
    groups: list[list[int]] = []
    current: list[int] | None = None
    used = 0
    for i, f in enumerate(files):
        if is_video(f):
            groups.append([i])
            continue
        if current is None or len(current) >= batch or (current and used + sizes[i] > max_bytes):
            current, used = [], 0
            groups.append(current)  # placed where its first image is; filled below
        current.append(i)
        used += sizes[i]
    return groups


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reading it fails later, as that one item's error


def failed(status: int | None, code: str, message: str) -> dict:
    """One file's failure, shaped like the API's per-item error."""
    return {"status": status, "error": {"code": code, "message": message}}


def why(exc: Exception) -> str:
    """A transport error in a few words: connection refused, DNS: host name not found, timed out ..."""
    import httpx

    text = str(exc).lower()
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if "refused" in text:
        return "connection refused"
    if any(s in text for s in ("name or service not known", "nodename nor servname", "name resolution",
                                "getaddrinfo", "no address associated")):
        return "DNS: host name not found"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the server closed the connection"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


class Remote:
    """Talks to a running sift API: :meth:`check` once, then :meth:`classify_many`."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0, *, batch: int = 32,
                 concurrency: int = 4, retry: Retry = Retry(), max_bytes: int = MAX_REQUEST_BYTES):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--server {url}: expected a URL like http://127.0.0.1:8000")
        if concurrency < 1 or batch < 1:
            raise ConfigError(f"--concurrency {concurrency} --batch {batch}: both must be >= 1")
        self.url, self.token = url.rstrip("/"), token
        self.batch, self.concurrency, self.retry, self.max_bytes = batch, concurrency, retry, max_bytes
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout,
                                 limits=httpx.Limits(max_connections=concurrency + 1))

    def close(self) -> None:
        self.http.close()

    def check(self) -> None:
        """One GET /readyz: SiftError (one line) when the server cannot be reached or refuses the token.
        Any other answer, a 503 of a server still loading its model included, means it is there."""
        import httpx

        try:
            r = self.http.get("/readyz", timeout=10.0)
        except httpx.TransportError as exc:
            raise SiftError(f"cannot reach the sift server at {self.url} ({why(exc)})", reason="unreachable") from None
        if r.status_code == 401:
            raise self._auth_error(r)

    def classify(self, path: Path, tiles: int = 1) -> dict:
        return next(self.classify_many([path], tiles))

    def classify_many(self, files: list[Path], tiles: int = 1,
                      done: Callable[[int], None] | None = None) -> Iterator[dict]:
        """One result per file, in the order of ``files``; ``done(n)`` is called as each request's n
        files finish (in any order: a progress bar)."""
        groups = plan_batches(files, self.batch, self.max_bytes)
        ready: dict[int, dict] = {}
        nxt = 0
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="sift-client") as pool:
            futures = [pool.submit(self._group, [files[i] for i in g], tiles) for g in groups]
            if done is not None:
                for g, fut in zip(groups, futures):
                    fut.add_done_callback(lambda _, n=len(g): done(n))
            try:
                for g, fut in zip(groups, futures):
                    ready.update(zip(g, fut.result()))
                    while nxt in ready:  # groups are ordered by first index: the prefix is complete
                        yield ready.pop(nxt)
                        nxt += 1
            finally:
                for fut in futures:  # an abort (401, Ctrl-C, the caller stopped): send nothing more
                    fut.cancel()

    def _group(self, paths: list[Path], tiles: int) -> list[dict]:
        """One request's files -> one result each, in order; a file that cannot be read is its own error."""
        out: list[dict | None] = [None] * len(paths)
        items = []
        for k, p in enumerate(paths):
            try:
                items.append((k, p.name, p.read_bytes()))
            except OSError as exc:
                out[k] = failed(None, "unreadable", f"{p}: {exc.strerror or exc}")
        if items and is_video(paths[0]):
            out[0] = self._video(items[0][1], items[0][2])
        elif items:
            for (k, _, _), r in zip(items, self._images([(n, d) for _, n, d in items], tiles)):
                out[k] = r
        return out

    def _images(self, items: list[tuple[str, bytes]], tiles: int) -> list[dict]:
        r = self._post("/v1/classify", files=[("files", it) for it in items], params={"tiles": tiles})
        if isinstance(r, dict):
            return [dict(r) for _ in items]
        body = _json(r)
        results = body.get("results") if isinstance(body, dict) else None
        if isinstance(results, list) and len(results) == len(items):  # 200, or all failed: per item
            return [res if isinstance(res, dict) else failed(r.status_code, "bad_response", "not an object")
                    for res in results]
        if r.status_code == 413 and len(items) > 1:  # this server takes fewer or smaller: halve
            half = len(items) // 2
            return self._images(items[:half], tiles) + self._images(items[half:], tiles)
        return [_error_of(r, body, self.retry.tries) for _ in items]

    def _video(self, name: str, data: bytes) -> dict:
        r = self._post("/v1/classify/video", files={"file": (name, data)})
        if isinstance(r, dict):
            return r
        body = _json(r)
        if r.status_code == 200 and isinstance(body, dict) and "label" in body:
            return body
        return _error_of(r, body, self.retry.tries)

    def _post(self, path: str, **kw):
        """POST with retries: the final response, or a :func:`failed` dict when every try lost its
        connection. Retries 503 and transport errors; raises the one-line SiftError on 401."""
        import httpx

        last = None
        for attempt in range(self.retry.tries):
            if attempt:
                time.sleep(self.retry.delay(attempt - 1))
            try:
                r = self.http.post(path, **kw)
            except httpx.TransportError as exc:
                last = failed(None, "unreachable", f"{self.url}: {why(exc)} (gave up after {attempt + 1} tries)")
                continue
            if r.status_code == 401:
                raise self._auth_error(r)
            last = r
            if r.status_code not in RETRY_STATUSES:
                break
        return last

    def _auth_error(self, r) -> SiftError:
        err = (_json(r) or {}).get("error") or {}
        if err.get("code") == "token_required":
            return SiftError(f"the sift server at {self.url}: {err.get('message', 'a token is required')}",
                             reason="unauthorized")
        if self.token:
            msg = f"the sift server at {self.url} refused the bearer token (401): check --token or $SIFT_API_TOKEN"
        else:
            msg = f"the sift server at {self.url} needs a bearer token (401): pass --token or set $SIFT_API_TOKEN"
        return SiftError(msg, reason="unauthorized")


def _json(r):
    try:
        return r.json()
    except ValueError:
        return None


def _error_of(r, body, tries: int) -> dict:
    """A whole-request failure, as each of its files' result."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"code": f"http_{r.status_code}", "message": (r.text or r.reason_phrase or "")[:200]}
    out = failed(r.status_code, str(err.get("code", f"http_{r.status_code}")), str(err.get("message", "")))
    if r.status_code in RETRY_STATUSES:
        out["error"]["message"] += f" (gave up after {tries} tries)"
    return out
