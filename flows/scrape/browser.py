"""The browser shell of ``sift scrape``: one headless Chromium that only renders pages.

Its own image/media/font requests are aborted and its document requests pass the same address and
robots policy as every download (:class:`flows.scrape.fetch.Fetcher`), so the browser never becomes a way
around the guard. Collection runs in the page (``COLLECT_JS``); turning records into URLs is pure
(:mod:`flows.scrape.parse`).
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from flows.scrape.fetch import FetchError, Fetcher

if TYPE_CHECKING:
    from flows.scrape.config import Recipe, ScrapeConfig


# ---------------------------------------------------------------- the browser shell

LAUNCH_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic")
# The browser renders pages but never loads media itself: every media byte must come through the
# Fetcher's guard (the browser's own redirects are not routed, so an <img> pointing at a redirect to
# an internal address would otherwise reach it).
BLOCKED_TYPES = {"image", "media", "font", "other", "ping", "beacon", "manifest", "texttrack", "eventsource",
                 "websocket", "csp_report"}
REDIRECTS = (301, 302, 303, 307, 308)
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


def chromium_path(cfg: ScrapeConfig, pw) -> str | None:
    """The configured Chromium, else None (Playwright's own) when it is installed, else the system's."""
    import shutil

    if cfg.chromium:
        return cfg.chromium
    own = pw.chromium.executable_path
    if own and os.path.exists(own):
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium; every request it makes passes the same address/robots policy."""

    def __init__(self, cfg: ScrapeConfig, fetcher: Fetcher):
        from playwright.sync_api import sync_playwright

        self.cfg, self.fetcher, self.blocked, self.page = cfg, fetcher, [], None
        self.pw = sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=chromium_path(cfg, self.pw), headless=True,
                                               args=[*LAUNCH_FLAGS, *cfg.browser_args])
        w, h = cfg.viewport
        self.context = self.browser.new_context(user_agent=cfg.user_agent, service_workers="block",
                                                viewport={"width": w, "height": h})
        self.context.route("**/*", self._route)
        self.context.route_web_socket(re.compile(".*"), lambda ws: None)  # mocked: never connects

    def close(self) -> None:
        self.browser.close()
        self.pw.stop()

    def _route(self, route) -> None:
        """Abort media; check and fetch the rest by hand so every redirect hop is checked too."""
        from flows.scrape.fetch import check_url

        req, url = route.request, route.request.url
        if req.resource_type in BLOCKED_TYPES:
            return route.abort("blockedbyclient")
        try:
            for _ in range(self.cfg.max_redirects + 1):
                check_url(url, self.fetcher.resolver, self.cfg.allow_hosts, self.cfg.allow_private)
                if req.resource_type == "document" and self.cfg.robots and not self.fetcher.robots.allowed(url):
                    raise FetchError("robots_disallowed", url)
                resp = route.fetch(url=url, max_redirects=0, timeout=self.cfg.page_timeout_s * 1000)
                location = resp.headers.get("location")
                if resp.status in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                if url != req.url and req.is_navigation_request():  # let the page's URL be the final one
                    return route.fulfill(status=302, headers={"location": url})
                return route.fulfill(response=resp)
            raise FetchError("too_many_redirects", req.url)
        except FetchError as exc:
            self.blocked.append({"url": url, "type": req.resource_type, "reason": exc.reason})
            return route.abort("blockedbyclient")
        except Exception:  # network error, page closed meanwhile: the request just fails
            try:
                route.abort("failed")
            except Exception:
                pass

    def _page(self):
        """The actor's one tab, reused: a new tab per start URL costs a renderer process each time,
        which measured 2-3x the CPU of the whole visit on a 2-core machine."""
        if self.page is None or self.page.is_closed():
            self.page = self.context.new_page()
            self.page.set_default_timeout(self.cfg.page_timeout_s * 1000)
        return self.page

    def visit(self, start: str, recipe: Recipe, limit: int) -> dict:
        """Load ``start`` (and its next pages), scroll, collect media URLs: ``{media, pages, error}``."""
        page, nblocked = self._page(), len(self.blocked)
        found: dict[str, tuple[str | None, str]] = {}  # media url -> (kind hint, page url), in order
        pages, error, target = [], None, start
        try:
            for n in range(recipe.max_pages):
                if target:
                    page.goto(target, wait_until="domcontentloaded")
                pages.append(page.url)
                self._settle(page, recipe)
                self._scroll(page, recipe, found, limit)
                if n + 1 == recipe.max_pages or len(found) >= limit or not recipe.next_selector:
                    break
                target = self._next(page, recipe)
                if target is None:
                    break
            page.goto("about:blank")  # stop the page's scripts while its media downloads
        except Exception as exc:  # a page that does not load is one failure, not a crash
            why = [b["reason"] for b in self.blocked[nblocked:] if b["type"] == "document"]
            error = {"url": start, "page": start, "reason": why[-1] if why and not pages else "page_error",
                     "detail": str(exc).splitlines()[0][:300]}
            page.close()  # the next start URL gets a fresh tab
        return {"media": [(u, k, p) for u, (k, p) in found.items()], "pages": pages, "error": error}

    @staticmethod
    def _settle(page, recipe: Recipe) -> None:
        if recipe.wait_for:
            try:
                page.wait_for_selector(recipe.wait_for)
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
            got = page.evaluate(COLLECT_JS, opts)
            for url, kind in collect(got["base"], got["records"]):
                if len(found) < limit:
                    found.setdefault(url, (kind, page.url))

        gather()
        idle = 0
        for _ in range(recipe.scroll_steps):
            if len(found) >= limit:
                break
            height, at_bottom = page.evaluate(SCROLL_JS)
            page.wait_for_timeout(recipe.scroll_pause_ms)
            before = len(found)
            gather()
            grew = page.evaluate("document.scrollingElement.scrollHeight") > height
            idle = idle + 1 if at_bottom and not grew and len(found) == before else 0
            if idle >= 2:  # twice at the bottom with nothing new: the feed has ended
                break

    @staticmethod
    def _next(page, recipe: Recipe) -> str | None:
        """The next page's URL; "" after clicking a button without href; None when there is none."""
        href = page.evaluate("(s) => { const e = document.querySelector(s); return e ? (e.href || '') : null; }",
                             recipe.next_selector)
        if href == "":
            page.click(recipe.next_selector)
            page.wait_for_load_state()
        return href
