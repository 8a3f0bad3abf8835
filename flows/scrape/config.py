"""``sift scrape`` settings: the scrape config (downloads, guard, outputs) and the recipe (what to
collect on a page), from YAML beside the package plus ``key=value`` overrides routed to whichever
declares the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from flows.core.config import CONFIG_DIR, ConfigError, explicit, knob, load, parse_overrides, replace

RECIPES = CONFIG_DIR / "recipes"


@dataclasses.dataclass(frozen=True)
class ScrapeConfig:
    """How to fetch, compress and submit (``sift scrape --knobs`` lists every knob)."""
    # Politeness and identity.
    user_agent: str = "sift-scraper/0.1"
    robots: bool = True  # honour robots.txt (RFC 9309) for pages and media
    # minimum seconds between two requests to one host (all browsers together)
    rate_limit_s: float = knob(0.25, lo=0.0, hi=600.0)
    # Guards on every download (a failure is a per-item reason in failures.jsonl, never fatal).
    timeout_s: float = knob(15.0, lo=0.1, hi=600.0)
    max_bytes: int = knob(20_000_000, lo=1)  # images
    max_video_bytes: int = knob(200_000_000, lo=1)  # videos
    max_redirects: int = knob(5, lo=0, hi=50)  # followed by hand; every hop is checked again
    retries: int = knob(2, lo=0, hi=10)  # on 5xx, 429, timeouts and connection errors
    backoff_s: float = knob(0.5, lo=0.0, hi=60.0)  # first retry after backoff_s, then x2
    allow_hosts: tuple[str, ...] = ()  # names, .suffixes, addresses or networks allowed to be private/loopback
    allow_private: bool = False  # true: no address policy at all (only for trusted intranets)
    download_threads: int = knob(4, lo=1, hi=64)  # parallel downloads + compression per browser
    # Compression: the same code and defaults as `sift preprocess` (flows.media.images.prepare).
    short_edge: int = knob(448, lo=16, hi=8192)
    byte_budget: int = knob(200_000, lo=2_000, hi=50_000_000)
    max_quality: int = knob(90, lo=10, hi=100)
    min_quality: int = knob(40, lo=5, hi=100)
    max_pixels: int = knob(50_000_000, lo=1)  # decompression-bomb guard
    min_side: int = knob(16, lo=1)  # smaller images (tracking pixels, icons) are skipped with too_small
    # Videos: keyframes = thumbnail + scene keyframes extracted client-side; skip; keep = the file as is.
    videos: str = knob("keyframes", choices=("keyframes", "skip", "keep"))
    video_keyframes: int = knob(4, lo=0, hi=256)
    scene_threshold: float = knob(0.3, lo=0.0, hi=1.0)
    max_video_seconds: float = knob(1800.0, lo=0.1)
    ffmpeg_timeout: float = knob(60.0, lo=1.0)
    # Browsers: one headless Chromium per Ray actor.
    browsers: int = knob(2, lo=1, hi=64)
    # Ray CPUs per browser actor (a local Ray has cores + 1 logical CPUs)
    browser_cpus: float = knob(0.5, lo=0.05, hi=16.0)
    chromium: str = ""  # path; empty: Playwright's own browser if installed, else the system's
    browser_args: tuple[str, ...] = ()  # extra Chromium flags
    browser_sandbox: bool = knob(True, help="Chromium's sandbox on (as root: run as browser_user); false: --no-sandbox")
    browser_user: str = knob("nobody", help="the unprivileged user Chromium runs as when sift runs as root")
    # every page step (load, evaluate, scroll, click): past it the browser is killed and replaced
    page_timeout_s: float = knob(30.0, lo=1.0, hi=600.0)
    max_page_bytes: int = knob(10_000_000, lo=1, help="body cap of each page, script or stylesheet the browser loads")
    viewport: tuple[int, ...] = (1280, 900)
    # Backend submission (--to-server) and the filtered feed.
    submit_batch: int = knob(32, lo=1, hi=1000)  # items per job (one page may become several jobs)
    tiles: int = knob(1, choices=(1, 5))  # 1 or 5 (five-crop test-time augmentation on the server)
    poll_s: float = knob(0.5, lo=0.01, hi=60.0)
    server_timeout_s: float = knob(600.0, lo=1.0)
    # the defaults belong to the default label set: each steps aside when the server lacks its class
    # collapsed behind a "show" toggle
    hide_labels: tuple[str, ...] = knob(("BAD",), help="classes the filtered feed collapses")
    highlight_labels: tuple[str, ...] = knob(("GOOD",), help="classes the filtered feed highlights")
    feed_dir: str = "sift-feed"  # where feed.html / feed.json go when --to is not given
    # a `sift review` server (http://127.0.0.1:8765): "wrong verdict" buttons in the feed
    review_url: str = knob("", help="a `sift review` server: the feed gets \"wrong verdict\" buttons posting to it")
    # its token (default $SIFT_REVIEW_TOKEN); it is written into feed.html
    review_token: str = knob("", help="its token ($SIFT_REVIEW_TOKEN); written into feed.html")

    def validate(self) -> None:
        if self.min_quality > self.max_quality:
            raise ValueError("min_quality must be <= max_quality")
        if len(self.viewport) != 2:
            raise ValueError("viewport is [width, height]")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What to collect on a page (see flows/configs/recipes/generic.yaml for every key)."""
    start_urls: tuple[str, ...] = ()
    item_selector: str = ""
    image_selector: str = "img, picture source"
    video_selector: str = "video"
    background_selector: str = "*"
    lazy_attrs: tuple[str, ...] = ("data-src", "data-srcset", "data-lazy-src", "data-original")
    only_visible: bool = True
    wait_for: str = ""
    wait_ms: int = knob(0, lo=0, hi=600_000)
    scroll_steps: int = knob(20, lo=0, hi=10_000)
    scroll_pause_ms: int = knob(400, lo=0, hi=60_000)
    next_selector: str = ""
    max_pages: int = knob(1, lo=1, hi=10_000)
    max_items: int = knob(200, lo=1, hi=1_000_000)


