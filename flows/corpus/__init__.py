"""A deterministic labeled media corpus: the embedded default for sift's demo, tests and benchmarks.

``make_corpus(out, images, videos)`` writes pictures and short videos into one folder per given
label (``BAD/``, ``GOOD/``, ``NEUTRAL/``, ``unlabeled/``), plus a few broken files, and records the
ground truth in ``out/_meta/truth.jsonl``. Items are split into three pools the way real users'
folders look: a clean pool in the folders of the non-NEUTRAL classes (with a little label noise),
a noisy NEUTRAL folder that is a mixture of classes, and an unlabeled pool. Every item draws from
its own RNG seeded by (seed, index), so the same arguments give byte-identical files with any
number of workers. ``style`` changes the pictures' look and nothing else (same plan: paths, classes,
pools and formats; see ``flows.corpus.draw``): style 0 is the original look, byte-identical for a
seed, and a corpus in another style is a test of whether a model learned the cues or the look. Run
``python -m flows.corpus OUT --images N --videos M [--style S]`` (``sift make-corpus``) for the CLI.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flows.core.config import ConfigError
from flows.corpus.draw import CLASSES, encode, render
from flows.corpus.looks import STYLES, look_of
from flows.corpus.video import write_video
from flows.core.schema import UNLABELED

NEUTRAL = "NEUTRAL"  # the class whose folder is the noisy pool
SIZES = ((640, 360), (480, 640), (800, 600), (512, 512), (960, 540))
VIDEO_SIZES = ((320, 240), (426, 240))
CONTAINERS = ("mp4", "webm", "mov", "mkv")
# (format, variant, weight): the common case is a plain JPEG; every other row appears at least once
FORMATS = (("jpeg", None, 0.70), ("png", None, 0.07), ("webp", None, 0.07), ("gif", None, 0.03),
           ("bmp", None, 0.03), ("tiff", None, 0.03), ("jpeg", "exif6", 0.02), ("jpeg", "cmyk", 0.02),
           ("png", "palette", 0.01), ("png", "gray16", 0.01), ("png", "rgba", 0.01))
EXTS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "gif": ".gif", "bmp": ".bmp", "tiff": ".tif"}
_PLAN, _IMAGE, _VIDEO, _BROKEN = 0, 1, 2, 3  # RNG streams, so kinds never share random numbers


def _rng(seed: int, stream: int, index: int = 0, sub: int = 0) -> np.random.Generator:
    """The RNG of one item: a pure function of (seed, stream, index), hence order-independent."""
    return np.random.default_rng([seed, stream, index, sub])


def pool_of(folder: str) -> str:
    """The pool a folder stands for: NEUTRAL is the noisy pool, unlabeled/ the unlabeled one."""
    return {NEUTRAL: "noisy", UNLABELED: "unlabeled"}.get(folder, "clean")


def _quota(n: int, weights: dict[str, float]) -> list[str]:
    """Exactly ``n`` names in proportion to ``weights`` (largest remainder), so fractions are tight."""
    total = sum(weights.values())
    exact = {k: n * v / total for k, v in weights.items()}
    counts = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return [k for k in weights for _ in range(counts[k])]


def plan_labels(n, classes, labeled, noisy, label_noise, neutral_mix, rng) -> list[tuple[str, str]]:
    """(true class, given folder) for ``n`` items, shuffled so an index does not reveal the pool."""
    n_clean = round(labeled * n)
    n_noisy = min(round(noisy * n), n - n_clean)
    clean_classes = [c for c in classes if c != NEUTRAL]
    items = [(c, c) for c in _quota(n_clean, dict.fromkeys(clean_classes, 1.0))]
    if len(clean_classes) > 1:  # flip a few clean labels to another clean folder
        for i in rng.choice(n_clean, round(label_noise * n_clean), replace=False):
            true = items[i][0]
            items[i] = (true, str(rng.choice([c for c in clean_classes if c != true])))
    mix = {c: p for c, p in neutral_mix if c in classes}
    items += [(c, NEUTRAL) for c in _quota(n_noisy, mix)]
    items += [(c, UNLABELED) for c in _quota(n - n_clean - n_noisy, dict.fromkeys(classes, 1.0))]
    return [items[i] for i in rng.permutation(n)]


def plan_formats(n: int, rng) -> list[tuple[str, str | None]]:
    """A (format, variant) per image: drawn by weight, with every row of FORMATS forced in once."""
    weights = np.array([w for *_, w in FORMATS])
    rows = [FORMATS[i][:2] for i in rng.choice(len(FORMATS), n, p=weights / weights.sum())]
    for slot, row in zip(rng.permutation(n), FORMATS[1:]):
        rows[slot] = row[:2]
    return rows


def _write_image(job: dict) -> dict:
    """Render, encode and write one image (runs in a worker process); returns its truth row.

    The size comes from the item's style-0 stream, so an item has the same size in every style; the
    drawing of another style runs on its own sub-stream (style 0 keeps the stream it always used)."""
    style = job.get("style", 0)
    base = _rng(job["seed"], _IMAGE, job["index"])
    size = job["size"] or SIZES[int(base.integers(len(SIZES)))]
    rng = base if style == 0 else _rng(job["seed"], _IMAGE, job["index"], style)
    data = encode(render(job["true"], rng, size, style), job["format"], job["variant"], rng)
    Path(job["out"], job["path"]).write_bytes(data)
    return {k: job[k] for k in ("path", "true", "given", "pool", "format", "variant")} | {
        "kind": "image", "expect_reject": None, "width": size[0], "height": size[1]}


def plan_video(index: int, seed: int, classes, fps: int) -> list[tuple[str, float]]:
    """2-5 scenes of 1.5-4 s (whole frames); the video's class (by index) gets about half of them."""
    rng = _rng(seed, _VIDEO, index)
    target = classes[index % len(classes)]
    scenes = []
    for _ in range(int(rng.integers(2, 6))):
        cls = target if rng.random() < 0.5 else str(rng.choice(classes))
        scenes.append((cls, round(rng.uniform(1.5, 4.0) * fps) / fps))
    return scenes


