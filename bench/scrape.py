"""Scraper throughput: items/s from a generated site on 127.0.0.1 with 1 vs 2 browser actors, same run.

Each side runs the real browser actors (flows.scrape.PageWorker as a Ray actor: headless Chromium,
guarded downloads, byte-budget compression) over the same pages. Browser start-up is timed apart
from the scrape itself (actors are created and waited for first), and both are printed.
Traffic goes to 127.0.0.1 only (allow-listed; Chromium resolves nothing else).

    python bench/scrape.py [--pages 12 --images 10 --size 1280x720]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.scrape import actor_classes, load_settings

PAGE = """<!doctype html><html><head><style>.item{{height:500px}} img{{display:block;width:320px;height:180px}}
</style></head><body>{items}<script>
 const io = new IntersectionObserver((es) => es.forEach((e) => {{
   if (e.isIntersecting) {{ e.target.src = e.target.dataset.img; io.unobserve(e.target); }} }}));
 document.querySelectorAll('img[data-img]').forEach((i) => io.observe(i));
</script></body></html>"""


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def make_site(root: Path, pages: int, images: int, size: tuple[int, int]) -> list[str]:
    """``pages`` feed pages of ``images`` distinct JPEGs each (half lazy-loaded on scroll)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    names = []
    for p in range(pages):
        tags = []
        for i in range(images):
            a = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(a).resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
            (root / "img" / f"{p}-{i}.jpg").write_bytes(buf.getvalue())
            attr = "data-img" if i % 2 else "src"
            tags.append(f'<div class="item"><img {attr}="img/{p}-{i}.jpg"></div>')
        (root / f"page{p}.html").write_text(PAGE.format(items="".join(tags)))
        names.append(f"page{p}.html")
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")
    return names


def run(urls: list[str], browsers: int, overrides: list[str]) -> dict:
    """Start ``browsers`` actors (timed), then scrape every URL on them (timed)."""
    import ray
    from ray.util import ActorPool

    cfg, recipe = load_settings(None, None, [*overrides, f"browsers={browsers}"])
    BrowserActor, _ = actor_classes()
    t0 = time.perf_counter()
    actors = [BrowserActor.options(num_cpus=cfg.browser_cpus).remote(cfg, recipe) for _ in range(browsers)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    pages = list(ActorPool(actors).map_unordered(lambda a, u: a.scrape.remote(u, recipe.max_items), urls))
    seconds = time.perf_counter() - t0
    for a in actors:
        ray.get(a.close.remote())
        ray.kill(a)
    items = sum(len(p["items"]) for p in pages)
    failures = sum(len(p["failures"]) for p in pages)
    return {"browsers": browsers, "items": items, "failures": failures, "startup_s": startup,
            "scrape_s": seconds, "items_per_s": items / seconds, "end_to_end_items_per_s": items / (seconds + startup)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=12)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--size", default="1280x720")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))

    from flows.core.runtime import init_ray

    init_ray()
    with tempfile.TemporaryDirectory(prefix="sift-bench-site-") as tmp:
        names = make_site(Path(tmp), args.pages, args.images, size)
        srv = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **kw: Quiet(*a, directory=tmp, **kw))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        urls = [f"http://127.0.0.1:{srv.server_port}/{n}" for n in names]
        overrides = ["allow_hosts=[127.0.0.1]", "rate_limit_s=0", "scroll_steps=8", "scroll_pause_ms=100",
                     "browser_args=['--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1']"]
        results = [run(urls, n, overrides) for n in (1, 2)]
        srv.shutdown()
    print(f"\n{args.pages} pages x {args.images} images of {args.size} (compressed to 448 px / 200 KB)")
    print(f"{'browsers':>8} {'items':>6} {'fail':>5} {'startup s':>10} {'scrape s':>9} {'items/s':>8} "
          f"{'incl. startup':>14}")
    for r in results:
        print(f"{r['browsers']:>8} {r['items']:>6} {r['failures']:>5} {r['startup_s']:>10.1f} {r['scrape_s']:>9.1f} "
              f"{r['items_per_s']:>8.2f} {r['end_to_end_items_per_s']:>14.2f}")
    one, two = results
    print(f"ratio 2 / 1 browsers: {two['items_per_s'] / one['items_per_s']:.2f}x "
          f"(incl. startup {two['end_to_end_items_per_s'] / one['end_to_end_items_per_s']:.2f}x)")


if __name__ == "__main__":
    main()
