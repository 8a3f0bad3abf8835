"""Manifest URL lists: an img2dataset-style list of N URLs (default 10,000) on a loopback server,
fetched by ``flows.ingest.download`` (the guarded downloader), then the same list again (the resume path),
side by side in one run.

Prints URLs/s for the first pass at 1 and at ``--threads`` download threads, the second (resumed)
pass's time as a ratio of the first, and that every URL ended as a file or a reason. 127.0.0.1 only
(allow-listed; rate limit 0: one host serves every URL here, where a real list spreads over many).

    python bench/download.py [--urls 10000 --threads 8]
"""
from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.ingest.config import load_preprocess
from flows.ingest.download import fetch_items
from flows.ingest.inputs import discover


def _jpegs(n: int = 64) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (96, 72), (i * 4 % 256, 90, 160)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


def serve(missing_every: int, latency_s: float) -> tuple[ThreadingHTTPServer, list[int]]:
    bodies, hits = _jpegs(), [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

        def setup(self):
            super().setup()
            # headers and body go out as two writes: without this, Nagle + delayed ACK add ~40 ms each
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self):
            hits[0] += 1
            time.sleep(latency_s)  # a remote host's round trip: what download threads overlap
            n = int(self.path.rsplit("/", 1)[-1].split(".")[0]) if self.path.startswith("/img/") else -1
            if n < 0 or (missing_every and n % missing_every == missing_every - 1):
                body, ctype, code = b"missing", "text/plain", 404
            else:
                body, ctype, code = bodies[n % len(bodies)], "image/jpeg", 200
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.handle_error = lambda *a: None  # a client closing its kept-alive connection is not news
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, hits


def one_pass(manifest: Path, out: Path, threads: int, limit: int | None = None) -> tuple[float, dict]:
    cfg = load_preprocess(None, ["rate_limit_s=0", "retries=0", "allow_hosts=[127.0.0.1]", "robots=false",
                                 f"download_threads={threads}", "classes=[a, b]"])
    items = discover(manifest, cfg.classes, cfg.noisy_pools)[:limit]
    t0 = time.perf_counter()
    stats = fetch_items(items, out, cfg, progress=False)
    return time.perf_counter() - t0, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--missing-every", type=int, default=100, help="every Nth URL answers 404")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="the server's delay per request")
    ap.add_argument("--baseline", type=int, default=1000, help="URLs of the 1-thread baseline")
    args = ap.parse_args(argv)
    srv, hits = serve(args.missing_every, args.latency_ms / 1000)
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        manifest = d / "urls.jsonl"
        manifest.write_text("".join(json.dumps({"url": f"{base}/img/{i}.jpg", "label": "ab"[i % 2]}) + "\n"
                                    for i in range(args.urls)))
        k = min(args.baseline, args.urls)
        single_s, _ = one_pass(manifest, d / "one", 1, k)
        first_s, first = one_pass(manifest, d / "many", args.threads)
        before = hits[0]
        again_s, again = one_pass(manifest, d / "many", args.threads)
    srv.shutdown()
    n = args.urls
    print(f"{n} URLs on 127.0.0.1, {args.latency_ms:g} ms per request ({first['failed']} answer 404)")
    print(f"  1 thread ({k} URLs): {single_s:7.1f} s  {k / single_s:7.1f} URLs/s")
    print(f"  {args.threads} threads:          {first_s:7.1f} s  {n / first_s:7.1f} URLs/s  "
          f"({(n / first_s) / (k / single_s):.2f}x one thread)")
    print(f"  resumed, same out: {again_s:7.1f} s  ({again_s / first_s:.3f}x the first pass): "
          f"{again['cached']} already there, {again['fetched']} fetched, "
          f"{hits[0] - before} requests (the failed URLs, tried again)")
    ok = first["fetched"] + first["failed"] == n and again["cached"] == first["fetched"]
    print(f"every URL a file or a reason: {ok}; by reason {first['by_reason']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