def majority(scenes) -> str:
    """The class covering most of the duration (first one wins a tie)."""
    total = Counter()
    for cls, seconds in scenes:
        total[cls] += seconds
    return max(total, key=lambda c: (total[c], -[s[0] for s in scenes].index(c)))


def _write_video_job(job: dict) -> dict:
    """Write one planned video (runs in a worker process); returns its truth row."""
    info = write_video(Path(job["out"], job["path"]), job["scenes"], job["size"], job["fps"],
                       _rng(job["seed"], _VIDEO, job["index"], 1))
    return {k: job[k] for k in ("path", "true", "given", "pool", "format")} | info | {
        "kind": "video", "variant": None, "expect_reject": None, "width": job["size"][0],
        "height": job["size"][1], "fps": job["fps"]}


def _run_job(job: dict) -> dict:
    """One planned file of either kind (the unit of work a pool worker gets)."""
    return _write_video_job(job) if job["kind"] == "video" else _write_image(job)


def _bomb(png: bytes, side: int = 30000) -> bytes:
    """``png`` with its IHDR claiming side x side pixels: tiny on disk, ~900 Mpx when decoded."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"  # IHDR is always the first chunk, right after the signature
    data[16:24] = side.to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # a valid CRC, so only size fails
    return bytes(data)


def write_broken(out: Path, seed: int, classes, with_video: bool, style: int = 0) -> list[dict]:
    """The files an ingest must reject (or, for the PNG named .jpg, accept), spread over the folders."""
    rng = _rng(seed, _BROKEN, 0, style)
    folders = [*classes, UNLABELED]
    jpeg = encode(render(classes[0], rng, (320, 240), style), "jpeg", None, rng)
    png_cls = str(rng.choice(classes))
    cases = [  # (name, content, reject reason, content format)
        ("truncated.jpg", jpeg[: int(len(jpeg) * 0.4)], "decode_error", "jpeg"),
        ("empty.jpg", b"", "empty", None),
        ("bomb.png", _bomb(encode(render(classes[0], rng, (64, 64), style), "png", None, rng)), "too_many_pixels",
         "png"),
        ("notes.jpg", b"This is a text file, not a picture.\n" * 20, "not_media", "text"),
        ("page.png", b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>\n",
         "not_media", "html"),
        ("png_named.jpg", encode(render(png_cls, rng, (320, 240), style), "png", None, rng), None, "png"),
        ("random.mp4", rng.bytes(8192), "not_media", None),
    ]
    if with_video:  # mp4 keeps its index (moov) at the end, so the first half cannot be decoded
        with tempfile.TemporaryDirectory() as tmp:
            write_video(Path(tmp, "v.mp4"), [(classes[0], 1.5), (classes[-1], 1.5)], (320, 240), 10, rng)
            mp4 = Path(tmp, "v.mp4").read_bytes()
        cases.append(("truncated.mp4", mp4[: len(mp4) // 2], "decode_error", "mp4"))
    rows = []
    for i, (name, data, reason, fmt) in enumerate(cases):
        folder = png_cls if reason is None else folders[i % len(folders)]
        rel = f"{folder}/broken_{name}"
        Path(out, rel).write_bytes(data)
        rows.append({"path": rel, "true": png_cls if reason is None else None, "given": folder,
                     "pool": pool_of(folder), "kind": "image" if reason is None else "broken",
                     "format": fmt, "variant": "wrong_extension" if reason is None else None,
                     "expect_reject": reason} | ({"width": 320, "height": 240} if reason is None else {}))
    return rows


def _prepare(out: Path, folders) -> None:
    """Start from an empty tree; only a previous corpus (it has _meta/corpus.json) is cleared."""
    if out.exists() and any(out.iterdir()):
        if not (out / "_meta" / "corpus.json").exists():
            raise FileExistsError(f"{out} is not empty and is not a corpus; refusing to write into it")
        for name in [*folders, "_meta"]:
            shutil.rmtree(out / name, ignore_errors=True)
    for name in [*folders, "_meta"]:
        (out / name).mkdir(parents=True, exist_ok=True)


def _jobs(out, images, videos, seed, size, classes, labeled, noisy, label_noise, neutral_mix, style=0):
    """Every image and video to write, fully planned here so workers only render. The plan does not
    depend on ``style``: another style draws the same items in another look."""
    rng = _rng(seed, _PLAN)
    jobs = []
    for i, ((true, given), (fmt, variant)) in enumerate(zip(
            plan_labels(images, classes, labeled, noisy, label_noise, neutral_mix, rng),
            plan_formats(images, rng))):
        ext = ".jpeg" if fmt == "jpeg" and i % 7 == 3 else EXTS[fmt]  # both JPEG spellings occur
        jobs.append({"kind": "image", "index": i, "seed": seed, "style": style, "out": str(out), "size": size,
                     "true": true, "given": given, "pool": pool_of(given), "format": fmt, "variant": variant,
                     "path": f"{given}/img_{i:06d}{ext}"})
    unlabeled = set(rng.permutation(videos)[: round(videos * max(0.0, 1 - labeled - noisy))].tolist())
    for i in range(videos):
        scenes, fmt = plan_video(i, seed, classes, 10), CONTAINERS[i % len(CONTAINERS)]
        true = majority(scenes)
        given = UNLABELED if i in unlabeled else true
        jobs.append({"kind": "video", "index": i, "seed": seed, "out": str(out), "scenes": scenes,
                     "size": VIDEO_SIZES[i % len(VIDEO_SIZES)], "fps": 10, "true": true, "given": given,
                     "pool": pool_of(given), "format": fmt, "path": f"{given}/vid_{i:04d}.{fmt}"})
    return jobs


def _run_all(jobs, workers: int, progress: bool) -> list[dict]:
    """Run the jobs in-process or in a spawn pool (fork is unsafe next to Ray's threads)."""
    bar = tqdm(total=len(jobs), desc="corpus", unit="file", disable=not progress, file=sys.stderr)
    order = sorted(jobs, key=lambda j: j["kind"] != "video")  # slow videos first, for load balance
    rows = []
    with bar:
        if min(workers, len(jobs)) <= 1:
            for job in order:
                rows.append(_run_job(job))
                bar.update()
        else:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for row in pool.imap_unordered(_run_job, order, chunksize=2):
                    rows.append(row)
                    bar.update()
    return rows


def make_corpus(out: Path, images: int, videos: int, seed: int = 0, size: tuple[int, int] | None = None,
                classes=("BAD", "NEUTRAL", "GOOD"), labeled: float = 0.4, noisy: float = 0.25,
                label_noise: float = 0.05, neutral_mix=(("NEUTRAL", 0.65), ("BAD", 0.30), ("GOOD", 0.05)),
                broken: bool = True, workers: int = 1, progress: bool = True, style: int = 0) -> dict:
    """Write the corpus under ``out``; return the summary that also goes to ``_meta/corpus.json``.

    ``size`` (width, height) forces one image size; by default each image picks one of SIZES.
    ``workers`` > 1 renders in processes and gives the same bytes as ``workers=1``.
    ``style`` (one of ``flows.corpus.looks.STYLES``) is the pictures' look; ConfigError for an unknown
    one, or for videos in a style other than 0 (``flows.corpus.video`` draws its scenes in style 0
    only, and a "shifted" corpus whose videos are not shifted would mislead).
    """
    out, classes = Path(out), tuple(classes)
    if style != 0:
        look_of(style)  # ConfigError for a style that does not exist
        if videos:
            raise ConfigError(f"style={style}: videos are drawn in style 0 only; use videos=0 with another style")
        style = int(style)  # a numpy integer would not go into corpus.json
    if unknown := set(classes) - set(CLASSES):
        raise ValueError(f"the corpus can draw {CLASSES}, not {sorted(unknown)}")
    if noisy > 0 and NEUTRAL not in classes:
        raise ValueError("the noisy pool is the NEUTRAL folder: add NEUTRAL to classes or set noisy=0")
    if not 0 <= labeled + noisy <= 1:
        raise ValueError("labeled + noisy must be within [0, 1]")
    has_ffmpeg = shutil.which("ffmpeg") is not None
    if videos and not has_ffmpeg:
        raise RuntimeError("videos are encoded with ffmpeg, which is not on PATH")
    size = tuple(size) if size else None
    _prepare(out, [*classes, UNLABELED])
    jobs = _jobs(out, images, videos, seed, size, classes, labeled, noisy, label_noise, neutral_mix, style)
    rows = _run_all(jobs, workers, progress)
    if broken:
        rows += write_broken(out, seed, classes, with_video=has_ffmpeg, style=style)
    rows.sort(key=lambda r: r["path"])
    with open(out / "_meta" / "truth.jsonl", "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    summary = {
        "params": {"images": images, "videos": videos, "seed": seed, "size": list(size) if size else None,
                   "classes": list(classes), "labeled": labeled, "noisy": noisy, "label_noise": label_noise,
                   "neutral_mix": [list(m) for m in neutral_mix], "broken": broken, "style": style},
        "files": len(rows),
        "counts": {key: dict(sorted(Counter(str(r[key]) for r in rows).items()))
                   for key in ("kind", "pool", "given", "true", "format", "expect_reject")},
        "skipped": [] if has_ffmpeg or not broken else ["broken_truncated.mp4 (no ffmpeg)"],
    }
    (out / "_meta" / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720)."""
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def main(argv=None) -> int:
    """CLI: python -m flows.corpus OUT --images N --videos M --seed S ..."""
    p = argparse.ArgumentParser(prog="sift make-corpus", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size, default=None, help="WxH for every image, e.g. 1280x720")
    p.add_argument("--labeled", type=float, default=0.4)
    p.add_argument("--noisy", type=float, default=0.25)
    p.add_argument("--label-noise", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--style", type=int, default=0, choices=STYLES,
                   help="the pictures' look (0: the original); the plan and the class cues are the same")
    p.add_argument("--no-broken", dest="broken", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    from flows.core.preflight import output

    output(a.out, "out", create=True)
    start = time.perf_counter()
    summary = make_corpus(a.out, a.images, a.videos, seed=a.seed, size=a.size, labeled=a.labeled,
                          noisy=a.noisy, label_noise=a.label_noise, broken=a.broken, workers=a.workers,
                          progress=a.progress, style=a.style)
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['files']} files to {a.out} in {time.perf_counter() - start:.1f} s")
    return 0

