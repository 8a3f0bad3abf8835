"""Guarded downloads of untrusted URLs: every failure is a reason code, never an exception upstream.

A page decides which URLs we fetch, so each request is treated as hostile:

- only ``http``/``https``, at most ``MAX_URL`` characters; an IDN host goes out in its ASCII (punycode)
  form and raw control, space or non-ASCII characters in the path and query are percent-encoded, as
  a browser does (a URL that still cannot be sent is ``bad_url``); the host is resolved once and *every* resolved address must be public
  (not private, loopback, link-local, multicast, reserved or unspecified) unless the host or the
  address is allow-listed (``allow_hosts``) or ``allow_private`` is set; the connection then goes
  to the checked address (pinned: the Host header and TLS SNI carry the name), so a DNS answer
  cannot change between the check and the connect;
- redirects are followed by hand, each hop checked again (scheme, address, robots), at most
  ``max_redirects``;
- robots.txt is honoured per origin (RFC 9309, parsed by Protego: ``*`` wildcards, ``$`` end anchors,
  the longest matching rule wins; 4xx means allow all, 5xx or unreachable disallow all), cached,
  fetched through the same guard;
- at most ``max_bytes`` are read (Content-Length first, then counted while streaming), and the
  first bytes must sniff as media (:func:`flows.media.validate.sniff`) or the download stops there;
- one host is not asked more often than every ``rate_limit_s`` (thread-safe; shareable between
  processes through an injected ``reserve`` callable);
- 5xx, 429, timeouts and connection errors are retried with exponential backoff.

The URL and address checks are :mod:`flows.scrape.urls` (its resolver is injectable, so the address
policy is tested without sending traffic anywhere), robots.txt is :mod:`flows.scrape.robots`.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from flows.media.validate import sniff
from flows.scrape.parse import host_key
from flows.scrape.robots import RobotsCache
from flows.scrape.urls import FetchError, Resolver, Target, check_url, system_resolver

REDIRECTS = (301, 302, 303, 307, 308)
RETRY_STATUS = (429, 500, 502, 503, 504)
# request headers the browser's own network stack owns (httpx sets its own), and response headers
# that describe the wire form of a body that httpx has already decoded
_HOP_REQUEST = {"host", "connection", "content-length", "accept-encoding", "keep-alive", "proxy-authorization",
                "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
_HOP_RESPONSE = {"connection", "content-length", "content-encoding", "keep-alive", "transfer-encoding",
                 "trailer", "upgrade", "proxy-authenticate"}


@dataclass(frozen=True)
class Resource:
    """One hop of a browser request, as the server answered it (a 3xx is returned, not followed)."""
    url: str
    status: int
    headers: dict[str, str]  # multiple values joined (Set-Cookie lines by a newline, as Playwright wants)
    body: bytes


@dataclass(frozen=True)
class Fetched:
    url: str  # as asked
    final_url: str  # after redirects
    data: bytes
    kind: str  # "image" | "video" ("" for non-media fetches such as robots.txt)
    format: str
    content_type: str



class RateLimiter:
    """Minimum interval between requests to one host, thread-safe.

    :meth:`reserve` books the next free slot under a lock and returns how long to wait; callers
    sleep outside the lock, so one slow host never blocks requests to another.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, host: str) -> float:
        with self._lock:
            now = self.clock()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
            return slot - now



