"""sift scrape end to end with real Chromium on a fixture site served from 127.0.0.1.

The site (generated into tmp_path) has native lazy images, an IntersectionObserver loader, infinite
scroll, a srcset, a video with a poster, a CSS background, a broken image, a hidden image, a redirect
towards a private address, a robots.txt-disallowed folder and a paginated feed. Only 127.0.0.1 is
allow-listed; every other private address stays refused, and nothing is sent anywhere else.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows import scrape
from flows.scrape.browser import BASE_FLAGS
from flows.ingest.inputs import discover

pytestmark = pytest.mark.slow
# Chromium may resolve nothing but 127.0.0.1 here (IP literals are guarded by the route policy).
NO_DNS = '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'
COMMON = ["allow_hosts=[127.0.0.1]", "rate_limit_s=0", "short_edge=128", "byte_budget=8000",
          "video_keyframes=2", f"browser_args=['{NO_DNS}']", "--quiet"]

PAGE = """<!doctype html><html><head><style>
 .item {{ height: 420px; }} img {{ display: block; width: 200px; height: 150px; }}
 .bg {{ width: 200px; height: 150px; background-image: url("img/bg.jpg"); }}
</style></head><body>
<div class="item"><img loading="lazy" src="img/n0.jpg"></div>
<div class="item"><img loading="lazy" src="img/n1.jpg"><img loading="lazy" src="img/n2.jpg"></div>
<div class="item"><img src="img/s-small.jpg" srcset="img/s-small.jpg 160w, img/s-big.jpg 1200w"></div>
<div class="item"><video src="media/clip.mp4" poster="img/poster.jpg" width="200" height="150"></video></div>
<div class="item"><div class="bg"></div><img src="img/hidden.jpg" style="display:none"></div>
<div class="item"><img src="img/broken.jpg"><img src="/go"><img src="/private/secret.jpg">
  <img src="img/missing.jpg"><img src="notes.txt"></div>
<div style="height: 1500px"></div>
<div class="item"><img class="io" data-img="img/l0.jpg"><img class="io" data-img="img/l1.jpg"></div>
<div class="item"><img class="io" data-img="img/l2.jpg"></div>
<div id="feed"></div>
<script>
 const io = new IntersectionObserver((es) => es.forEach((e) => {{
   if (e.isIntersecting) {{ e.target.src = e.target.dataset.img; io.unobserve(e.target); }} }}));
 document.querySelectorAll('img.io').forEach((i) => io.observe(i));
 let batch = 0;  // infinite scroll: 3 more items whenever the bottom comes into view, 3 times
 window.addEventListener('scroll', () => {{
   if (batch >= 3 || innerHeight + scrollY < document.body.scrollHeight - 300) return;
   for (let k = 0; k < 3; k++) {{
     const d = document.createElement('div'); d.className = 'item';
     const i = document.createElement('img'); i.className = 'io'; i.dataset.img = 'img/f' + (batch * 3 + k) + '.jpg';
     d.appendChild(i); document.getElementById('feed').appendChild(d); io.observe(i);
   }}
   batch++;
 }});
