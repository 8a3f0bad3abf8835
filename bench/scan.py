"""Long-video scanning speed: ``sift scan`` vs the video's duration and vs ffmpeg alone.

A generated 10-minute 1280x720 25 fps h264 video (x264 veryfast; testsrc2 / life / gradients /
testsrc scenes in turn, a cut at every scene change; cached under .sift/bench/) is scanned at 2 fps
in one run with each model, right after ffmpeg alone decodes the same sampled frames with the
sampler's own command (``flows.media.video.sample.sample_cmd``: one pass, frames to /dev/null):

    python bench/scan.py [--minutes 10] [--models tiny,b32] [--runtimes torch,onnx-int8] [key=value ...]

Models: ``tiny`` is trained through the real path (make-corpus -> preprocess -> train with
train/configs/tiny.yaml, a few steps; its artifact has the YOLO face branch) and ``b32`` is a
random-init ViT-B/32-size CLIP + head without faces (bench/serve.py's). Both cached.

Prints wall / video duration (target <= 0.1) and wall / ffmpeg-alone (target <= 1.25), with and
without Ray's start-up, and the scan's own decode commands alone (all chunks, grid + scene scores +
keyframes, ``decoders`` at a time, output discarded) / ffmpeg-alone: the decode side's overhead
without Ray or the model.
Numbers only, no asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.core.runtime import quiet_env

quiet_env()

BENCH = ROOT / ".sift" / "bench"
SCENES = [("testsrc2", 45.0), ("life=mold=10:ratio=0.1:life_color=#30c030:death_color=#202060", 35.0),
          ("gradients=speed=0.02", 50.0), ("testsrc", 30.0)]
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p"]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def make_video(minutes: float) -> tuple[Path, list[float]]:
    """The cached test video and its cut times. Each scene is encoded once, then the scenes are
    joined in turn by the concat demuxer (stream copy: same encoder settings, each piece starts on
    an IDR frame) up to the duration."""
    total = 60.0 * minutes
    out = BENCH / f"scan_720p_{int(total)}s.mp4"
    cuts, t, i = [], 0.0, 0
    while t < total:
        t += SCENES[i % len(SCENES)][1]
        i += 1
        if t < total:
            cuts.append(t)
    if out.exists():
        return out, cuts
    BENCH.mkdir(parents=True, exist_ok=True)
    pieces = []
    for k, (src, secs) in enumerate(SCENES):
        piece = BENCH / f"scene{k}.mp4"
        if not piece.exists():
            name, _, opts = src.partition("=")
            spec = f"{name}=s=1280x720:r=25" + (f":{opts}" if opts else "")
            print(f"[bench] encoding scene {k}: {name} {secs:g} s", flush=True)
            _ffmpeg("-f", "lavfi", "-i", spec, "-t", f"{secs}", *X264, "-g", "250", str(piece))
        pieces.append(piece)
    listing = BENCH / "scan_concat.txt"
    listing.write_text("".join(f"file '{pieces[j % len(pieces)]}'\n" for j in range(i)))
    tmp = out.with_suffix(".tmp.mp4")
    _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", "-t", f"{total}", str(tmp))
    tmp.rename(out)
    return out, cuts


def tiny_model() -> Path:
    """A tiny model trained through the real path into a private SIFT_HOME (cached)."""
    home = BENCH / "scan_home"
    done = home / "tiny_model.json"
    if done.exists():
        return Path(json.loads(done.read_text())["model"])
    os.environ["SIFT_HOME"] = str(home)
    from flows.ingest.config import load_preprocess
    from flows.corpus import make_corpus
    from flows.ingest.preprocess import run as preprocess
    from train.config import CONFIG_DIR, load_train
    from train.main import run as train

    make_corpus(home / "corpus", images=120, videos=0, seed=7, workers=1, progress=False)
    preprocess(home / "corpus", home / "data", load_preprocess(None, ["batch_size=16"]))
    cfg = load_train(CONFIG_DIR / "tiny.yaml", ["epochs=1", "steps_per_epoch=4", "frozen_steps=2",
                                                "early_stop=0", "run_name=bench-scan-tiny"])
    summary = train(cfg, home / "data")
    done.write_text(json.dumps({"model": str(summary["model"])}))
    return Path(summary["model"])


def b32_model() -> Path:
    """bench/serve.py's ViT-B/32-size model, exported to ONNX fp32 + INT8 the way ``sift train`` does."""
    out = BENCH / "scan_b32"
    meta = out / "model" / "sift_model.json"
    if meta.exists() and "runtimes" in json.loads(meta.read_text()):
        return out / "model"
    from bench.serve import export, images, make_model

    model = make_model(out)
    export(model, images(64))
    return model


