"""Hostile pages against real Chromium (flows.scrape.browser) and the whole scrape (Ray), on loopback.

DNS rebinding, preconnect and WebRTC, a file:// next link, a script that never yields, and a page
whose media URLs cannot be requested as written: each must end as refused requests or failure rows,
never as a read of a local port or a scrape that stops. Only 127.0.0.x is served or contacted.
"""
from __future__ import annotations

import dataclasses
import io
import json
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from flows import scrape
from flows.scrape import load_settings
from flows.scrape.browser import Browser
from flows.scrape.fetch import Fetcher

pytestmark = pytest.mark.slow


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (seed * 40 % 256, 90, 160)).save(buf, "JPEG")
    return buf.getvalue()


class Log(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        self.server.log.append(self.path)
        super().do_GET()


def _serve(root: Path, host: str, port: int = 0) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer((host, port), lambda *a, **kw: Log(*a, directory=str(root), **kw))
    srv.log = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _twin_servers(good: Path, secret: Path):
    """The same port on 127.0.0.2 (the page's "public" address) and on 127.0.0.1 (a local service)."""
    for _ in range(20):
        a = _serve(good, "127.0.0.2")
        try:
            return a, _serve(secret, "127.0.0.1", a.server_port)
        except OSError:  # that port is taken on 127.0.0.1: try another
            a.shutdown()
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


class Listener:
    """A raw TCP port on 127.0.0.1 that counts every connection made to it (preconnects included)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port, self.accepted = self.sock.getsockname()[1], 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def _cfg(**kw):
    cfg, recipe = load_settings(None, None, ["rate_limit_s=0", "page_timeout_s=3", "scroll_steps=2",
                                             "scroll_pause_ms=50"])
    return dataclasses.replace(cfg, **kw), recipe


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    good, secret = tmp_path_factory.mktemp("good"), tmp_path_factory.mktemp("secret")
    (good / "index.html").write_text('<html><body><img src="/a.jpg"><script src="/app.js"></script></body></html>')
    (good / "app.js").write_text("const i = document.createElement('img'); i.src = '/from-script.jpg';"
                                 "document.body.appendChild(i);")
    (secret / "index.html").write_text('<html><body><img src="/SECRET.jpg"></body></html>')
    (secret / "app.js").write_text("document.body.innerHTML += '<img src=/SECRET-script.jpg>';")
    a, b = _twin_servers(good, secret)
    yield a, b
    a.shutdown()
    b.shutdown()


def test_the_browser_only_reaches_the_checked_address(twins):
    """feed.test is checked at 127.0.0.2; Chromium's own resolver (host-resolver-rules) would send it
    to 127.0.0.1, where a local service listens on the same port. Stable answers: the page renders
    from 127.0.0.2 (its script too). A rebinding resolver (127.0.0.2, then 127.0.0.1): refused."""
    good, secret = twins
    url = f"http://feed.test:{good.server_port}/index.html"
    cfg, recipe = _cfg(allow_hosts=("127.0.0.2",), robots=False,
                       browser_args=("--host-resolver-rules=MAP feed.test 127.0.0.1",))
    answers = []

    def rebinding(host, port):
        answers.append(host)
        return ["127.0.0.2"] if len(answers) == 1 else ["127.0.0.1"]

    for resolver, rebinds in ((lambda host, port: ["127.0.0.2"], False), (rebinding, True)):
        fetcher = Fetcher(cfg, resolver=resolver)
        browser = Browser(cfg, fetcher)
        try:
            got = browser.visit(url, recipe, 50)
        finally:
            browser.close()
            fetcher.close()
        media = {u.rsplit("/", 1)[1] for u, _, _ in got["media"]}
        if rebinds:
            assert got["error"] is None or got["error"]["reason"] in ("refused_address", "page_error")
            assert {b["reason"] for b in browser.blocked} == {"refused_address"}
        else:
            assert media == {"a.jpg", "from-script.jpg"} and got["error"] is None
        assert secret.log == [], "the local service on 127.0.0.1 was reached"
        assert set(fetcher.connections) <= {"127.0.0.2"}


def test_preconnect_webrtc_and_file_links_go_nowhere(tmp_path):
    listener = Listener()
    probe = f"http://127.0.0.1:{listener.port}"
    (tmp_path / "index.html").write_text(f"""<html><head>
<link rel="preconnect" href="{probe}"><link rel="dns-prefetch" href="{probe}"><link rel="prefetch" href="{probe}/p">
</head><body><img src="/a.jpg"><a class="next" href="file:///etc/hostname">next</a>
<script>
  const i = document.createElement('img'); i.src = '/rtc-' + typeof RTCPeerConnection + '.jpg';
  document.body.appendChild(i);
  fetch('{probe}/xhr').catch(() => {{}});
</script></body></html>""")
    srv = _serve(tmp_path, "127.0.0.2")
    cfg, recipe = _cfg(allow_hosts=("127.0.0.2",), robots=False)
    recipe = dataclasses.replace(recipe, next_selector="a.next", max_pages=3, wait_ms=500)
    fetcher = Fetcher(cfg)
    browser = Browser(cfg, fetcher)
    try:
        got = browser.visit(f"http://127.0.0.2:{srv.server_port}/index.html", recipe, 50)
        time.sleep(0.5)
    finally:
        browser.close()
        fetcher.close()
        srv.shutdown()
    media = {u.rsplit("/", 1)[1] for u, _, _ in got["media"]}
    assert media == {"a.jpg", "rtc-undefined.jpg"}  # the page saw no RTCPeerConnection
    assert len(got["pages"]) == 1 and got["error"] is None  # the file:// next link ended the walk
    reasons = {(b["url"].split(":")[0], b["reason"]) for b in browser.blocked}
    assert ("file", "bad_scheme") in reasons and ("http", "refused_address") in reasons  # the page's fetch()
    assert listener.accepted == 0, "something connected to the probe port"


def test_a_page_that_never_yields_is_a_failure_and_the_browser_is_replaced(tmp_path):
    (tmp_path / "spin.html").write_text("<html><body><img src='/a.jpg'>"
                                        "<script>setTimeout(() => { for (;;); }, 10)</script></body></html>")
    (tmp_path / "ok.html").write_text("<html><body><img src='/b.jpg'></body></html>")
    srv = _serve(tmp_path, "127.0.0.2")
    base = f"http://127.0.0.2:{srv.server_port}"
    # the timeout is the next page's too: long enough for a new Chromium to load it on a busy machine
    cfg, recipe = _cfg(allow_hosts=("127.0.0.2",), robots=False, page_timeout_s=5.0)
    recipe = dataclasses.replace(recipe, wait_ms=300)
    fetcher = Fetcher(cfg)
    browser = Browser(cfg, fetcher)
    try:
        t0 = time.monotonic()
        hung = browser.visit(f"{base}/spin.html", recipe, 50)
        took = time.monotonic() - t0
        ok = browser.visit(f"{base}/ok.html", recipe, 50)
    finally:
        browser.close()
        fetcher.close()
        srv.shutdown()
    assert hung["error"]["reason"] == "page_timeout" and took < 30
    assert ok["error"] is None and [u.rsplit("/", 1)[1] for u, _, _ in ok["media"]] == ["b.jpg"], ok["error"]


def test_urls_that_cannot_be_sent_as_written_are_failure_rows(tmp_path, ray_session):
    """A DEL byte and a space in a path (sent percent-encoded, as a browser does), a 70 KB src, a
    port out of range: each is one row; the good images of the same page are all written."""
    (tmp_path / "a\x7fb.jpg").write_bytes(_jpeg(1))
    (tmp_path / "c d.jpg").write_bytes(_jpeg(2))
    (tmp_path / "ok.jpg").write_bytes(_jpeg(3))
    long = "x" * 70_000
    (tmp_path / "index.html").write_text(
        "<html><body><img src='/ok.jpg'><img src='/a\x7fb.jpg'><img src='/c d.jpg'>"
        f"<img src='/{long}.jpg'><img src='http://127.0.0.2:99999/p.jpg'></body></html>")
    srv = _serve(tmp_path, "127.0.0.2")
    out = tmp_path / "out"
    try:
        rc = scrape.main([f"http://127.0.0.2:{srv.server_port}/index.html", "--to", str(out), "--quiet",
                          "allow_hosts=[127.0.0.2]", "rate_limit_s=0", "robots=false", "browsers=1",
                          "short_edge=32", "min_side=8", "scroll_steps=1"])
    finally:
        srv.shutdown()
    assert rc == 0
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(it["url"].rsplit("/", 1)[1] for it in items) == ["a\x7fb.jpg", "c d.jpg", "ok.jpg"]
    assert sorted(f["reason"] for f in fails) == ["bad_url", "bad_url"]  # the long src and the bad port
    assert all(len(f["url"]) <= 2000 for f in fails)


def test_chromium_runs_sandboxed_and_never_as_root(tmp_path):
    import os

    import psutil

    cfg, _ = _cfg()
    fetcher = Fetcher(cfg)
    browser = Browser(cfg, fetcher)
    try:
        procs = [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]
        assert procs
        for p in procs:
            assert "--no-sandbox" not in p.cmdline(), p.cmdline()[:3]
            if os.geteuid() == 0:  # as root, every Chromium process is the unprivileged user's
                assert p.uids().real != 0 and p.uids().effective != 0, (p.pid, p.uids())
    finally:
        browser.close()
        fetcher.close()