def for_classes(cfg: ScrapeConfig, classes: list[str]) -> ScrapeConfig:
    """The feed's hide/highlight labels checked against the server's ``classes``: a default names
    only present classes afterwards, a label the user wrote that the model lacks is a ConfigError."""
    canon = {c.lower(): c for c in classes}
    changes = {}
    for key in ("hide_labels", "highlight_labels"):
        labels = getattr(cfg, key)
        stray = [c for c in labels if c.lower() not in canon]
        if stray and key in explicit(cfg):
            raise ConfigError(f"{key}: {stray} not among the server model's classes {list(classes)}")
        changes[key] = tuple(canon[c.lower()] for c in labels if c.lower() in canon)
    return replace(cfg, **changes)


def load_settings(recipe: str | None, config: str | None, pairs, max_items: int | None = None):
    """(ScrapeConfig, Recipe): ``key=value`` pairs go to whichever of the two declares the key."""
    overrides = parse_overrides(pairs)
    recipe_keys = {f.name for f in dataclasses.fields(Recipe)}
    known = recipe_keys | {f.name for f in dataclasses.fields(ScrapeConfig)}
    if set(overrides) - known:
        raise ConfigError(f"unknown key(s) {sorted(set(overrides) - known)}; recipe keys: {sorted(recipe_keys)}; "
                          f"scrape keys: {sorted(known - recipe_keys)}")
    r_over = {k: v for k, v in overrides.items() if k in recipe_keys}
    if max_items is not None:
        r_over["max_items"] = max_items
    path = None if recipe in (None, "generic") else Path(recipe)
    if path is not None and not path.exists() and (RECIPES / f"{recipe}.yaml").exists():
        path = RECIPES / f"{recipe}.yaml"  # a recipe shipped with sift, by name
    rec = load(Recipe, path, r_over, default_path=RECIPES / "generic.yaml")
    cfg = load(ScrapeConfig, config, {k: v for k, v in overrides.items() if k not in recipe_keys})
    return cfg, rec