class Fetcher:
    """Guarded GETs with one pooled httpx client. ``cfg`` needs the fetch keys of ScrapeConfig."""

    def __init__(self, cfg, resolver: Resolver | None = None,
                 reserve: Callable[[str], float] | None = None, sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None):
        self.cfg, self.sleep = cfg, sleep
        self.resolver = resolver or system_resolver
        self.reserve = reserve or RateLimiter(cfg.rate_limit_s).reserve
        # trust_env=False: a proxy from the environment would connect somewhere we never checked
        self.client = httpx.Client(timeout=cfg.timeout_s, follow_redirects=False, trust_env=False,
                                   transport=transport, headers={"User-Agent": cfg.user_agent})
        self.robots = RobotsCache(self._robots_text, cfg.user_agent)
        self.connections: Counter[str] = Counter()  # address -> requests sent: what really went out
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str) -> Fetched:
        """Download one media URL within every guard. Raises FetchError."""
        return self._follow(url, media=True)

    def try_fetch(self, url: str) -> tuple[Fetched | None, dict | None]:
        """``(fetched, None)`` or ``(None, {"url", "reason", "detail"})``: never raises for a URL.
        An error that is not a FetchError (a bug, not the URL's fault) is still this URL's failure
        row, ``internal_error`` with the exception named, so one URL never ends a scrape."""
        try:
            return self.fetch(url), None
        except FetchError as exc:
            return None, {"url": url[:2000], "reason": exc.reason, "detail": exc.detail[:300]}
        except Exception as exc:
            return None, {"url": url[:2000], "reason": "internal_error", "detail": f"{type(exc).__name__}: {exc}"[:300]}

    def fetch_resource(self, url: str, method: str = "GET", headers: dict | None = None,
                       body: bytes | None = None, limit: int = 10_000_000) -> Resource:
        """One request of the browser's (a page, a script, a stylesheet, an XHR) through the same
        guard and pinning as media: the address is checked and connected to as checked, at most
        ``limit`` body bytes are read, and a redirect comes back as it is (the browser then asks for
        its Location, which is routed and checked like any request). No retries and no rate limit:
        a page's own sub-resources are what one visit of a browser loads. Raises FetchError."""
        target = check_url(url, self.resolver, self.cfg.allow_hosts, self.cfg.allow_private)
        pinned, wire = self._pinned(target)
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in _HOP_REQUEST and not k.startswith(":")}
        try:
            with self.client.stream(method, pinned, headers={**sent, **wire["headers"]}, content=body,
                                    extensions=wire["extensions"]) as resp:
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise FetchError("too_large", f"Content-Length {declared} > {limit}")
                buf = bytearray()
                for chunk in resp.iter_bytes():
                    buf += chunk
                    if len(buf) > limit:
                        raise FetchError("too_large", f"more than {limit} bytes")
                out: dict[str, str] = {}
                for k, v in resp.headers.multi_items():
                    k = k.lower()
                    if k not in _HOP_RESPONSE:
                        out[k] = f"{out[k]}{chr(10) if k == 'set-cookie' else ', '}{v}" if k in out else v
                return Resource(target.url, resp.status_code, out, bytes(buf))
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", f"{type(exc).__name__} after {self.cfg.timeout_s:g} s") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError, ValueError) as exc:
            raise FetchError("bad_url", f"{type(exc).__name__}: {exc}"[:300]) from None
        except httpx.HTTPError as exc:
            raise FetchError("connect_error", f"{type(exc).__name__}: {exc}") from None

    def _robots_text(self, url: str) -> tuple[int, str]:
        got = self._follow(url, media=False)
        return 200, got.data.decode("utf-8", "replace")

    def _follow(self, url: str, media: bool) -> Fetched:
        """Redirects by hand: every hop is checked (address, robots) before it is connected to."""
        current = url
        for _ in range(self.cfg.max_redirects + 1):
            target = check_url(current, self.resolver, self.cfg.allow_hosts, self.cfg.allow_private)
            if media and self.cfg.robots and not self.robots.allowed(current):
                raise FetchError("robots_disallowed", current)
            result = self._with_retries(target, media)
            if isinstance(result, str):  # a redirect's Location
                current = urljoin(current, result)
                continue
            data, kind, fmt, ctype = result
            return Fetched(url, current, data, kind, fmt, ctype)
        raise FetchError("too_many_redirects", f"more than {self.cfg.max_redirects} from {url}")

    def _with_retries(self, target: Target, media: bool):
        """One hop with retries on 5xx/429, timeouts and connection errors (exponential backoff)."""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            try:
                return self._once(target, media)
            except FetchError as exc:
                retryable = exc.reason in ("timeout", "connect_error") or exc.reason in {
                    f"http_{s}" for s in RETRY_STATUS}
                if not retryable or attempt == self.cfg.retries:
                    raise
        raise AssertionError("unreachable")

    def _once(self, target: Target, media: bool):
        """One request to the checked address. Returns a Location (str) or (data, kind, fmt, ctype)."""
        delay = self.reserve(host_key(target.url))
        if delay > 0:
            self.sleep(delay)
        pinned, wire = self._pinned(target)
        try:
            with self.client.stream("GET", pinned, **wire) as resp:
                if resp.status_code in REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise FetchError(f"http_{resp.status_code}", "redirect without Location")
                    return location
                if resp.status_code >= 400:
                    raise FetchError(f"http_{resp.status_code}", target.url)
                return self._read(resp, media)
        except httpx.TimeoutException as exc:
            raise FetchError("timeout", f"{type(exc).__name__} after {self.cfg.timeout_s:g} s") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError, ValueError) as exc:
            raise FetchError("bad_url", f"{type(exc).__name__}: {exc}"[:300]) from None
        except httpx.HTTPError as exc:  # transport errors, a broken stream, a bad encoding
            raise FetchError("connect_error", f"{type(exc).__name__}: {exc}") from None

    def _pinned(self, target: Target) -> tuple[str, dict]:
        """(the URL to connect to: the checked address, not the name; {"headers": Host, "extensions":
        TLS SNI}) for ``target``, counted in ``connections``."""
        parts = urlsplit(target.url)
        ip = f"[{target.ip}]" if ":" in target.ip else target.ip
        pinned = urlunsplit((target.scheme, f"{ip}:{target.port}", parts.path or "/", parts.query, ""))
        default = target.port == (443 if target.scheme == "https" else 80)
        headers = {"Host": target.host if default else f"{target.host}:{target.port}"}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        with self._lock:
            self.connections[target.ip] += 1
        return pinned, {"headers": headers, "extensions": extensions}

    def _read(self, resp: httpx.Response, media: bool):
        """Stream the body: stop at the size cap, and after the first bytes if they are not media."""
        limit = max(self.cfg.max_bytes, self.cfg.max_video_bytes) if media else 512_000
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FetchError("too_large", f"Content-Length {declared} > {limit}")
        buf, what = bytearray(), None
        for chunk in resp.iter_bytes():
            buf += chunk
            if media and what is None and len(buf) >= 64:
                what = self._sniff(bytes(buf[:64]))
                limit = self.cfg.max_bytes if what.kind == "image" else self.cfg.max_video_bytes
            if len(buf) > limit:
                raise FetchError("too_large", f"more than {limit} bytes")
        if media and not buf:
            raise FetchError("empty", "zero-byte body")
        if media and what is None:
            what = self._sniff(bytes(buf[:64]))
        ctype = resp.headers.get("content-type", "")
        return bytes(buf), what.kind if what else "", what.format if what else "", ctype

    @staticmethod
    def _sniff(head: bytes):
        what = sniff(head)
        if what is None:
            raise FetchError("not_media", "content is not an image or a video")
        return what