</script></body></html>"""
PAGED = """<!doctype html><html><body><img src="/img/p{n}.jpg">{next}</body></html>"""
GOOD_IMAGES = ["n0", "n1", "n2", "s-big", "poster", "bg", "l0", "l1", "l2"] + [f"f{i}" for i in range(9)]


def _jpeg(seed: int, size=(320, 240)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_site(root: Path) -> None:
    """Write the fixture site into ``root``."""
    (root / "img").mkdir(parents=True)
    (root / "media").mkdir()
    (root / "private").mkdir()
    (root / "paged").mkdir()
    names = GOOD_IMAGES + ["s-small", "hidden", "p1", "p2", "p3"]
    for i, name in enumerate(names):
        (root / "img" / f"{name}.jpg").write_bytes(_jpeg(i, (1200, 900) if name == "s-big" else (320, 240)))
    (root / "img" / "broken.jpg").write_bytes(_jpeg(99)[:400])
    (root / "private" / "secret.jpg").write_bytes(_jpeg(98))
    (root / "notes.txt").write_text("not an image at all\n" * 20)
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    (root / "index.html").write_text(PAGE.format())
    (root / "private" / "page.html").write_text("<html><body><img src='/img/n0.jpg'></body></html>")
    for n in (1, 2, 3):
        nxt = f'<a class="next" href="{n + 1}.html">next</a>' if n < 3 else ""
        (root / "paged" / f"{n}.html").write_text(PAGED.format(n=n, next=nxt))
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=2",
                    "-pix_fmt", "yuv420p", str(root / "media" / "clip.mp4")], check=True)


class SiteHandler(SimpleHTTPRequestHandler):
    log: list[str] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        SiteHandler.log.append(self.path)
        if self.path == "/go":  # towards a private address: must be refused before connecting
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.5/x.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@contextlib.contextmanager
def served_site(root: Path):
    """The fixture site generated into ``root``, served on 127.0.0.1: yields its base URL."""
    make_site(root)
    handler = lambda *a, **kw: SiteHandler(*a, directory=str(root), **kw)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with served_site(tmp_path_factory.mktemp("site")) as url:
        yield url


@pytest.fixture(scope="module")
def scraped(site, ray_session, tmp_path_factory):
    """One scrape of four start URLs on two browsers, written with --to."""
    out = tmp_path_factory.mktemp("scraped")
    recipe = out / "feed-recipe.yaml"
    recipe.write_text("next_selector: a.next\nmax_pages: 2\nscroll_steps: 15\nscroll_pause_ms: 150\n")
    SiteHandler.log.clear()
    t0 = time.perf_counter()
    rc = scrape.main([f"{site}/index.html", f"{site}/paged/1.html", f"{site}/private/page.html",
                      "http://10.0.0.5/feed", "--recipe", str(recipe), "--to", str(out / "ds"), "--label", "GOOD",
                      *COMMON])
    assert rc == 0
    return out / "ds", time.perf_counter() - t0


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_collects_lazy_scrolled_srcset_video_and_background_media(scraped, site):
    ds, _ = scraped
    items = _lines(ds / "items.jsonl")
    urls = {it["url"].rsplit("/", 1)[1] for it in items}
    assert {f"{n}.jpg" for n in GOOD_IMAGES} <= urls  # lazy, scrolled-in, infinite, largest srcset, bg
    assert {"p1.jpg", "p2.jpg"} <= urls and "p3.jpg" not in urls  # max_pages: 2
    assert not {"s-small.jpg", "hidden.jpg", "secret.jpg"} & urls
    video = [it for it in items if it["url"].endswith("clip.mp4")]
    assert {it["kind"] for it in video} == {"thumbnail", "frame"} and len(video) >= 2
    assert len(items) == len(GOOD_IMAGES) + 2 + len(video)
    for it in items:  # compressed client-side like preprocessing: short edge and byte budget
        img = Image.open(ds / it["path"])
        assert img.format == "JPEG" and min(img.size) <= 128 and (ds / it["path"]).stat().st_size <= 8000
        assert it["label"] == "GOOD" and it["group"] == it["source"] and it["source"].startswith(site)


def test_every_failure_has_a_reason_and_nothing_leaves_loopback(scraped, site):
    ds, _ = scraped
    reasons = {f["url"].replace(site, ""): f["reason"] for f in _lines(ds / "failures.jsonl")}
    assert reasons == {"/img/broken.jpg": "decode_error", "/go": "refused_address",
                       "/private/secret.jpg": "robots_disallowed", "/img/missing.jpg": "http_404",
                       "/notes.txt": "not_media", "/private/page.html": "robots_disallowed",
                       "http://10.0.0.5/feed": "refused_address"}
    summary = json.loads((ds / "scrape.json").read_text())
    assert set(summary["connections"]) == {"127.0.0.1"}  # 10.0.0.5 was never connected to
    assert {b["url"] for b in summary["browser_refused"]} >= {"http://10.0.0.5/feed"}
    # the browser never loaded media itself: each image was requested once, by the guarded fetcher
    counts = {p: SiteHandler.log.count(p) for p in set(SiteHandler.log) if p.startswith("/img/")}
    assert counts and set(counts.values()) == {1}
    assert "/private/secret.jpg" not in SiteHandler.log and "/img/s-small.jpg" not in SiteHandler.log


def test_the_manifest_is_accepted_by_preprocess_ingest(scraped):
    ds, _ = scraped
    got = discover(ds / "items.jsonl", ("BAD", "NEUTRAL", "GOOD"), {})
    assert got and all(not it["reject"] and Path(it["path"]).is_file() for it in got)
    assert {it["label_name"] for it in got} == {"GOOD"}


# ---------------------------------------------------------------- the filtered feed

def open_in_browser(html: Path, png: Path):
    """Load ``html`` in real Chromium; returns (page, cleanup). A screenshot goes to ``png``."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=[*BASE_FLAGS, NO_DNS])
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(html.as_uri())
    page.screenshot(path=str(png), full_page=True)

    def close():
        browser.close()
        pw.stop()
    return page, close


