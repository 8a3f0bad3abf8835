"""``sift scan``: long videos -> scored frames, scene cuts, labelled segments, a plot, a reel.

    sift scan VIDEO... --output DIR [--model URI] [--fps 2] [--reel LABEL] [--no-overlay] [key=value ...]

The driver validates and probes each video and plans its chunks (``serve.offline.scan.plan``: about
``chunk_s`` s each, starting just after a keyframe). Ray Data then runs one decode task per chunk
(one ffmpeg, seeking before its input: frames on the ``fps`` grid, the first frame of every scene,
and the scene score of every decoded frame, in one pass) feeding an autoscaling pool of model actors
(``serve.offline.batch``: the model loaded once per actor, frames prepared as the API prepares them). Only
scores come back to the driver, which builds each timeline (``serve.offline.scan.timeline``) and writes

    DIR/<stem>.timeline.json   video, duration, fps, cuts, frames (t, kind, probs, label), segments, model
    DIR/<stem>.timeline.csv    one row per frame
    DIR/<stem>.png             scores over time, segments as bands, cuts as lines
    DIR/<stem>.reel.mp4        with --reel LABEL: the segments of that label, cut by ``flows.media.reel``
    DIR/scan.json              every video's outputs, and ``errors``: [{video, reason, detail}]

A video that cannot be read (missing, not a video, corrupt, truncated, too long) gets one error line
and an ``errors`` entry; the others complete. Exit status: 0 when at least one video was scanned, 1
when every video failed, 2 for a bad option or config.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from flows.core.config import ConfigError, flat

from flows.core.knobs import add_knobs_flag
from flows.media.validate import Reject, check, read_head
from flows.media.video import VideoError, check_limits, output_size, probe

from serve.offline.batch import (RAW, SCORE, check_budget, check_operating_point, check_runtime, prob_column, score,
                                 stream)
from serve.offline.batch.config import ScanConfig, load_scan
from serve.offline.scan.decode import decode_task
from serve.offline.scan.plan import keyframe_times, lead_for, plan_chunks
from serve.offline.scan.timeline import build, plot, span_lines, write_csv, write_json

VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv")
_IMAGES = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO", "ICO", "HEIF")
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def plan_video(index: int, path: str, cfg: ScanConfig, short_edge: int) -> tuple[dict, list[dict]]:
    """Validate + probe one video -> (its metadata, one work item per chunk). Reject/VideoError."""
    head, size = read_head(path)
    what = check(head, size, max_bytes=1 << 62, image_formats=_IMAGES, video_formats=VIDEO_FORMATS,
                 max_video_bytes=1 << 62)
    if what.kind != "video":
        raise Reject("unsupported_format", f"{what.format} image, not a video (images: sift predict)")
    info = probe(path, timeout=min(60.0, cfg.ffmpeg_timeout))
    check_limits(info, cfg.max_video_seconds, cfg.max_pixels)
    w, h = output_size(info.width, info.height, short_edge)
    chunks = plan_chunks(info.duration, keyframe_times(path, cfg.ffmpeg_timeout), cfg.chunk_s,
                         lead_for(info.fps))
    meta = {"video": path, "duration": info.duration, "width": info.width, "height": info.height,
            "video_fps": info.fps, "codec": info.codec, "chunks": len(chunks)}
    items = [{"video": index, "path": path, "seek": c.seek, "start": c.start, "end": c.end,
              "last": c.last, "width": w, "height": h} for c in chunks]
    return meta, items


def stems(paths: list[str]) -> list[str]:
    """Output names: the file stem, made unique with -2, -3 ... when two videos share one."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        s = Path(p).stem or "video"
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out