def _timed(cmds: list[list[str]], parallel: int = 1) -> float:
    from concurrent.futures import ThreadPoolExecutor

    def one(cmd):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    t = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, cmds))
    return time.perf_counter() - t


def ffmpeg_alone(video: Path, fps: float, short_edge: int) -> float:
    """Seconds for ffmpeg to decode the sampled frames, with the sampler's command (one pass)."""
    from flows.media.video import output_size, probe
    from flows.media.video.sample import sample_cmd

    info = probe(str(video))
    return _timed([sample_cmd(str(video), *output_size(info.width, info.height, short_edge), fps)])


def decode_pass(video: Path, cfg, short_edge: int) -> float:
    """Seconds for the scan's own ffmpeg commands (grid + scene scores + keyframes, every chunk,
    ``decoders`` at a time as the scan runs them, output discarded): what the decode side costs
    without Ray or the model."""
    from flows.media.video import output_size, probe
    from serve.offline.scan import decode as sd
    from serve.offline.scan import plan as sp

    info = probe(str(video))
    w, h = output_size(info.width, info.height, short_edge)
    chunks = sp.plan_chunks(info.duration, sp.keyframe_times(str(video)), cfg.chunk_s, sp.lead_for(info.fps))
    return _timed([sd.scan_cmd(str(video), w, h, cfg.fps, c, cfg.scene_threshold, cfg.min_scene_s,
                                cfg.ffmpeg_threads)
                   for c in chunks], cfg.decoders)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--models", default="tiny,b32", help="comma-separated: tiny, b32")
    ap.add_argument("--runtimes", default="torch,onnx-int8", help="comma-separated runtimes to scan each model with")
    ap.add_argument("overrides", nargs="*", help="key=value scan config overrides")
    args = ap.parse_args(argv)
    from flows.core.runtime import init_ray
    from flows.media.video import probe
    from serve.offline.batch.config import load_scan
    from serve.offline.scan.job import run

    t = time.perf_counter()
    init_ray()  # first: training the tiny model would start it otherwise
    ray_s = time.perf_counter() - t
    video, cuts = make_video(args.minutes)
    duration = probe(str(video)).duration
    models = {"tiny": tiny_model, "b32": b32_model}
    rows = []
    for name in args.models.split(","):
        model = models[name]()
        cfg = load_scan(None, [f"model={model}", *args.overrides])
        short_edge = json.loads((model / "sift_model.json").read_text())["preprocessing"]["short_edge"]
        base = ffmpeg_alone(video, cfg.fps, short_edge)
        own = decode_pass(video, cfg, short_edge)
        print(f"[bench] {name}: ffmpeg alone {base:.1f} s, the scan's decode pass {own:.1f} s; scanning ...",
              flush=True)
        for runtime in args.runtimes.split(","):
            cfg = load_scan(None, [f"model={model}", *args.overrides, f"runtime={runtime}"])
            t = time.perf_counter()
            summary = run([str(video)], BENCH / f"scan_out_{name}_{runtime}", cfg)
            wall = time.perf_counter() - t
            v = summary["videos"][0]
            found = json.loads(Path(v["timeline"]).read_text())["cuts"]
            hits = sum(any(abs(c - f) <= 0.25 for f in found) for c in cuts)
            rows.append((f"{name} {runtime}", base, own, wall, v["frames"], hits, len(found)))
    print("\n== bench/scan.py ==")
    print(f"{video.name}: {duration:.0f} s 1280x720 25 fps h264, {len(cuts)} cuts; sampled at {cfg.fps:g} fps; "
          f"Ray start-up {ray_s:.1f} s (not in 'scan s'); {os.cpu_count()} cores")
    print(f"{'model':16s} {'ffmpeg s':>9s} {'decode/ffmpeg':>14s} {'scan s':>8s} {'frames':>7s} "
          f"{'cuts found':>11s} {'scan/duration':>14s} {'scan/ffmpeg':>12s} {'(+Ray start)':>13s}")
    for name, base, own, wall, frames, hits, found in rows:
        print(f"{name:16s} {base:9.1f} {own / base:14.2f} {wall:8.1f} {frames:7d} "
              f"{f'{hits}/{len(cuts)} ({found})':>11s} {wall / duration:14.3f} {wall / base:12.2f} "
              f"{(wall + ray_s) / base:13.2f}")
    print("targets: scan/duration <= 0.1, scan/ffmpeg <= 1.25; ViT-B/32 with INT8 <= 0.06 x duration (issue #18)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
