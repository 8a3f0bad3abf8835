"""Manifest lines with a ``url``: fetched through the guarded downloader before preprocessing.

An img2dataset-style list (``{"url": ..., "label": ...}`` per line) becomes local files under
``OUT/downloads/``, each named by the SHA-256 of its URL, through :class:`flows.scrape.fetch.Fetcher`: the
same address policy (public addresses only unless allow-listed, every redirect re-checked, the
connection pinned to the checked address), robots.txt, size caps, retries with backoff and the
per-host rate limit as ``sift scrape``. A URL that cannot be fetched becomes a ``fetch_failed``
reject row whose detail carries the fetcher's reason code (``refused_address: …``,
``http_404``, ``too_large``, …), never a failed job.

Resumable: a file is written to a temporary name and renamed when complete, so a second run over the
same list and output fetches only the URLs whose file is missing (failures are tried again).
Runs on the driver before Ray starts the actor pool: downloads are I/O bound, a thread pool of
``download_threads`` keeps that many requests in flight, and the rate limiter is shared by them.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from flows.scrape.fetch import Fetcher


def local_name(url: str) -> str:
    """The downloaded file's name: the URL's SHA-256 (stable across runs, no characters from the page)."""
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def fetch_settings(cfg) -> SimpleNamespace:
    """The Fetcher's keys from a PreprocessConfig; a download (held in memory) is capped at
    ``max_download_bytes`` whatever the validation caps allow for local files."""
    keys = ("user_agent", "robots", "rate_limit_s", "timeout_s", "max_redirects", "retries", "backoff_s",
            "allow_hosts", "allow_private")
    return SimpleNamespace(**{k: getattr(cfg, k) for k in keys},
                           max_bytes=min(cfg.max_bytes, cfg.max_download_bytes),
                           max_video_bytes=min(cfg.max_video_bytes, cfg.max_download_bytes))


def fetch_items(items: list[dict], dest: Path, cfg, progress: bool = True, fetcher: Fetcher | None = None) -> dict:
    """Download every item with a ``url`` (and no local file yet) into ``dest``, in place: the item
    gets ``local`` (the file to read) or ``reject = fetch_failed``. Returns counts
    ``{urls, fetched, cached, failed, by_reason, seconds}``."""
    todo = [it for it in items if it.get("url") and not it.get("reject")]
    stats = {"urls": len(todo), "fetched": 0, "cached": 0, "failed": 0, "by_reason": {}, "seconds": 0.0}
    if not todo:
        return stats
    dest.mkdir(parents=True, exist_ok=True)
    t0, reasons = time.time(), Counter()
    missing = []
    for it in todo:
        f = dest / local_name(it["url"])
        if f.exists():
            it["local"] = str(f)
            stats["cached"] += 1
        else:
            missing.append((it, f))
    own = fetcher is None
    fetcher = fetcher or Fetcher(fetch_settings(cfg))

    def one(job: tuple[dict, Path]) -> str | None:
        it, f = job
        got, fail = fetcher.try_fetch(it["url"])
        if fail is not None:
            it["reject"], it["detail"] = "fetch_failed", f"{fail['reason']}: {fail['detail']}"[:500]
            return fail["reason"]
        tmp = f.with_name(f"{f.name}.part{os.getpid()}")
        tmp.write_bytes(got.data)
        tmp.replace(f)  # complete or absent: a killed run leaves no half file under the final name
        it["local"] = str(f)
        return None

    try:
        with ThreadPoolExecutor(max(1, cfg.download_threads), thread_name_prefix="sift-download") as pool:
            for n, reason in enumerate(pool.map(one, missing), 1):
                if reason is None:
                    stats["fetched"] += 1
                else:
                    reasons[reason] += 1
                if progress and (n % 500 == 0 or n == len(missing)):
                    print(f"[download] {n}/{len(missing)} fetched ({stats['cached']} already here, "
                          f"{sum(reasons.values())} failed) in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        if own:
            fetcher.close()
    stats.update(failed=sum(reasons.values()), by_reason=dict(reasons.most_common()), seconds=round(time.time() - t0, 3))
    return stats
