"""``sift scrape``: visit feeds in headless Chromium, collect media, download it through the guard,
compress it like preprocessing does, and write a training manifest and/or a filtered feed.

    sift scrape URL... [--recipe RECIPE.yaml] [--to DIR] [--to-server URL] [--token T]
                       [--max-items N] [--label NAME] [key=value ...]

Each start URL is one task for a pool of Ray actors holding one browser each (:mod:`flows.scrape.browser`).
The browser only renders pages: its own image/media requests are aborted, so every media byte comes
through :class:`flows.scrape.fetch.Fetcher` (address policy, robots.txt, size cap, rate limit). A pure core
(:mod:`flows.scrape.parse`, :func:`media_items`, :func:`render_feed`) sits under thin
Ray/browser shells.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

from flows.scrape.browser import Browser
from flows.core.config import ConfigError
from flows.core.knobs import add_knobs_flag
from flows.scrape.feed import classify_remote, server_classes, write_feed
from flows.scrape.fetch import Fetched, Fetcher, RateLimiter
from flows.media.images import open_image, prepare
from flows.scrape.config import Recipe, ScrapeConfig, for_classes, load_settings
from flows.media.validate import Reject

# ---------------------------------------------------------------- pure core: bytes -> stored items

def media_items(got: Fetched, cfg: ScrapeConfig, page: str) -> list[dict]:
    """A downloaded image or video -> stored items (RGB JPEG within the byte budget), like preprocess.

    Videos become a thumbnail + keyframes (``videos: keyframes``), the file itself (``keep``) or a
    Reject (``skip``). Raises Reject / VideoError with a reason code.
    """
    sha = hashlib.sha256(got.data).hexdigest()
    base = {"url": got.url, "page": page, "sha256": sha, "source_bytes": len(got.data)}
    if got.kind == "image":
        img = open_image(got.data, max_pixels=cfg.max_pixels, min_side=cfg.min_side, short_edge=cfg.short_edge)
        return [{**base, "id": sha[:16], "kind": "image", "timestamp": None, **_jpeg(img, cfg)}]
    if cfg.videos == "skip":
        raise Reject("video_skipped", "videos: skip")
    if cfg.videos == "keep":
        return [{**base, "id": sha[:16], "kind": "video", "timestamp": None, "video": got.data,
                 "ext": got.format}]
    from PIL import Image

    from flows.media.video import extract_keyframes

    # ffmpeg reads only local files: a private temp dir (mode 0700), removed at once
    with tempfile.TemporaryDirectory(prefix="sift-scrape-") as tmp:
        path = os.path.join(tmp, f"video.{got.format}")
        with open(path, "wb") as f:
            f.write(got.data)
        frames = extract_keyframes(path, cfg.short_edge, cfg.video_keyframes, cfg.scene_threshold,
                                   timeout=cfg.ffmpeg_timeout, max_seconds=cfg.max_video_seconds)
    return [{**base, "id": f"{sha[:16]}-t{f.timestamp:.2f}", "kind": f.kind, "timestamp": f.timestamp,
             **_jpeg(Image.fromarray(f.image), cfg)} for f in frames]


def _jpeg(img, cfg: ScrapeConfig) -> dict:
    out = prepare(img, cfg.short_edge, cfg.byte_budget, cfg.max_quality, cfg.min_quality)
    return {"image": out["image"], "width": out["width"], "height": out["height"],
            "bytes": out["bytes"], "quality": out["quality"]}


def download(fetcher: Fetcher, url: str, page: str, cfg: ScrapeConfig) -> tuple[list[dict], dict | None]:
    """Fetch + compress one media URL: ``(items, None)`` or ``([], failure)``; never raises."""
    try:
        got, failure = fetcher.try_fetch(url)
        if failure:
            return [], {**failure, "page": page}
        return media_items(got, cfg, page), None
    except Exception as exc:  # Reject, VideoError: reason codes; anything else is still one item
        reason = getattr(exc, "reason", "internal_error")
        return [], {"url": url[:2000], "page": page, "reason": reason,
                    "detail": str(getattr(exc, "detail", exc))[:300]}



class PageWorker:
    """A browser, a Fetcher and a download pool: one start URL -> compressed items + failures."""

    def __init__(self, cfg: ScrapeConfig, recipe: Recipe, gate=None):
        from concurrent.futures import ThreadPoolExecutor

        reserve = None
        if gate is not None:  # one rate limit per host across all browsers
            import ray

            reserve = lambda host: ray.get(gate.reserve.remote(host))
        self.cfg, self.recipe = cfg, recipe
        self.fetcher = Fetcher(cfg, reserve=reserve)
        self.browser = Browser(cfg, self.fetcher)
        self.pool = ThreadPoolExecutor(cfg.download_threads, thread_name_prefix="sift-download")

    def scrape(self, url: str, limit: int) -> dict:
        t0, sent, nblocked = time.perf_counter(), Counter(self.fetcher.connections), len(self.browser.blocked)
        seen = self.browser.visit(url, self.recipe, limit)
        done = list(self.pool.map(lambda m: download(self.fetcher, m[0], m[2], self.cfg), seen["media"]))
        failures = ([seen["error"]] if seen["error"] else []) + [f for _, f in done if f]
        return {"url": url, "pages": seen["pages"], "found": len(seen["media"]), "failures": failures,
                "items": [it for items, _ in done for it in items], "blocked": self.browser.blocked[nblocked:],
                "connections": dict(self.fetcher.connections - sent), "seconds": time.perf_counter() - t0}

    def close(self) -> bool:
        self.pool.shutdown(wait=True)
        self.browser.close()
        self.fetcher.close()
        return True


def actor_classes():
    """The Ray actor classes, made on first use (importing this module never imports Ray)."""
    import ray

    BrowserActor = ray.remote(num_cpus=0.5)(PageWorker)  # num_cpus: budgeted again in .options()

    @ray.remote(num_cpus=0)
    class HostGate:
        def __init__(self, interval: float):
            self.limiter = RateLimiter(interval)

        def reserve(self, host: str) -> float:
            return self.limiter.reserve(host)

    return BrowserActor, HostGate


def failed_page(url: str, exc: BaseException) -> dict:
    """The result of a start URL whose actor died or raised: one failure row, nothing else lost."""
    detail = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]
    return {"url": url, "pages": [], "found": 0, "items": [], "blocked": [], "connections": {}, "seconds": 0.0,
            "failures": [{"url": url, "page": url, "reason": "browser_crashed", "detail": detail}]}


def scrape(urls: list[str], recipe: Recipe, cfg: ScrapeConfig, progress: bool = True) -> list[dict]:
    """Scrape start URLs on ``cfg.browsers`` browser actors; page results in the order of ``urls``.

    A start URL whose actor dies (a browser crash, memory) or raises is a ``browser_crashed`` failure
    row; that actor is replaced and the other URLs carry on."""
    from tqdm import tqdm

    from flows.core.runtime import init_ray

    ray = init_ray()
    BrowserActor, HostGate = actor_classes()
    gate = HostGate.remote(cfg.rate_limit_s) if cfg.rate_limit_s > 0 else None
    new_actor = lambda: BrowserActor.options(num_cpus=cfg.browser_cpus).remote(cfg, recipe, gate)
    actors = [new_actor() for _ in range(min(cfg.browsers, len(urls)))]
    idle, queue, pending, results = list(actors), list(urls), {}, []
    try:
        with tqdm(total=len(urls), unit="page", disable=not progress, desc="scrape") as bar:
            while queue or pending:
                while idle and queue:
                    actor, url = idle.pop(), queue.pop(0)
                    pending[actor.scrape.remote(url, recipe.max_items)] = (actor, url)
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, url = pending.pop(ready[0])
                try:
                    res = ray.get(ready[0])
                except Exception as exc:  # RayActorError, a task error: this URL only
                    res = failed_page(url, exc)
                    ray.kill(actor)
                    actors.remove(actor)
                    actor = new_actor()
                    actors.append(actor)
                idle.append(actor)
                results.append(res)
                bar.update()
                if progress:
                    bar.write(f"  {res['url']}: {len(res['items'])} items, {len(res['failures'])} failures, "
                              f"{res['seconds']:.1f} s")
    finally:
        for actor in actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # a dead actor has nothing left to close
                pass
            ray.kill(actor)
        if gate is not None:
            ray.kill(gate)
    order = {u: i for i, u in enumerate(urls)}
    return sorted(results, key=lambda r: order[r["url"]])


# ---------------------------------------------------------------- outputs: manifest, backend, feed

def unique_items(pages: list[dict]) -> list[dict]:
    """All items of all pages, the first copy of identical content kept (one image on many pages)."""
    seen: set[str] = set()
    return [it for p in pages for it in p["items"] if not (it["id"] in seen or seen.add(it["id"]))]


def write_dataset(out: Path, pages: list[dict], label: str | None = None) -> Path:
    """``out/items.jsonl`` (an ingest manifest for ``sift preprocess``), ``out/media/*`` and
    ``out/failures.jsonl`` with one reason per item that could not be used."""
    (out / "media").mkdir(parents=True, exist_ok=True)
    manifest = out / "items.jsonl"
    with open(manifest, "w") as man:
        for it in unique_items(pages):
            rel = f"media/{it['id']}.{'jpg' if 'image' in it else it['ext']}"
            (out / rel).write_bytes(it["image"] if "image" in it else it["video"])
            rec = {"path": rel, "source": it["page"], "group": it["page"], "url": it["url"], "kind": it["kind"]}
            man.write(json.dumps({**rec, "label": label} if label else rec) + "\n")
    with open(out / "failures.jsonl", "w") as f:
        for fail in (x for p in pages for x in p["failures"]):
            f.write(json.dumps(fail) + "\n")
    (out / "scrape.json").write_text(json.dumps(summary(pages), indent=1))
    return manifest


def summary(pages: list[dict]) -> dict:
    """Counts of a scrape: items, failures by reason, where requests went, what the browser refused."""
    conns: Counter[str] = Counter()
    for p in pages:
        conns.update(p["connections"])
    return {"start_urls": len(pages), "pages": sum(len(p["pages"]) for p in pages),
            "media_found": sum(p["found"] for p in pages), "items": len(unique_items(pages)),
            "failures": dict(Counter(f["reason"] for p in pages for f in p["failures"]).most_common()),
            "connections": dict(conns), "browser_refused": [b for p in pages for b in p["blocked"]],
            "actor_seconds": sum(p["seconds"] for p in pages)}



# ---------------------------------------------------------------- entry point

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="sift scrape", description="Visit feeds in headless Chromium, collect "
                                 "and compress their media; write a training manifest and/or a filtered feed.")
    add_knobs_flag(ap, lambda: load_settings(None, None, []))
    ap.add_argument("args", nargs="*", metavar="URL|key=value", help="start URLs and config overrides")
    ap.add_argument("--recipe", help="recipe YAML (default: the generic recipe)")
    ap.add_argument("--config", help="a YAML file of scrape settings (--knobs lists them)")
    ap.add_argument("--to", type=Path, help="write media + items.jsonl (for sift preprocess) + failures.jsonl")
    ap.add_argument("--to-server", help="backend URL: classify via /v1/jobs and write a filtered feed")
    ap.add_argument("--token", default=os.environ.get("SIFT_API_TOKEN", ""), help="bearer token")
    ap.add_argument("--max-items", type=int, help="media URLs per start URL (overrides the recipe)")
    ap.add_argument("--label", help="label every item in the manifest (e.g. GOOD)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    return ap.parse_intermixed_args(argv)  # URLs and key=value may follow options


def main(argv=None) -> int:
    args = parse_args(argv)
    from flows.core.preflight import existing, output

    if args.config:
        existing(args.config, "--config", "file")
    if args.to:
        output(args.to, "--to")
    pairs = [a for a in args.args if re.match(r"^[A-Za-z_]\w*=", a)]
    cfg, recipe = load_settings(args.recipe, args.config, pairs, args.max_items)
    urls = list(dict.fromkeys([*recipe.start_urls, *(a for a in args.args if a not in pairs)]))
    if not urls:
        raise ConfigError("no start URL: give URLs on the command line or start_urls in the recipe")
    if args.to_server:  # the feed's labels must be the model's: checked before any browser starts
        classes = server_classes(args.to_server, args.token)
        if classes is None:
            print(f"warning: {args.to_server}/readyz did not answer; hide/highlight labels are not checked")
        else:
            cfg = for_classes(cfg, classes)
    t0 = time.perf_counter()
    pages = scrape(urls, recipe, cfg, progress=not args.quiet)
    items = unique_items(pages)
    if args.to:
        print(f"manifest: {write_dataset(args.to, pages, args.label)}")
    if args.to_server:
        verdicts = classify_remote(items, args.to_server, args.token, cfg)
        print(f"feed: {write_feed(args.to or Path(cfg.feed_dir), items, verdicts, cfg)}")
    s = summary(pages)
    print(f"{s['pages']} pages, {s['items']} items, {sum(s['failures'].values())} failures {s['failures']} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0

