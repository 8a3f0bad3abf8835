"""flows.scrape.parse: srcsets, CSS backgrounds, URL resolution and dedupe, kind guesses (pure, no browser)."""
import pytest

from flows.scrape import parse


@pytest.mark.parametrize("srcset, best", [
    ("a.jpg 100w, b.jpg 800w, c.jpg 400w", "b.jpg"),
    ("a.jpg, b.jpg 2x, c.jpg 1.5x", "b.jpg"),
    ("a.jpg 1x, b.jpg 320w", "b.jpg"),  # widths win over densities
    ("  https://cdn.test/x,y.jpg 640w ,https://cdn.test/z.jpg 320w", "https://cdn.test/x,y.jpg"),  # comma in a URL
    ("one.jpg", "one.jpg"),
    ("a.jpg 2x,b.jpg 3x", "b.jpg"),  # descriptors end at a comma
    ("a.jpg,b.jpg 3x", "a.jpg,b.jpg"),  # HTML: a URL is everything up to a space, commas included
    ("a.jpg 100w, bad.jpg zzz, c.jpg 200w", "c.jpg"),  # an unparsable descriptor is skipped
    ("", None),
    ("   ,  ", None),
])
def test_best_srcset_picks_the_largest(srcset, best):
    assert parse.best_srcset(srcset) == best


def test_parse_srcset_values():
    assert parse.parse_srcset("a.jpg 100w, b.jpg 2x, c.jpg") == [("a.jpg", 100.0, "w"), ("b.jpg", 2.0, "x"),
                                                                   ("c.jpg", 1.0, "x")]


@pytest.mark.parametrize("value, urls", [
    ('url("a.jpg")', ["a.jpg"]),
    ("url('b c.png'), linear-gradient(red, blue), url(d.webp)", ["b c.png", "d.webp"]),
    ("URL( e.gif )", ["e.gif"]),
    ("none", []),
    ("", []),
    ('image-set(url("x.jpg") 1x, url("y.jpg") 2x)', ["x.jpg", "y.jpg"]),
])
def test_css_urls(value, urls):
    assert parse.css_urls(value) == urls


@pytest.mark.parametrize("base, url, out", [
    ("https://Site.test/feed/page?x=1", "img/a.jpg", "https://site.test/feed/img/a.jpg"),
    ("https://site.test/feed/", "/a.jpg#frag", "https://site.test/a.jpg"),
    ("https://site.test/", "//cdn.test:443/a.jpg?w=1", "https://cdn.test/a.jpg?w=1"),
    ("http://site.test:80/a/b/", "../c/./d.jpg", "http://site.test/a/c/d.jpg"),
    ("http://site.test:8080/", "x.jpg", "http://site.test:8080/x.jpg"),
    ("http://site.test/", "data:image/gif;base64,R0lGOD", None),
    ("http://site.test/", "blob:http://site.test/123", None),
    ("http://site.test/", "javascript:void(0)", None),
    ("http://site.test/", "   ", None),
    ("http://site.test/", None, None),
    ("http://site.test/", "file:///etc/passwd", "file:///etc/passwd"),  # kept: the fetcher refuses it
    ("http://site.test/", "http://[::1]:99999/x", "http://[::1]:99999/x"),  # kept: the fetcher says bad_url
])
def test_resolve(base, url, out):
    assert parse.resolve(base, url) == out


def test_normalize_dedupes_equivalent_urls():
    same = ["HTTP://Site.Test:80/a.jpg", "http://site.test/a.jpg#x", "http://site.test/./a.jpg"]
    assert {parse.normalize(u) for u in same} == {"http://site.test/a.jpg"}
    assert parse.normalize("http://site.test") == "http://site.test/"
    assert parse.normalize("http://[::1]:8080/x") == "http://[::1]:8080/x"


@pytest.mark.parametrize("url, ctype, kind", [
    ("http://s/a.JPG", None, "image"),
    ("http://s/a.webm?x=1", None, "video"),
    ("http://s/a", "image/png; q=1", "image"),
    ("http://s/a.jpg", "video/mp4", "video"),  # the server's type beats the name
    ("http://s/page.html", None, None),
    ("http://s/a", "text/html", None),
])
def test_guess_kind(url, ctype, kind):
    assert parse.guess_kind(url, ctype) == kind


def test_media_urls_from_browser_records():
    base = "http://site.test/feed/"
    recs = [
        {"tag": "img", "src": "small.jpg", "srcset": "small.jpg 200w, big.jpg 1200w"},
        {"tag": "img", "src": None, "srcset": None, "lazy": ["lazy.jpg"]},
        {"tag": "img", "src": "data:image/gif;base64,R0l", "lazy": ["also-lazy.jpg 1x, also-lazy@2x.jpg 2x"]},
        {"tag": "video", "src": "clip.mp4", "poster": "poster.jpg"},
        {"tag": "source", "src": "clip2.webm", "in_video": True},
        {"tag": "source", "srcset": "pic.webp 1x, pic@2x.webp 2x"},
        {"tag": "other", "bg": 'url("http://site.test/bg.png"), none'},
        {"tag": "img", "src": "big.jpg"},  # a duplicate
    ]
    got = parse.collect(base, recs)
    assert got == [
        ("http://site.test/feed/big.jpg", "image"),
        ("http://site.test/feed/lazy.jpg", "image"),
        ("http://site.test/feed/also-lazy@2x.jpg", "image"),
        ("http://site.test/feed/clip.mp4", "video"),
        ("http://site.test/feed/poster.jpg", "image"),
        ("http://site.test/feed/clip2.webm", "video"),
        ("http://site.test/feed/pic@2x.webp", "image"),
        ("http://site.test/bg.png", "image"),
    ]
    # a data: placeholder src is no URL, so the lazy attribute is used instead
    assert parse.media_urls(base, recs[2]) == [("http://site.test/feed/also-lazy@2x.jpg", "image")]
    assert len(parse.collect(base, recs, limit=3)) == 3


def test_host_key():
    assert parse.host_key("http://Site.test:8080/a") == "site.test:8080"
    assert parse.host_key("https://site.test/a") == "site.test"