def run(videos: list[str], out: str | Path, cfg: ScanConfig, reel: str | None = None, overlay: bool = True,
        num_cpus: int | None = None) -> dict:
    """Scan ``videos`` into ``out``; returns the summary (also written as ``out/scan.json``)."""
    import ray

    from flows.core.runtime import init_ray
    from train.artifact import META

    from serve.predictor import resolve_model

    t0 = time.time()
    out = Path(out)
    model_dir, name, version = resolve_model(cfg.model, cfg.tracking_uri or None)
    meta = json.loads((Path(model_dir) / META).read_text())
    classes = meta["classes"]
    decision = check_operating_point(meta, cfg)
    runtime, why = check_runtime(meta, cfg)
    if reel is not None and reel not in classes:
        raise ConfigError(f"--reel {reel!r} is not one of the model's classes {classes}")
    init_ray(num_cpus)
    check_budget(cfg.cpus_needed(), "sift scan")
    out.mkdir(parents=True, exist_ok=True)
    model = {"name": name, "version": version, "uri": cfg.model, "runtime": runtime}
    plans, items, errors = {}, [], []
    for i, path in enumerate(videos):
        try:
            plans[i], its = plan_video(i, str(path), cfg, int(meta["preprocessing"]["short_edge"]))
            items += its
        except (Reject, VideoError) as exc:
            errors.append(_fail(str(path), exc.reason, exc.detail))
    print(f"[scan] {len(plans)} of {len(videos)} videos readable, {len(items)} chunks; "
          f"model {name} ({version}), runtime {runtime} ({why}); actor pool {cfg.min_actors}..{cfg.max_actors}", flush=True)

    rows: dict[int, list[pa.Table]] = {i: [] for i in plans}
    if items:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(decode_task, fn_kwargs={"cfg": cfg}, batch_size=1, batch_format="pyarrow",
                            num_cpus=cfg.decode_cpus, compute=ray.data.TaskPoolStrategy(size=cfg.decoders))
        ds = score(ds, str(model_dir), source=RAW, batch_size=cfg.batch_size, min_actors=cfg.min_actors,
                   max_actors=cfg.max_actors, actor_cpus=cfg.actor_cpus, threads=cfg.threads,
                   operating_point=cfg.operating_point(), runtime=cfg.runtime_kwargs())
        total = sum(math.ceil((it["end"] - it["start"]) * cfg.fps) for it in items)
        for batch in stream(ds, "scan", total=total):
            for v in set(batch.column("video").to_pylist()):
                rows[v].append(batch.filter(pc.equal(batch.column("video"), v)))

    done = []
    for i, stem in zip(plans, stems([plans[i]["video"] for i in plans])):
        entry = finish(plans[i], rows[i], out, stem, cfg, classes, decision, model, reel, overlay)
        (done if "error" not in entry else errors).append(entry)
    summary = {"output": str(out), "model": model, "videos": done, "errors": errors,
               "wall_s": round(time.time() - t0, 3), "config": flat(cfg)}
    (out / "scan.json").write_text(json.dumps(summary, indent=1))
    return summary


def _fail(video: str, reason: str, detail: str) -> dict:
    print(f"[scan] ERROR {video}: {reason}: {detail}", flush=True)
    return {"video": video, "error": reason, "detail": detail}


def finish(plan: dict, parts: list[pa.Table], out: Path, stem: str, cfg: ScanConfig, classes: list[str],
           decision, model: dict, reel: str | None, overlay: bool) -> dict:
    """One video's scored rows -> its timeline files (or its error entry) and, optionally, a reel.
    ``decision``: the operating point (``train.decision.Decision``) that labels the frames."""
    import numpy as np

    video = plan["video"]
    table = pa.concat_tables(parts) if parts else None
    errs = [(e, d) for e, d in zip(table.column("error").to_pylist(), table.column("detail").to_pylist())
            if e] if table is not None else []
    if table is None or errs:  # a failed chunk fails the video: a partial timeline would mislead
        reason, detail = errs[0] if errs else ("decode_error", "no frames decoded")
        return _fail(video, reason, detail)
    col = lambda n: table.column(n).to_numpy(zero_copy_only=False)
    probs = np.stack([col(prob_column(c)) for c in classes], axis=1)
    tl = build(col("t"), col("score"), col("grid"), probs, classes=classes, thresholds=decision,
               duration=plan["duration"], scene_threshold=cfg.scene_threshold, min_gap=cfg.min_scene_s,
               window=cfg.smooth, keyframes=cfg.keyframes,
               predicted=col(SCORE) if SCORE in table.column_names else None)
    timeline = {**{k: plan[k] for k in ("video", "duration", "width", "height", "video_fps", "codec")},
                "fps": cfg.fps, "classes": classes, "thresholds": list(decision.thresholds),
                "operating_point": decision.describe(classes), "model": model, **tl,
                "config": {k: v for k, v in flat(cfg).items() if k not in ("model", "tracking_uri")}}
    files = {"timeline": str(write_json(out / f"{stem}.timeline.json", timeline)),
             "csv": str(write_csv(out / f"{stem}.timeline.csv", timeline))}
    if cfg.plot:
        plot(out / f"{stem}.png", timeline)
        files["png"] = str(out / f"{stem}.png")
    entry = {"video": video, "duration": plan["duration"], "frames": len(tl["frames"]),
             "cuts": len(tl["cuts"]), "segments": len(tl["segments"]), **files}
    labels = sorted({s["label"] for s in tl["segments"]})
    print(f"[scan] {video}: {plan['duration']:.1f} s, {len(tl['frames'])} frames, {len(tl['cuts'])} cuts, "
          f"{len(tl['segments'])} segments ({', '.join(labels)}) -> {files['timeline']}", flush=True)
    if reel is not None:
        entry.update(make_reel(video, tl["segments"], reel, out / f"{stem}.reel.mp4", overlay))
    return entry