def check_feed_dom(page, entries: list[dict]) -> None:
    arts = page.query_selector_all("article.item")
    assert len(arts) == len(entries)
    for art, e in zip(arts, entries):
        assert art.get_attribute("data-item-id") == e["id"]
        assert art.query_selector("div.feedback") is not None  # hook for the "wrong verdict" button
        score = art.query_selector(".score").inner_text()
        if e["verdict"] == "hide":  # collapsed: the image is not shown until "show" is clicked
            assert art.query_selector("details").get_attribute("open") is None
            assert not art.query_selector("img").is_visible()
            assert f"{e['score']:.2f}" in score
        elif e["verdict"] == "highlight":
            assert "highlight" in art.get_attribute("class") and art.query_selector("img").is_visible()
            assert page.evaluate("(a) => getComputedStyle(a).borderColor", art) == "rgb(42, 157, 75)"
        if e["label"]:
            assert e["label"] in score and f"{e['score']:.2f}" in score


def png_ok(png: Path) -> None:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert min(Image.open(png).size) > 100


def test_feed_collapses_bad_and_highlights_good(tmp_path):
    cfg, _ = scrape.load_settings(None, None, [])
    items = [{"id": f"i{k}", "page": "http://p.test/", "url": f"http://p.test/{k}.jpg", "kind": "image",
              "timestamp": None, "image": _jpeg(k, (96, 72))} for k in range(4)]
    labels = ["BAD", "GOOD", "NEUTRAL"]
    verdicts = {f"i{k}": {"label": lab, "probs": {c: (0.8 if c == lab else 0.1) for c in labels}}
                for k, lab in enumerate(labels)}
    verdicts["i3"] = {"name": "i3", "status": 422, "error": {"code": "decode_error", "message": "bad"}}
    html = scrape.write_feed(tmp_path, items, verdicts, cfg)
    entries = json.loads((tmp_path / "feed.json").read_text())
    assert [e["verdict"] for e in entries] == ["hide", "highlight", "show", "error"]
    page, close = open_in_browser(html, tmp_path / "feed.png")
    try:
        check_feed_dom(page, entries)
        page.click("article.hide summary")  # the "show" toggle reveals a hidden item
        assert page.query_selector("article.hide img").is_visible()
        assert "decode_error" in page.query_selector("article.error .score").inner_text()
        assert page.query_selector("button.wrong") is None  # no review_url: no "wrong verdict" buttons
    finally:
        close()
    png_ok(tmp_path / "feed.png")
    # with a review server: one button per item (hidden ones too), a choice of the other classes, the token
    cfg, _ = scrape.load_settings(None, None, ["review_url=http://127.0.0.1:9/", "review_token=tk</script>"])
    text = scrape.write_feed(tmp_path / "r", items, verdicts, cfg).read_text()
    assert text.count('<button class="wrong"') == 4 and text.count('<select class="suggest"') == 4
    assert '"token": "tk<\\/script>"' in text and "</script>" not in text.split("<script>")[1][:-len("</script></body></html>")]


class RefusingBackend(BaseHTTPRequestHandler):
    """A sift API that knows no token: every request is a 401 in the API's error shape, and the
    Authorization header it was sent is kept (the real API's 401s: tests/serve/test_api.py)."""
    seen: list[tuple[str, str]] = []

    def log_message(self, *a):
        pass

    def _refuse(self):
        RefusingBackend.seen.append((self.path, self.headers.get("Authorization", "")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse


def test_a_backend_that_refuses_the_token_leaves_the_scrape_whole(site, ray_session, tmp_path):
    """The scrape still finishes and writes its feed; each item says why it has no verdict. (The feed
    with the real API's verdicts: tests/serve/test_client.py.)"""
    RefusingBackend.seen.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RefusingBackend)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        rc = scrape.main([f"{site}/paged/3.html", "--to-server", f"http://127.0.0.1:{srv.server_port}",
                          "--token", "nope", "--to", str(tmp_path / "f2"), "browsers=1", *COMMON])
    finally:
        srv.shutdown()
    bad = json.loads((tmp_path / "f2" / "feed.json").read_text())
    assert rc == 0 and bad and all(e["error"]["code"] == "unauthorized" for e in bad)
    assert [p for p, _ in RefusingBackend.seen][0] == "/readyz" and "/v1/jobs" in {p for p, _ in RefusingBackend.seen}
    assert {h for _, h in RefusingBackend.seen} == {"Bearer nope"}  # the token, on every request
