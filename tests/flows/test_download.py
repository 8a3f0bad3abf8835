"""Manifest URLs through the guarded downloader (flows.ingest.download), against an http.server on
127.0.0.1 only: every URL ends as a file or a fetch_failed reason, and a second run fetches nothing."""
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from flows.ingest.config import load_preprocess
from flows.ingest.download import fetch_items, local_name
from flows.ingest.inputs import discover
from flows.ingest.process import process_batch


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (i % 256, 40, 90)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def site():
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path == "/robots.txt":
                body, ctype, code = b"User-agent: *\nDisallow: /private/\n", "text/plain", 200
            elif self.path.startswith("/img/"):
                body, ctype, code = _jpeg(int(self.path[5:-4])), "image/jpeg", 200
            elif self.path == "/metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data")
                self.end_headers()
                return
            elif self.path == "/page.html":
                body, ctype, code = b"<html>not media</html>", "text/html", 200
            else:
                body, ctype, code = b"no", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()


def _cfg(**kw):
    return load_preprocess(None, ["rate_limit_s=0", "retries=0", "timeout_s=5", "allow_hosts=[127.0.0.1]",
                                  "classes=[cat, dog]", *(f"{k}={v}" for k, v in kw.items())])


def test_a_url_list_downloads_once_and_every_failure_is_a_reason(tmp_path, site):
    base, hits = site
    good = [{"url": f"{base}/img/{i}.jpg", "label": "cat" if i % 2 else "dog"} for i in range(300)]
    bad = [{"url": f"{base}/missing.jpg", "label": "cat"}, {"url": f"{base}/metadata", "label": "cat"},
           {"url": f"{base}/page.html", "label": "cat"}, {"url": f"{base}/private/1.jpg", "label": "dog"},
           {"url": "file:///etc/passwd", "label": "dog"}, {"url": "http://[::1", "label": "dog"}]
    (tmp_path / "urls.jsonl").write_text("\n".join(map(json.dumps, good + bad)))
    cfg = _cfg()
    items = discover(tmp_path / "urls.jsonl", cfg.classes, cfg.noisy_pools)
    stats = fetch_items(items, tmp_path / "downloads", cfg, progress=False)
    assert (stats["urls"], stats["fetched"], stats["cached"], stats["failed"]) == (306, 300, 0, 6)
    reasons = [it["detail"].split(":")[0] for it in items[300:]]
    assert reasons == ["http_404", "refused_address", "not_media", "robots_disallowed", "bad_scheme", "bad_url"]
    assert all(it["reject"] == "fetch_failed" for it in items[300:])
    assert all(it["local"] == str(tmp_path / "downloads" / local_name(it["url"])) for it in items[:300])
    assert not [h for h in hits if "169.254" in h]  # the redirect target was never asked
    # rows: read from the downloaded file, the URL stays the path
    rows = process_batch(items[:2] + items[300:301], cfg).to_pylist()
    assert [r["path"] for r in rows] == [good[0]["url"], good[1]["url"], bad[0]["url"]]
    assert rows[0]["kind"] == "image" and rows[0]["label_name"] == "dog" and rows[2]["reject_reason"] == "fetch_failed"
    # resumable: a second run over the same output asks the server only for what failed
    before = len(hits)
    again = discover(tmp_path / "urls.jsonl", cfg.classes, cfg.noisy_pools)
    stats = fetch_items(again, tmp_path / "downloads", cfg, progress=False)
    assert (stats["fetched"], stats["cached"], stats["failed"]) == (0, 300, 6)
    assert all(not h.startswith("/img/") for h in hits[before:])


def test_a_killed_download_leaves_no_file_under_the_final_name(tmp_path, site, monkeypatch):
    base, _ = site
    cfg = _cfg()
    items = discover_one(tmp_path, f"{base}/img/7.jpg", cfg)

    def boom(self, data):
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr("pathlib.Path.write_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        fetch_items(items, tmp_path / "dl", cfg, progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "dl" / local_name(f"{base}/img/7.jpg")).exists()
    assert fetch_items(discover_one(tmp_path, f"{base}/img/7.jpg", cfg), tmp_path / "dl", cfg,
                       progress=False)["fetched"] == 1


def test_download_size_is_capped(tmp_path, site):
    base, _ = site
    cfg = _cfg(max_download_bytes=100)
    items = discover_one(tmp_path, f"{base}/img/3.jpg", cfg)
    assert fetch_items(items, tmp_path / "dl", cfg, progress=False)["by_reason"] == {"too_large": 1}


def discover_one(tmp_path, url, cfg):
    (tmp_path / "one.jsonl").write_text(json.dumps({"url": url, "label": "cat"}))
    return discover(tmp_path / "one.jsonl", cfg.classes, cfg.noisy_pools)
