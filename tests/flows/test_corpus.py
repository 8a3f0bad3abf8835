"""The synthetic corpus: layout, truth, determinism, formats, broken files, videos, class cues."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from flows.corpus import FORMATS, main, make_corpus, plan_labels
from flows.corpus.video import write_video
from flows.corpus.draw import render
from flows.core.schema import REJECT_REASONS

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}


def _truth(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "_meta" / "truth.jsonl").read_text().splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    """Every file outside _meta, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "_meta"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 images at the default sizes plus the broken files; no videos (those are slow)."""
    out = tmp_path_factory.mktemp("corpus")
    summary = make_corpus(out, images=60, videos=0, seed=0, progress=False)
    return out, summary, _truth(out)


def _rows(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def test_truth_covers_every_file_and_nothing_else(corpus):
    out, summary, rows = corpus
    assert sorted(r["path"] for r in rows) == sorted(_files(out))
    assert summary == json.loads((out / "_meta" / "corpus.json").read_text())
    assert summary["files"] == len(rows)
    assert sorted(p.name for p in (out / "_meta").iterdir()) == ["corpus.json", "truth.jsonl"]
    for r in rows:
        assert r["path"].split("/")[0] == r["given"]
        assert r["pool"] == {"NEUTRAL": "noisy", "unlabeled": "unlabeled"}.get(r["given"], "clean")
        assert r["kind"] in ("image", "video", "broken")
        assert (r["true"] is None) == (r["kind"] == "broken")


def test_counts_and_pools(corpus):
    _, summary, rows = corpus
    images = _rows(rows, kind="image")
    generated = [r for r in images if r["variant"] != "wrong_extension"]
    assert len(generated) == 60
    pools = Counter(r["pool"] for r in generated)
    assert pools == {"clean": 24, "noisy": 15, "unlabeled": 21}
    assert not _rows(generated, pool="clean", true="NEUTRAL")  # NEUTRAL has no clean folder
    assert summary["counts"]["kind"]["image"] == len(images)


def test_pool_fractions_on_a_large_plan():
    n = 3000
    items = plan_labels(n, ("BAD", "NEUTRAL", "GOOD"), 0.4, 0.25, 0.05,
                        (("NEUTRAL", 0.65), ("BAD", 0.30), ("GOOD", 0.05)), np.random.default_rng(1))
    clean = [(t, g) for t, g in items if g in ("BAD", "GOOD")]
    noisy = [t for t, g in items if g == "NEUTRAL"]
    unlabeled = Counter(t for t, g in items if g == "unlabeled")
    assert len(clean) == 1200 and len(noisy) == 750 and sum(unlabeled.values()) == 1050
    assert sum(t != g for t, g in clean) == 60  # label noise: 5% of the clean pool, flipped
    assert Counter(noisy) == {"NEUTRAL": 488, "BAD": 225, "GOOD": 37}  # 65/30/5 by quota
    assert set(unlabeled.values()) == {350}
    share = Counter(t for t, _ in items)
    assert all(0.25 < share[c] / n < 0.42 for c in ("BAD", "NEUTRAL", "GOOD"))
    assert [g for _, g in items[:50]].count("unlabeled") < 50  # shuffled, not in pool order


def test_same_seed_same_bytes_any_workers_other_seed_differs(tmp_path):
    runs = {}
    for name, seed, workers in (("a", 5, 1), ("b", 5, 1), ("c", 5, 2), ("d", 6, 1)):
        make_corpus(tmp_path / name, images=14, videos=0, seed=seed, broken=False, workers=workers, progress=False)
        runs[name] = _files(tmp_path / name)
    assert runs["a"] == runs["b"] == runs["c"]
    assert (tmp_path / "a/_meta/truth.jsonl").read_bytes() == (tmp_path / "c/_meta/truth.jsonl").read_bytes()
    assert runs["a"] != runs["d"]
    assert render("BAD", np.random.default_rng(1), (64, 48)).tobytes() != \
        render("BAD", np.random.default_rng(2), (64, 48)).tobytes()


def test_rewrites_a_previous_corpus_but_not_a_foreign_folder(tmp_path):
    make_corpus(tmp_path / "c", images=12, videos=0, broken=False, progress=False)
    make_corpus(tmp_path / "c", images=11, videos=0, broken=False, progress=False)
    assert len(_files(tmp_path / "c")) == 11
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_corpus(tmp_path / "mine", images=1, videos=0, progress=False)
    with pytest.raises(ValueError):
        make_corpus(tmp_path / "x", images=1, videos=0, classes=("CATS", "DOGS"), progress=False)


def test_every_format_and_variant_is_present_and_real(corpus):
    out, _, rows = corpus
    images = _rows(rows, kind="image")
    assert {(f, v) for f, v, _ in FORMATS} <= {(r["format"], r["variant"]) for r in images}
    assert sum(r["format"] == "jpeg" for r in images) > len(images) / 2  # mostly JPEG
    for r in images:
        with Image.open(out / r["path"]) as img:
            assert img.format == PIL_FORMATS[r["format"]], r
            img.load()


def test_odd_modes_are_what_they_claim(corpus):
    out, _, rows = corpus
    modes = {"cmyk": "CMYK", "palette": "P", "gray16": "I;16", "rgba": "RGBA"}
    for variant, mode in modes.items():
        for r in _rows(rows, variant=variant):
            with Image.open(out / r["path"]) as img:
                assert img.mode == mode
                if variant == "rgba":
                    assert img.getchannel("A").getextrema() == (0, 255)  # really transparent somewhere
                if variant == "gray16":
                    assert img.getextrema()[1] > 255  # uses the 16-bit range
    for r in _rows(rows, variant="exif6"):
        with Image.open(out / r["path"]) as img:
            assert img.getexif()[0x0112] == 6
            assert img.size == (r["height"], r["width"])  # stored turned; width/height are as viewed
            assert ImageOps.exif_transpose(img).size == (r["width"], r["height"])


def test_broken_files(corpus):
    out, summary, rows = corpus
    broken = {Path(r["path"]).name: r for r in rows if r["path"].split("/")[-1].startswith("broken_")}
    assert all(r["expect_reject"] in REJECT_REASONS for r in broken.values() if r["expect_reject"])
    assert len({r["given"] for r in broken.values()}) >= 3  # spread over the folders
    assert broken["broken_empty.jpg"]["expect_reject"] == "empty"
    assert (out / broken["broken_empty.jpg"]["path"]).stat().st_size == 0
    bomb = (out / broken["broken_bomb.png"]["path"]).read_bytes()
    assert broken["broken_bomb.png"]["expect_reject"] == "too_many_pixels"
    assert bomb[12:16] == b"IHDR" and struct.unpack(">II", bomb[16:24]) == (30000, 30000)
    assert len(bomb) < 20_000
    with pytest.raises(OSError):  # truncated: the header parses, the pixels do not
        with Image.open(out / broken["broken_truncated.jpg"]["path"]) as img:
            img.load()
    for name in ("broken_notes.jpg", "broken_page.png"):
        assert broken[name]["expect_reject"] == "not_media"
        with pytest.raises(Image.UnidentifiedImageError):
            Image.open(out / broken[name]["path"])
    wrong = broken["broken_png_named.jpg"]
    assert wrong["expect_reject"] is None and wrong["true"] == wrong["given"] and wrong["kind"] == "image"
    with Image.open(out / wrong["path"]) as img:
        assert img.format == "PNG"
    assert broken["broken_random.mp4"]["expect_reject"] == "not_media"
    if shutil.which("ffmpeg"):
        assert broken["broken_truncated.mp4"]["expect_reject"] == "decode_error"
    else:
        assert summary["skipped"]


def test_class_cues_are_learnable_but_not_trivial():
    def saturation(cls, i):
        img = render(cls, np.random.default_rng([11, i]), (320, 240))
        return np.asarray(img.convert("HSV"))[..., 1].mean()

    bad = np.array([saturation("BAD", i) for i in range(60)])
    good = np.array([saturation("GOOD", i) for i in range(60)])
    neutral = np.array([saturation("NEUTRAL", i) for i in range(60)])
    best = max(((bad > t).mean() + (good <= t).mean()) / 2 for t in range(256))
    assert 0.7 < best < 1.0  # one statistic helps, but does not solve it
    assert np.median(bad) > np.median(good) > np.median(neutral)


def test_cli_prints_summary(tmp_path, capsys):
    assert main([str(tmp_path / "c"), "--images", "5", "--videos", "0", "--size", "160x90", "--no-broken",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert '"files": 5' in printed
    rows = _truth(tmp_path / "c")
    assert {(r["width"], r["height"]) for r in rows} == {(160, 90)}


def _probe(path: Path) -> dict:
    res = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name,width,height",
                          "-of", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow
@needs_ffmpeg
def test_videos_probe_to_their_truth(tmp_path):
    out = tmp_path / "v"
    make_corpus(out, images=0, videos=4, seed=2, progress=False)
    rows = _truth(out)
    videos = _rows(rows, kind="video")
    assert sorted(r["format"] for r in videos) == ["mkv", "mov", "mp4", "webm"]
    assert sorted(r["path"] for r in rows) == sorted(_files(out))
    for r in videos:
        info = _probe(out / r["path"])
        assert abs(float(info["format"]["duration"]) - r["duration"]) <= 0.2, r
        assert info["streams"][0]["codec_name"] == ("vp8" if r["format"] == "webm" else "h264")
        assert (info["streams"][0]["width"], info["streams"][0]["height"]) == (r["width"], r["height"])
        scenes = r["scenes"]
        assert 2 <= len(scenes) <= 5 and len(scenes) == len(r["cuts"]) + 1
        assert [s["start"] for s in scenes[1:]] == r["cuts"] and scenes[-1]["end"] == r["duration"]
        assert all(1.5 <= s["end"] - s["start"] <= 4.0 + 1e-9 for s in scenes)
        durations = Counter()
        for s in scenes:
            durations[s["label"]] += s["end"] - s["start"]
        assert durations[r["true"]] == max(durations.values())
        assert r["given"] in (r["true"], "unlabeled")
    truncated = _rows(rows, expect_reject="decode_error", format="mp4")[0]
    assert subprocess.run(["ffprobe", "-v", "error", str(out / truncated["path"])],
                          capture_output=True, timeout=60).returncode != 0


@pytest.mark.slow
@needs_ffmpeg
def test_write_video_cuts_are_where_the_frames_jump(tmp_path):
    path = tmp_path / "cuts.mp4"
    info = write_video(path, [("GOOD", 2.0), ("BAD", 1.5), ("NEUTRAL", 2.5)], (160, 120), 10,
                       np.random.default_rng(0))
    assert info["cuts"] == [2.0, 3.5] and info["duration"] == 6.0
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                         capture_output=True, timeout=60, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 120, 160).astype(np.float32)
    assert len(frames) == 60
    jumps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
    assert sorted(np.argsort(jumps)[-2:] + 1) == [20, 35]  # the frames that start a new scene


# -- styles: the same plan and cues in another look ------------------------------------------

def _saturation(cls: str, i: int, style: int) -> float:
    img = render(cls, np.random.default_rng([11, i]), (320, 240), style)
    return float(np.asarray(img.convert("HSV"))[..., 1].mean())


def test_style_0_is_the_default_look(tmp_path):
    make_corpus(tmp_path / "default", images=14, videos=0, seed=4, progress=False)
    summary = make_corpus(tmp_path / "zero", images=14, videos=0, seed=4, progress=False, style=0)
    assert _files(tmp_path / "default") == _files(tmp_path / "zero")  # broken files included
    assert _truth(tmp_path / "default") == _truth(tmp_path / "zero")
    assert summary["params"]["style"] == 0
    assert render("GOOD", np.random.default_rng(3), (96, 64)).tobytes() == \
        render("GOOD", np.random.default_rng(3), (96, 64), style=0).tobytes()


def test_style_1_same_plan_other_pixels(tmp_path):
    make_corpus(tmp_path / "s0", images=12, videos=0, seed=5, broken=False, progress=False)
    summary = make_corpus(tmp_path / "s1", images=12, videos=0, seed=5, broken=False, progress=False, style=1)
    assert summary["params"]["style"] == 1
    assert json.loads((tmp_path / "s1/_meta/corpus.json").read_text())["params"]["style"] == 1
    assert _truth(tmp_path / "s0") == _truth(tmp_path / "s1")  # same paths, classes, pools, formats, sizes
    for r in _truth(tmp_path / "s1"):
        with Image.open(tmp_path / "s0" / r["path"]) as a, Image.open(tmp_path / "s1" / r["path"]) as b:
            pa, pb = (np.asarray(ImageOps.exif_transpose(im).convert("RGB"), np.float32) for im in (a, b))
        assert pa.shape == pb.shape
        assert np.abs(pa - pb).mean() > 10, r  # a different picture, not a little noise


def test_styles_are_deterministic_and_distinct(tmp_path):
    for name, style, workers in (("a", 1, 1), ("b", 1, 2), ("c", 2, 1), ("d", 2, 1)):
        make_corpus(tmp_path / name, images=10, videos=0, seed=6, workers=workers, progress=False, style=style)
    a, b, c, d = (_files(tmp_path / n) for n in "abcd")
    assert a == b and c == d
    images = [k for k in a if "/img_" in k]
    assert len(images) == 10 and all(a[k] != c[k] for k in images)
    assert render("BAD", np.random.default_rng(7), (80, 60), 2).tobytes() == \
        render("BAD", np.random.default_rng(7), (80, 60), 2).tobytes()


@pytest.mark.parametrize("style", [1, 2])
def test_class_cues_survive_a_style_shift(style):
    bad, good, neutral = (np.array([_saturation(c, i, style) for i in range(40)]) for c in ("BAD", "GOOD", "NEUTRAL"))
    # measured (seeds [11, 0..39]): style 1 ~145 / 69 / 30, style 2 ~124 / 67 / 31 (style 0: ~155 / 63 / 27)
    assert bad.mean() > good.mean() + 30 and good.mean() > neutral.mean() + 15
    assert np.median(bad) > np.median(good) > np.median(neutral)
    best = max(((bad > t).mean() + (good <= t).mean()) / 2 for t in range(256))
    assert 0.7 < best < 1.0  # still helpful, still not a solution on its own


def test_bad_styles_are_refused_before_anything_is_written(tmp_path):
    from flows.core.config import ConfigError

    for kwargs in ({"style": 9}, {"style": -1}, {"style": True}, {"style": 1, "videos": 1}):
        with pytest.raises(ConfigError, match="style"):
            make_corpus(tmp_path / "x", **{"images": 2, "videos": 0, "progress": False, **kwargs})
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError):
        render("BAD", np.random.default_rng(0), (32, 32), style=5)


def test_cli_style(tmp_path, capsys):
    assert main([str(tmp_path / "c"), "--images", "3", "--videos", "0", "--size", "120x90", "--no-broken",
                 "--no-progress", "--style", "2"]) == 0
    assert '"style": 2' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "d"), "--images", "1", "--videos", "0", "--style", "7"])
