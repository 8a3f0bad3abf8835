"""flows.scrape.urls, robots and fetch: the address policy with a fake resolver (no traffic at all), then real downloads from
an http.server on 127.0.0.1. Nothing in this module sends a packet anywhere but 127.0.0.1."""
import dataclasses
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from flows.scrape import robots, urls
from flows.scrape.fetch import Fetcher, RateLimiter
from flows.scrape.robots import RobotsCache
from flows.scrape.urls import FetchError, check_url
from flows.scrape import load_settings


def _jpeg(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def cfg(**kw):
    base, _ = load_settings(None, None, [])
    return dataclasses.replace(base, **{"rate_limit_s": 0.0, "retries": 0, "backoff_s": 0.0, "timeout_s": 2.0, **kw})


def fake_resolver(table):
    """A resolver that answers from ``table`` and fails loudly for anything else."""
    def resolve(host, port):
        if host not in table:
            raise OSError(f"unknown host {host}")
        return list(table[host])
    return resolve


class NoNetwork(httpx.BaseTransport):
    """A transport that fails the test if a request is ever sent."""

    def handle_request(self, request):
        raise AssertionError(f"a request was sent to {request.url}")


# ---------------------------------------------------------------- the address policy (pure)

@pytest.mark.parametrize("ip, refused", [
    ("10.0.0.5", True), ("172.16.3.4", True), ("192.168.1.1", True), ("127.0.0.1", True),
    ("169.254.169.254", True), ("224.0.0.1", True), ("0.0.0.0", True), ("240.0.0.1", True),
    ("100.64.0.1", True), ("255.255.255.255", True), ("::1", True), ("fe80::1", True), ("fc00::1", True),
    ("::ffff:10.0.0.1", True), ("ff02::1", True), ("::", True),
    ("93.184.216.34", False), ("8.8.8.8", False), ("2606:4700:4700::1111", False), ("::ffff:8.8.8.8", False),
])
def test_address_refused(ip, refused):
    assert urls.address_refused(ip) is refused


def test_refused_before_any_connection():
    res = fake_resolver({"evil.test": ["10.0.0.5"], "mixed.test": ["93.184.216.34", "127.0.0.1"],
                         "public.test": ["93.184.216.34"], "meta.test": ["169.254.169.254"]})
    f = Fetcher(cfg(), resolver=res, transport=NoNetwork())
    for url, reason in [("http://evil.test/x.jpg", "refused_address"),
                        ("http://mixed.test/x.jpg", "refused_address"),  # one bad answer is enough
                        ("http://meta.test/latest/meta-data", "refused_address"),
                        ("http://10.0.0.5/x.jpg", "refused_address"),
                        ("ftp://public.test/x.jpg", "bad_scheme"), ("file:///etc/passwd", "bad_scheme"),
                        ("x.jpg", "bad_scheme"), ("http:///x.jpg", "bad_url"),
                        ("http://nowhere.test/x.jpg", "dns_error")]:
        got, failure = f.try_fetch(url)
        assert got is None and failure["reason"] == reason, (url, failure)
    assert not f.connections  # nothing was ever sent
    # a public answer passes the policy (checked only: this test never connects)
    assert check_url("https://public.test/a.jpg", res).ip == "93.184.216.34"


@pytest.mark.parametrize("allow, ok", [
    (dict(allow_hosts=("10.0.0.5",)), True), (dict(allow_hosts=("10.0.0.0/8",)), True),
    (dict(allow_hosts=("intranet.test",)), True), (dict(allow_hosts=(".test",)), True),
    (dict(allow_hosts=("127.0.0.1",)), False), (dict(allow_private=True), True), ({}, False),
])
def test_allow_lists(allow, ok):
    res = fake_resolver({"intranet.test": ["10.0.0.5"]})
    if ok:
        assert check_url("http://intranet.test/a", res, **allow).ip == "10.0.0.5"
    else:
        with pytest.raises(FetchError, match="refused_address"):
            check_url("http://intranet.test/a", res, **allow)


def test_rate_limiter_books_slots_per_host():
    now = [100.0]
    rl = RateLimiter(0.5, clock=lambda: now[0])
    assert [rl.reserve("a"), rl.reserve("a"), rl.reserve("b"), rl.reserve("a")] == [0.0, 0.5, 0.0, 1.0]
    now[0] = 105.0
    assert rl.reserve("a") == 0.0
    # thread-safe: concurrent callers get distinct slots
    rl = RateLimiter(1.0, clock=lambda: 0.0)
    got, lock = [], threading.Lock()

    def take():
        d = rl.reserve("h")
        with lock:
            got.append(d)
    threads = [threading.Thread(target=take) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [float(i) for i in range(40)]


def test_robots_cache_rules_and_status_codes():
    calls = []
    answers = {"http://a.test/robots.txt": (200, "User-agent: *\nDisallow: /private/\n"),
               "http://b.test/robots.txt": FetchError("http_404"),
               "http://c.test/robots.txt": FetchError("http_503"),
               "http://d.test/robots.txt": FetchError("timeout")}

    def get_text(url):
        calls.append(url)
        ans = answers[url]
        if isinstance(ans, Exception):
            raise ans
        return ans
    rc = RobotsCache(get_text, "sift-scraper/0.1")
    assert rc.allowed("http://a.test/pub/x.jpg") and not rc.allowed("http://a.test/private/x.jpg")
    assert rc.allowed("http://b.test/private/x.jpg")  # no robots.txt: everything allowed
    assert not rc.allowed("http://c.test/x.jpg")  # server error: nothing allowed (RFC 9309)
    assert not rc.allowed("http://d.test/x.jpg")  # unreachable: nothing allowed
    assert rc.allowed("http://a.test/y.jpg")
    assert calls.count("http://a.test/robots.txt") == 1


# urllib.robotparser reads these patterns literally ("*" and "$" as characters), so it allows every URL
# below; RFC 9309 section 2.2.3 makes "*" any run of characters and a final "$" the end of the path.
ROBOTS = ("User-agent: *\n"
          "Disallow: /*.php$\n"           # any .php page, but not one with a query after it
          "Disallow: /*/private/\n"       # a private/ folder at any depth
          "Disallow: /tmp$\n"             # exactly /tmp, not what is under it
          "Allow: /*/private/*.jpg$\n"    # longer than the Disallow above: wins for its JPEGs
          "\n"
          "User-agent: sift-scraper\n"    # the most specific group replaces '*' for this agent
          "Disallow: /*.gif$\n")


@pytest.mark.parametrize("path, star_ok", [
    ("/index.php", False), ("/a/b/index.php", False), ("/index.php?x=1", True), ("/index.phps", True),
    ("/x/private/a.png", False), ("/a/b/private/c/d", False), ("/private/a.png", True),  # '/*/' needs a folder
    ("/x/private/a.jpg", True), ("/x/private/a.jpg?v=2", False),
    ("/tmp", False), ("/tmp/x.jpg", True), ("/tmpfile", True), ("/", True),
])
def test_robots_wildcards_and_end_anchor(path, star_ok):
    rules = robots.parse_robots(200, ROBOTS)
    assert robots.robots_allow(rules, "http://a.test" + path, "other-bot/2.0") is star_ok
    # sift-scraper has its own group: only its GIF rule applies, the '*' group does not
    assert robots.robots_allow(rules, "http://a.test" + path, "sift-scraper/0.1")
    assert not robots.robots_allow(rules, "http://a.test/x/pic.gif", "sift-scraper/0.1")
    assert robots.robots_allow(rules, "http://a.test/x/pic.gif?v=1", "sift-scraper/0.1")


def test_robots_status_codes_and_garbage():
    assert robots.parse_robots(404, "") is True and robots.parse_robots(410, "Disallow: /") is True
    assert robots.parse_robots(503, "") is False and robots.parse_robots(302, "") is False
    garbage = bytes(range(256)).decode("utf-8", "replace") * 20 + "\n<html>not robots</html>\n"
    assert robots.robots_allow(robots.parse_robots(200, garbage), "http://a.test/x.jpg", "sift-scraper/0.1")
    assert robots.robots_allow(robots.parse_robots(200, ""), "http://a.test/x.jpg", "sift-scraper/0.1")
    assert not robots.robots_allow(False, "http://a.test/robots.txt", "sift-scraper/0.1")  # disallow all is all


def test_robots_cache_applies_wildcard_rules_per_origin():
    texts = {"http://a.test/robots.txt": ROBOTS, "http://b.test/robots.txt": "User-agent: *\nDisallow: /\n"}
    rc = RobotsCache(lambda url: (200, texts[url]), "other-bot/2.0")
    assert not rc.allowed("http://a.test/shop/cart.php") and rc.allowed("http://a.test/shop/cart.php?id=3")
    assert rc.allowed("http://a.test/x/private/a.jpg") and not rc.allowed("http://a.test/x/private/a.png")
    assert not rc.allowed("http://b.test/shop/cart.php?id=3")  # the other origin's own rules


# ---------------------------------------------------------------- real downloads from 127.0.0.1

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log: list = []
    hits: dict = {}

    def log_message(self, *a):
        pass

    def _send(self, status, body=b"", ctype="image/jpeg", headers=(), length=True):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # (a table of test routes)
        p = self.path
        Handler.log.append((p, self.headers.get("Host")))
        Handler.hits[p] = Handler.hits.get(p, 0) + 1
        if p == "/robots.txt":
            return self._send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        if p in ("/a.jpg", "/private/a.jpg", "/r/final.jpg"):
            return self._send(200, JPEG)
        if p == "/r/1":
            return self._send(302, headers=[("Location", "/r/2")])
        if p == "/r/2":
            return self._send(301, headers=[("Location", f"http://127.0.0.1:{self.server.server_port}/r/final.jpg")])
        if p == "/loop":
            return self._send(302, headers=[("Location", "/loop")])
        if p == "/go":
            return self._send(302, headers=[("Location", "http://10.0.0.5/x.jpg")])
        if p == "/ftp":
            return self._send(302, headers=[("Location", "ftp://127.0.0.1/x.jpg")])
        if p == "/page.html":
            return self._send(200, b"<!doctype html><html>" + b"x" * 100_000, "text/html")
        if p == "/big.jpg":
            return self._send(200, JPEG + b"\0" * 50_000)
        if p == "/big-stream.jpg":  # no Content-Length: the cap must hold while streaming
            return self._send(200, JPEG + b"\0" * 50_000, length=False)
        if p == "/empty.jpg":
            return self._send(200, b"")
        if p == "/flaky.jpg":
            return self._send(503 if Handler.hits[p] <= 2 else 200, JPEG if Handler.hits[p] > 2 else b"")
        if p == "/down.jpg":
            return self._send(503, b"")
        if p == "/a%20b%7Fc.jpg":  # a raw space and DEL in a page's src, sent percent-encoded
            return self._send(200, JPEG)
        if p == "/cookie":
            return self._send(200, b"<html>ok</html>", "text/html",
                              headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        if p == "/slow.jpg":
            time.sleep(1.0)
            return self._send(200, JPEG)
        return self._send(404, b"not found", "text/plain")


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that gave up (timeout test) breaks the pipe: expected here


@pytest.fixture(scope="module")
def site():
    srv = QuietServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()


@pytest.fixture
def local(site):
    Handler.log.clear()
    Handler.hits.clear()
    sleeps = []
    f = Fetcher(cfg(allow_hosts=("127.0.0.1",), max_bytes=20_000), sleep=sleeps.append)
    f.sleeps = sleeps
    yield f
    f.close()


@pytest.mark.parametrize("path, reason", [
    ("/private/a.jpg", "robots_disallowed"), ("/loop", "too_many_redirects"), ("/go", "refused_address"),
    ("/ftp", "bad_scheme"), ("/page.html", "not_media"), ("/big.jpg", "too_large"),
    ("/big-stream.jpg", "too_large"), ("/empty.jpg", "empty"), ("/nope.jpg", "http_404"),
])
def test_failures_have_reasons(local, site, path, reason):
    got, failure = local.try_fetch(site + path)
    assert got is None and failure["reason"] == reason, failure
    assert set(local.connections) == {"127.0.0.1"}  # 10.0.0.5 was refused before any connection


def test_downloads_follow_checked_redirects(local, site):
    got = local.fetch(site + "/r/1")
    assert got.data == JPEG and (got.kind, got.format) == ("image", "JPEG")
    assert got.final_url == site + "/r/final.jpg"
    assert [p for p, _ in Handler.log if p != "/robots.txt"] == ["/r/1", "/r/2", "/r/final.jpg"]
    assert Handler.hits["/robots.txt"] == 1  # cached per origin


def test_loopback_needs_the_allow_list(site):
    Handler.log.clear()
    f = Fetcher(cfg())
    assert f.try_fetch(site + "/a.jpg")[1]["reason"] == "refused_address"
    assert not f.connections and not Handler.log  # nothing reached the server


def test_connection_is_pinned_to_the_checked_address(site):
    """A name resolved by the (fake) resolver is connected to at the checked address, by name."""
    Handler.log.clear()
    port = site.rsplit(":", 1)[1]
    f = Fetcher(cfg(allow_hosts=("127.0.0.1",)), resolver=fake_resolver({"site.test": ["127.0.0.1"]}))
    got = f.fetch(f"http://site.test:{port}/a.jpg")
    assert got.data == JPEG and ("/a.jpg", f"site.test:{port}") in Handler.log


def test_retries_with_backoff(local, site):
    f = Fetcher(cfg(allow_hosts=("127.0.0.1",), retries=2, backoff_s=0.1), sleep=local.sleeps.append)
    assert f.fetch(site + "/flaky.jpg").data == JPEG
    assert local.sleeps == [0.1, 0.2] and Handler.hits["/flaky.jpg"] == 3
    assert f.try_fetch(site + "/down.jpg")[1]["reason"] == "http_503" and Handler.hits["/down.jpg"] == 3


def test_timeout(site):
    f = Fetcher(cfg(allow_hosts=("127.0.0.1",), timeout_s=0.3))
    assert f.try_fetch(site + "/slow.jpg")[1]["reason"] == "timeout"


def test_rate_limit_is_applied_per_host(site):
    sleeps = []
    f = Fetcher(cfg(allow_hosts=("127.0.0.1",), rate_limit_s=0.2), sleep=sleeps.append)
    for _ in range(3):
        f.fetch(site + "/a.jpg")
    # robots.txt + 3 images to one host: each request waits for its slot (sleep is faked here)
    assert len(sleeps) == 3 and all(0.05 < s <= 0.6 for s in sleeps)


@pytest.mark.parametrize("url, reason", [
    ("http://b\u00fccher.test/x.jpg", "dns_error"),  # an IDN host: asked for in punycode, unknown here
    ("http://ex\x7fample.test/x.jpg", "bad_url"), ("http://[::1/x.jpg", "bad_url"),
    ("http://example.test:99999/x.jpg", "bad_url"), ("http://example.test/" + "x" * 70_000, "bad_url"),
    ("javascript:alert(1)", "bad_scheme"), ("file:///etc/passwd", "bad_scheme"),
])
def test_hostile_urls_are_failure_rows_not_exceptions(url, reason):
    asked = []
    f = Fetcher(cfg(), resolver=lambda host, port: asked.append(host) or (_ for _ in ()).throw(OSError("no")),
                transport=NoNetwork())
    got, failure = f.try_fetch(url)
    assert got is None and failure["reason"] == reason, failure
    assert asked in ([], ["xn--bcher-kva.test"])  # the name asked for is the ASCII form


def test_raw_control_characters_in_a_path_are_sent_percent_encoded(local, site):
    got = local.fetch(site + "/a b\x7fc.jpg")
    assert got.data == JPEG and "/a%20b%7Fc.jpg" in Handler.hits


def test_an_unexpected_error_is_still_one_url_failure(local, site, monkeypatch):
    monkeypatch.setattr(local, "_follow", lambda url, media: 1 / 0)
    got, failure = local.try_fetch(site + "/a.jpg")
    assert got is None and failure["reason"] == "internal_error" and "ZeroDivisionError" in failure["detail"]


def test_browser_resources_are_pinned_capped_and_redirects_come_back_unfollowed(site):
    """What the browser's route handler gets: one hop, at the checked address, capped, headers kept."""
    Handler.log.clear()
    port = site.rsplit(":", 1)[1]
    f = Fetcher(cfg(allow_hosts=("127.0.0.1",)), resolver=fake_resolver({"site.test": ["127.0.0.1"]}))
    hop = f.fetch_resource(f"http://site.test:{port}/r/1")
    assert (hop.status, hop.headers["location"], hop.body) == (302, "/r/2", b"")
    assert [p for p, _ in Handler.log] == ["/r/1"]  # not followed: the browser asks again, routed again
    page = f.fetch_resource(f"http://site.test:{port}/cookie", headers={"Host": "evil.test", "Cookie": "s=1"})
    assert page.status == 200 and page.headers["set-cookie"] == "a=1\nb=2" and page.body == b"<html>ok</html>"
    assert Handler.log[-1] == ("/cookie", f"site.test:{port}")  # the Host is the checked name's
    assert f.fetch_resource(f"{site}/nope").status == 404  # an error page is still the page's answer
    with pytest.raises(FetchError) as exc:
        f.fetch_resource(f"{site}/page.html", limit=10_000)
    assert exc.value.reason == "too_large"
    with pytest.raises(FetchError) as exc:
        f.fetch_resource("http://10.0.0.5/")
    assert exc.value.reason == "refused_address"