def make_reel(video: str, segs: list[dict], label: str, path: Path, overlay: bool) -> dict:
    """The segments labelled ``label`` cut into ``path`` by ``flows.media.reel``; failures are reported
    in the entry (``reel_error``), never raised: the timeline is already written."""
    chosen = [s for s in segs if s["label"] == label]
    if not chosen:
        print(f"[scan] {video}: no {label} segment, no reel", flush=True)
        return {"reel": None}
    try:
        from flows.media.reel import cut_reel

        res = cut_reel(video, chosen, path, overlay=overlay)
    except Exception as exc:  # the reel is an extra: its failure must not lose the timeline
        why = str(exc) if isinstance(exc, VideoError) else f"{type(exc).__name__}: {exc}"
        print(f"[scan] {video}: reel failed: {why}", flush=True)
        return {"reel": None, "reel_error": why[:300]}
    print(f"[scan] {video}: reel of {len(chosen)} {label} segments ({res.get('mode')}) -> {res['path']}",
          flush=True)
    return {"reel": str(res["path"]), "reel_duration": res.get("duration"), "reel_mode": res.get("mode")}


def split_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Positional arguments -> (videos, key=value overrides); an existing file is always a video."""
    over = [a for a in inputs if _OVERRIDE.match(a) and not Path(a).exists()]
    return [a for a in inputs if a not in over], over


def export_spans(summary: dict, path: Path) -> int:
    """The segments of every scanned video as span lines (``serve.offline.scan.timeline.span_lines``) in one JSONL;
    returns how many. Written whole to a temporary name, then renamed."""
    source = f"sift scan {summary['model']['name']}@{summary['model']['version']}"
    lines = [line for v in summary["videos"]
             for line in span_lines(json.loads(Path(v["timeline"]).read_text()), source)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(path)
    return len(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="sift scan", description=__doc__.split("\n\n")[0])
    add_knobs_flag(ap, load_scan)
    ap.add_argument("inputs", nargs="+", metavar="VIDEO|key=value",
                    help="video files (mp4, mov, webm, mkv), then key=value config overrides")
    ap.add_argument("--output", required=True, help="output folder (timelines, plots, scan.json)")
    ap.add_argument("--model", help="artifact dir or models:/ URI (default: the config's, @champion)")
    ap.add_argument("--fps", type=float, help="sampled frames per second (default 2)")
    ap.add_argument("--reel", metavar="LABEL", help="also cut the segments of this label into DIR/<stem>.reel.mp4")
    ap.add_argument("--no-overlay", action="store_true", help="reel without the label/score text")
    ap.add_argument("--export-spans", metavar="FILE.jsonl",
                    help="also write every segment as a span line that `sift preprocess` reads as labels")
    ap.add_argument("--config", help="YAML of settings (--knobs lists every knob)")
    ap.add_argument("--num-cpus", type=int, help="logical CPUs for a local Ray (default: 2 x cores)")
    args = ap.parse_intermixed_args(argv)
    videos, over = split_inputs(args.inputs)
    from flows.core.preflight import existing, output

    from train.preflight import check_model

    for v in videos:  # a missing file is a typo to fix now; a broken video is one failed item of the run
        existing(v, "video", "file")
    output(args.output, "--output")
    if args.export_spans:
        output(args.export_spans, "--export-spans", "file")
    over += [f"model={args.model}"] * bool(args.model) + [f"fps={args.fps}"] * (args.fps is not None)
    cfg = load_scan(args.config, over)
    check_model(cfg.model, cfg.tracking_uri or None, "--model" if args.model else "model")
    summary = run(videos, args.output, cfg, reel=args.reel,
                  overlay=not args.no_overlay, num_cpus=args.num_cpus)
    print(f"[scan] {len(summary['videos'])} scanned, {len(summary['errors'])} failed "
          f"in {summary['wall_s']:.1f} s -> {Path(args.output) / 'scan.json'}")
    if args.export_spans:
        print(f"[scan] {export_spans(summary, Path(args.export_spans))} span lines -> {args.export_spans}")
    return 0 if summary["videos"] or not videos else 1

