"""The preprocessing stage's config (``sift preprocess --knobs`` lists every knob)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable

from flows.core.config import knob, load


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    # The label set. Any names work (NSFW/SFW, indoor/outdoor, ...). Empty: what the data says, i.e. the
    # first-level folder names (`unlabeled/` excepted) or the manifest's labels, sorted. Set it to fix the
    # order or to refuse strays: folder names / manifest labels must then be one of these or `unlabeled`.
    classes: tuple[str, ...] = ()
    # A class can be a *noisy pool*: its items are labeled, but the label is only a prior over the true
    # classes (the user's own estimate). Training uses the prior, not the label, for these items.
    # This default belongs to the BAD/NEUTRAL/GOOD label set: it steps aside when a class it names is
    # absent from the data. A noisy_pools you write that names an absent class is refused.
    noisy_pools: dict[str, dict[str, float]] = dataclasses.field(  # steps aside when NEUTRAL is absent
        default_factory=lambda: {"NEUTRAL": {"NEUTRAL": 0.65, "BAD": 0.30, "GOOD": 0.05}})
    # Images are stored as RGB JPEG, shortest edge <= short_edge, within byte_budget bytes.
    short_edge: int = knob(448, lo=16, hi=8192, help="shortest edge of stored images (never upscaled)")
    byte_budget: int = knob(200_000, lo=2_000, hi=50_000_000, help="max bytes of a stored JPEG")
    max_quality: int = knob(90, lo=10, hi=100)
    min_quality: int = knob(40, lo=5, hi=100)
    # Validation (every failure becomes a reject row with a reason, never a failed job).
    max_bytes: int = knob(50_000_000, lo=1, help="max input file size for images")  # per image file
    max_video_bytes: int = knob(2_000_000_000, lo=1)
    max_pixels: int = knob(50_000_000, lo=1, help="decompression-bomb guard")  # decompression-bomb guard
    min_side: int = knob(16, lo=1)
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")
    video_formats: tuple[str, ...] = ("mp4", "mov", "webm", "mkv")
    # video: "keyframes" = a thumbnail + scene keyframes; "sample" = frames on an even grid (frames
    # from folder videos, e.g. an indoor/outdoor task), from video_start_s, every 1/video_fps s or
    # every video_every_n_frames frames, at most video_max_frames (spread over the whole video)
    # Video: a thumbnail plus up to video_keyframes frames at scene changes (padded with evenly
    # spaced frames when the video has few scenes), or (video_mode: sample) frames sampled evenly.
    # or `sample`: frames on an even grid instead (no thumbnail)
    video_mode: str = knob("keyframes", choices=("keyframes", "sample"))
    video_start_s: float = knob(0.0, lo=0.0, help="sample mode: skip this much (an intro)")  # sample: skip an intro
    # sample: frames per second (0: use video_every_n_frames)
    video_fps: float = knob(1.0, lo=0.0, hi=240.0, help="sample mode: frames per second (0: use every_n)")
    # sample: every Nth decoded frame instead
    video_every_n_frames: int = knob(0, lo=0, help="sample mode: every Nth frame instead of video_fps")
    # sample: at most this many per video, spread over its whole length
    video_max_frames: int = knob(32, lo=1, hi=100_000, help="sample mode: cap per video (sampled sparser)")
    video_keyframes: int = knob(8, lo=0, hi=256, help="keyframes at scene changes per video")
    scene_threshold: float = knob(0.3, lo=0.0, hi=1.0)
    max_video_seconds: float = knob(3600.0, lo=0.1)
    max_video_pixels: int = knob(3840 * 2160, lo=1)  # 3840x2160
    ffmpeg_timeout: float = knob(120.0, lo=1.0)
    # manifest URLs: fetched by the guarded downloader (flows.scrape.fetch) into OUT/downloads/, resumable
    # Manifest lines with a `url` (an img2dataset-style list) are fetched before processing by the same
    # guarded downloader as `sift scrape` into OUT/downloads/ (resumable: a second run fetches only what
    # is missing); a URL that fails is a `fetch_failed` reject with the fetcher's reason.
    user_agent: str = "sift-preprocess/0.1"
    robots: bool = True  # honour robots.txt (RFC 9309)
    # minimum seconds between two requests to one host
    rate_limit_s: float = knob(0.25, lo=0.0, hi=600.0, help="min seconds between two requests to one host")
    timeout_s: float = knob(15.0, lo=0.1, hi=600.0)
    max_redirects: int = knob(5, lo=0, hi=50)  # followed by hand; every hop is checked again
    retries: int = knob(2, lo=0, hi=10)  # on 5xx, 429, timeouts and connection errors
    backoff_s: float = knob(0.5, lo=0.0, hi=60.0)  # first retry after backoff_s, then x2
    allow_hosts: tuple[str, ...] = ()  # names, .suffixes, addresses or networks allowed to be private/loopback
    allow_private: bool = False  # true: no address policy at all (only for trusted intranets)
    download_threads: int = knob(8, lo=1, hi=256, help="downloads in flight")
    # one URL's download is held in memory while it is fetched
    max_download_bytes: int = knob(200_000_000, lo=1, help="cap of one URL's download (held in memory)")
    # span labels (manifest lines with start/end): frames sampled inside each span
    # Span labels: a manifest line with start/end (seconds) labels a span of a video; frames are sampled
    # inside each span at span_fps, at most span_max_frames per span (a longer span is sampled more
    # sparsely). All frames of one video share its group, hence its split.
    span_fps: float = knob(1.0, lo=0.01, hi=60.0, help="frames per second sampled inside a span")
    span_max_frames: int = knob(32, lo=1, hi=10_000, help="cap per span (sampled more sparsely)")
    # dedupe + split
    # Near duplicates: 64-bit perceptual hashes within this Hamming distance are one cluster.
    near_dup_distance: int = knob(4, lo=0, hi=32, help="max Hamming distance of 64-bit pHashes")
    val_frac: float = knob(0.15, lo=0.0, hi=0.9)
    test_frac: float = knob(0.15, lo=0.0, hi=0.9)
    split_seed: str = "sift"
    # Ray
    # Ray: the CPU actor pool autoscales between min_actors and max_actors.
    min_actors: int = knob(1, lo=1, hi=1024)
    max_actors: int = knob(2, lo=1, hi=1024)
    actor_cpus: float = knob(1.0, lo=0.05, hi=64)
    batch_size: int = knob(16, lo=1, hi=4096)
    io_cpus: float = knob(0.1, lo=0.01, hi=8, help="CPUs reserved by each read/write task")
    rows_per_file: int = knob(2000, lo=1)

    def validate(self) -> None:
        """Checks that need no data; the label set is checked against the data by
        ``flows.core.labelset.resolve`` (before Ray starts)."""
        lowered = [c.strip().lower() for c in self.classes]
        if len(set(lowered)) != len(lowered) or any(not c for c in lowered):
            raise ValueError(f"classes must be unique (case-insensitively) and non-empty: {list(self.classes)}")
        if "unlabeled" in lowered:
            raise ValueError("'unlabeled' is reserved for the unlabeled pool, not a class")
        for pool, prior in self.noisy_pools.items():
            if not isinstance(prior, dict):
                raise ValueError(f"noisy_pools.{pool}: expected a mapping class: probability, got {prior!r}")
            if any(p < 0 for p in prior.values()) or abs(sum(prior.values()) - 1.0) > 1e-3:
                raise ValueError(f"noisy pool {pool!r}: prior must be >= 0 and sum to 1, got {prior}")
        if self.min_quality > self.max_quality:
            raise ValueError("min_quality must be <= max_quality")
        if self.min_actors > self.max_actors:
            raise ValueError("min_actors must be <= max_actors")
        if self.video_mode == "sample" and not (self.video_fps > 0) == (self.video_every_n_frames == 0):
            raise ValueError("video_mode=sample needs exactly one of video_fps > 0 or video_every_n_frames > 0")
        if self.val_frac + self.test_frac >= 1.0:
            raise ValueError("val_frac + test_frac must be < 1")

    def prior(self, pool: str) -> list[float]:
        """The noisy pool's prior as a vector over ``classes`` (one-hot if not a noisy pool)."""
        p = self.noisy_pools.get(pool, {pool: 1.0})
        return [float(p.get(c, 0.0)) for c in self.classes]


def load_preprocess(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> PreprocessConfig:
    return load(PreprocessConfig, path, overrides)
