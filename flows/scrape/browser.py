"""The browser shell of ``sift scrape``: one headless Chromium that only renders pages.

Chromium never touches the network itself. Its image/media/font requests are aborted; every other
request is fulfilled from :meth:`flows.scrape.fetch.Fetcher.fetch_resource`: the same address policy,
robots.txt (for documents), pinning to the checked address and a body cap as every download, one
hop at a time (a redirect goes back to the browser, whose next request is routed and checked again).
So a name that resolves to a public address for the check and to 127.0.0.1 for the connect (DNS
rebinding) reaches nothing. What no route sees is shut too: the browser's own proxy is a dead
loopback port (preconnects, DNS prefetch and anything unrouted fail there), WebRTC may use no
non-proxied UDP and its constructors are removed from every page, web sockets are answered by a
mock, and only http(s) URLs are ever navigated to (a ``file://`` next link ends the walk).

Every page step (load, evaluate, scroll, click) is bounded: a watchdog kills this actor's Chromium
when one step outlives ``page_timeout_s`` (a script spinning in ``for(;;);`` never answers an
evaluate), the visit becomes a ``page_timeout`` failure row, and the next visit launches a fresh
browser. Collection runs in the page (``COLLECT_JS``); turning records into URLs is pure
(:mod:`flows.scrape.parse`).
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flows.scrape.fetch import Fetcher
from flows.scrape.urls import FetchError, check_url

if TYPE_CHECKING:
    from flows.scrape.config import Recipe, ScrapeConfig


# ---------------------------------------------------------------- the browser shell

# A dead proxy (port 9, discard, on loopback; "<-loopback>" sends loopback there too): routed requests
# are fulfilled before any proxy, so only what no route sees (preconnect, prefetch) goes there and fails.
DEAD_PROXY = "http://127.0.0.1:9"
BASE_FLAGS = ("--disable-gpu", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--disable-quic")
# what makes the scraping browser unable to reach anything but through its routes
ISOLATION_FLAGS = (f"--proxy-server={DEAD_PROXY}", "--proxy-bypass-list=<-loopback>",
                   "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
                   "--webrtc-ip-handling-policy=disable_non_proxied_udp", "--disable-features=NetworkPrediction")
LAUNCH_FLAGS = BASE_FLAGS + ISOLATION_FLAGS
# Run in every frame before the page's own scripts: no peer connections (they open UDP sockets that
# no route sees), no navigator.sendBeacon (its requests are "ping"s, aborted anyway: fail loudly).
INIT_JS = """(() => { for (const k of ['RTCPeerConnection', 'webkitRTCPeerConnection', 'RTCDataChannel',
  'RTCRtpSender', 'RTCRtpReceiver', 'RTCIceCandidate', 'RTCSessionDescription'])
  try { delete window[k]; Object.defineProperty(window, k, {value: undefined}); } catch (e) {} })();"""
# The browser renders pages but never loads media itself: every media byte must come through the
# Fetcher's guard (the browser's own redirects are not routed, so an <img> pointing at a redirect to
# an internal address would otherwise reach it).
BLOCKED_TYPES = {"image", "media", "font", "other", "ping", "beacon", "manifest", "texttrack", "eventsource",
                 "websocket", "csp_report"}
# Raw attribute values of every media element (resolved and parsed in Python by flows.scrape.parse).
COLLECT_JS = """(o) => {
  const vis = (el) => !o.visible || !el || !el.checkVisibility ||
    el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true, opacityProperty: true, visibilityProperty: true});
  const pick = (root, sel) => sel ? [...(root.matches(sel) ? [root] : []), ...root.querySelectorAll(sel)] : [];
  const roots = o.item ? [...document.querySelectorAll(o.item)] : [document.documentElement];
  const out = [];
  for (const root of roots) {
    for (const el of pick(root, o.images)) {
      const host = el.tagName === 'SOURCE' ? el.parentElement : el;
      if (!vis(host)) continue;
      out.push({tag: el.tagName.toLowerCase(), src: el.getAttribute('src'), srcset: el.getAttribute('srcset'),
                lazy: o.lazy.map((a) => el.getAttribute(a)).filter(Boolean), in_video: host.tagName === 'VIDEO'});
    }
    for (const v of pick(root, o.videos)) {
      if (!vis(v)) continue;
      out.push({tag: 'video', src: v.getAttribute('src'), poster: v.getAttribute('poster')});
      for (const s of v.querySelectorAll('source'))
        out.push({tag: 'source', src: s.getAttribute('src'), in_video: true});
    }
    for (const el of pick(root, o.backgrounds)) {
      const bg = getComputedStyle(el).backgroundImage;
      if (bg && bg !== 'none' && vis(el)) out.push({tag: 'other', bg});
    }
  }
  return {base: document.baseURI, records: out};
}"""
SCROLL_JS = """() => { const e = document.scrollingElement; window.scrollBy(0, window.innerHeight);
  return [e.scrollHeight, window.scrollY + window.innerHeight >= e.scrollHeight - 2]; }"""


UNPRIVILEGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chromium-unprivileged.sh")


def launch_options(cfg: ScrapeConfig, pw) -> dict:
    """How Chromium is started: sandboxed always when ``browser_sandbox`` is on. As root (Chromium
    refuses its sandbox there) through ``chromium-unprivileged.sh``, which drops to
    ``browser_user`` first; so a renderer that a hostile page takes over holds neither root nor
    the files next to it (the Ray token, the MLflow store, model files). ``browser_sandbox=false``
    is the old --no-sandbox, for hosts where neither works (no user namespaces, no setpriv)."""
    import shutil

    exe = chromium_path(cfg, pw)
    if not cfg.browser_sandbox:
        return {"executable_path": exe, "chromium_sandbox": False}
    if os.geteuid() != 0:
        return {"executable_path": exe, "chromium_sandbox": True}
    if not shutil.which("setpriv"):
        from flows.core.config import ConfigError

        raise ConfigError("running as root, the sandboxed browser needs setpriv (util-linux) to drop to "
                          f"browser_user={cfg.browser_user}; install it, run sift as another user, or set "
                          "browser_sandbox=false")
    real = exe or pw.chromium.executable_path
    return {"executable_path": UNPRIVILEGED, "chromium_sandbox": True,
            "env": {**os.environ, "SIFT_CHROMIUM": real, "SIFT_BROWSER_USER": cfg.browser_user}}


def chromium_path(cfg: ScrapeConfig, pw) -> str | None:
    """The configured Chromium, else None (Playwright's own) when it is installed, else the system's."""
    import shutil

    if cfg.chromium:
        return cfg.chromium
    own = pw.chromium.executable_path
    if own and os.path.exists(own):
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class PageTimeout(Exception):
    """A page step outlived ``page_timeout_s``; the browser was killed."""


class Browser:
    """One headless Chromium; every request it makes passes the same address/robots policy."""

    def __init__(self, cfg: ScrapeConfig, fetcher: Fetcher):
        from playwright.sync_api import sync_playwright

        self.cfg, self.fetcher, self.blocked, self.page = cfg, fetcher, [], None
        self.timed_out = threading.Event()  # set by the watchdog when it killed the browser
        self.pw = sync_playwright().start()
        self._launch()

    def _launch(self) -> None:
        cfg = self.cfg
        self.browser = self.pw.chromium.launch(headless=True, args=[*LAUNCH_FLAGS, *cfg.browser_args],
                                               **launch_options(cfg, self.pw))
        w, h = cfg.viewport
        self.context = self.browser.new_context(user_agent=cfg.user_agent, service_workers="block",
                                                viewport={"width": w, "height": h})
        self.context.add_init_script(INIT_JS)
        self.context.route("**/*", self._route)
        self.context.route_web_socket(re.compile(".*"), lambda ws: None)  # mocked: never connects
        self.page = None
        self.timed_out.clear()

    def close(self) -> None:
        self.close_browser()
        self.pw.stop()

    def _route(self, route) -> None:
        """Abort media; fulfil the rest from the Fetcher: checked, pinned, capped, one hop."""
        req = route.request
        if req.resource_type in BLOCKED_TYPES:
            return route.abort("blockedbyclient")
        try:
            if req.resource_type == "document" and self.cfg.robots:  # the address first: its reason counts
                check_url(req.url, self.fetcher.resolver, self.cfg.allow_hosts, self.cfg.allow_private)
                if not self.fetcher.robots.allowed(req.url):
                    raise FetchError("robots_disallowed", req.url)
            res = self.fetcher.fetch_resource(req.url, req.method, req.all_headers(), req.post_data_buffer,
                                              self.cfg.max_page_bytes)
            return route.fulfill(status=res.status, headers=res.headers, body=res.body)
        except FetchError as exc:
            self.blocked.append({"url": req.url[:2000], "type": req.resource_type, "reason": exc.reason})
            with contextlib.suppress(Exception):
                route.abort("blockedbyclient")
        except Exception:  # the page closed meanwhile, a killed browser: the request just fails
            with contextlib.suppress(Exception):
                route.abort("failed")

    @contextlib.contextmanager
    def _bounded(self):
        """One page step: past ``page_timeout_s`` (plus a grace for Playwright's own timeouts to fire
        first) the watchdog kills this browser, which ends the blocked call; PageTimeout is raised."""
        timer = threading.Timer(self.cfg.page_timeout_s + 5.0, self._kill)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as exc:
            if self.timed_out.is_set():
                raise PageTimeout(f"a page step ran past {self.cfg.page_timeout_s:g} s; browser restarted") from exc
            raise
        finally:
            timer.cancel()

    def _kill(self) -> None:
        """Kill this process's Chromium (the Playwright driver's children); the driver then fails
        every pending call with "Target closed"."""
        import psutil

        self.timed_out.set()
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "chrom" in proc.name().lower() or "headless" in proc.name().lower():
                    proc.kill()

    def _page(self):
        """The actor's one tab, reused: a new tab per start URL costs a renderer process each time,
        which measured 2-3x the CPU of the whole visit on a 2-core machine."""
        if self.timed_out.is_set() or not self.browser.is_connected():
            self.close_browser()
            self._launch()
        if self.page is None or self.page.is_closed():
            self.page = self.context.new_page()
            self.page.set_default_timeout(self.cfg.page_timeout_s * 1000)
        return self.page

    def close_browser(self) -> None:
        with contextlib.suppress(Exception):  # a killed browser has nothing left to close
            self.browser.close()

    def _goto(self, page, url: str) -> None:
        """Navigate, only ever to http(s): file://, data:, javascript: and the like are refused here
        (no route sees them)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            self.blocked.append({"url": url[:2000], "type": "document", "reason": "bad_scheme"})
            raise FetchError("bad_scheme", f"{scheme or 'no'} scheme: only http and https")
        with self._bounded():
            page.goto(url, wait_until="domcontentloaded")

    def visit(self, start: str, recipe: Recipe, limit: int) -> dict:
        """Load ``start`` (and its next pages), scroll, collect media URLs: ``{media, pages, error}``."""
        page, nblocked = self._page(), len(self.blocked)
        found: dict[str, tuple[str | None, str]] = {}  # media url -> (kind hint, page url), in order
        pages, error, target = [], None, start
        try:
            for n in range(recipe.max_pages):
                if target:
                    self._goto(page, target)
                pages.append(page.url)
                self._settle(page, recipe)
                self._scroll(page, recipe, found, limit)
                if n + 1 == recipe.max_pages or len(found) >= limit or not recipe.next_selector:
                    break
                target = self._next(page, recipe)
                if target is None:
                    break
                if target and urlsplit(target).scheme.lower() not in ("http", "https"):
                    self.blocked.append({"url": target[:2000], "type": "document", "reason": "bad_scheme"})
                    break  # a next link to file:// or javascript: ends the walk, the pages so far count
            with self._bounded():
                page.goto("about:blank")  # stop the page's scripts while its media downloads
        except Exception as exc:  # a page that does not load or hangs is one failure, not a crash
            why = [b["reason"] for b in self.blocked[nblocked:] if b["type"] == "document"]
            reason = "page_timeout" if isinstance(exc, PageTimeout) else \
                why[-1] if why and not pages else "page_error"
            error = {"url": start, "page": start, "reason": reason, "detail": (str(exc).splitlines() or [""])[0][:300]}
            with contextlib.suppress(Exception):
                page.close()  # the next start URL gets a fresh tab (and a fresh browser after a kill)
        return {"media": [(u, k, p) for u, (k, p) in found.items()], "pages": pages, "error": error}

    def _settle(self, page, recipe: Recipe) -> None:
        if recipe.wait_for:
            try:
                with self._bounded():
                    page.wait_for_selector(recipe.wait_for)
            except PageTimeout:
                raise
            except Exception:  # a missing marker: collect what is there
                pass
        if recipe.wait_ms:
            page.wait_for_timeout(recipe.wait_ms)

    def _scroll(self, page, recipe: Recipe, found: dict, limit: int) -> None:
        """Collect, then scroll a viewport per step and collect again, until the page stops growing."""
        from flows.scrape.parse import collect

        opts = {"item": recipe.item_selector, "images": recipe.image_selector, "videos": recipe.video_selector,
                "backgrounds": recipe.background_selector, "lazy": list(recipe.lazy_attrs),
                "visible": recipe.only_visible}

        def gather() -> None:
            with self._bounded():
                got = page.evaluate(COLLECT_JS, opts)
            for url, kind in collect(got["base"], got["records"]):
                if len(found) < limit:
                    found.setdefault(url, (kind, page.url))

        gather()
        idle = 0
        for _ in range(recipe.scroll_steps):
            if len(found) >= limit:
                break
            with self._bounded():
                height, at_bottom = page.evaluate(SCROLL_JS)
            page.wait_for_timeout(recipe.scroll_pause_ms)
            before = len(found)
            gather()
            with self._bounded():
                grew = page.evaluate("document.scrollingElement.scrollHeight") > height
            idle = idle + 1 if at_bottom and not grew and len(found) == before else 0
            if idle >= 2:  # twice at the bottom with nothing new: the feed has ended
                break

    def _next(self, page, recipe: Recipe) -> str | None:
        """The next page's URL; "" after clicking a button without href; None when there is none."""
        with self._bounded():
            href = page.evaluate("(s) => { const e = document.querySelector(s); return e ? (e.href || '') : null; }",
                                 recipe.next_selector)
        if href == "":
            with self._bounded():
                page.click(recipe.next_selector)
                page.wait_for_load_state()
        return href
