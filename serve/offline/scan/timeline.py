"""Scored frames of one video -> cuts, per-frame labels, segments; and the files ``sift scan``
writes (JSON, CSV, PNG). Pure numpy + matplotlib (a bare Figure, Agg): no Ray, no ffmpeg.

Smoothing never crosses a cut: the moving average runs within each scene, so a label change at a
cut lands exactly on the cut instead of being blurred over ``smooth / 2`` frames on each side.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from train.metrics import predict_with_thresholds
from serve.timeline import segments, smooth

FRAME, KEYFRAME = "frame", "keyframe"  # a grid sample / the first frame of a scene (at a cut)


def final_cuts(candidates, min_gap: float) -> list[float]:
    """Sorted cut times, none within ``min_gap`` s of the previous kept cut or of 0 (the start of
    the first scene): the rule the decoder applies per chunk, applied again across chunks."""
    out, prev = [], 0.0
    for t in sorted(set(float(c) for c in candidates)):
        if t - prev >= min_gap - 1e-9:
            out.append(t)
            prev = t
    return out


def scene_smooth(probs: np.ndarray, scene: np.ndarray, window: int) -> np.ndarray:
    """(T, C) probabilities -> moving average over ``window`` frames within each run of equal
    ``scene`` (T,) ids (frames sorted by time)."""
    out = np.array(probs, dtype=np.float64, copy=True)
    for k in np.unique(scene):
        idx = np.flatnonzero(scene == k)
        out[idx] = smooth(out[idx], window)
    return out


def build(t, score, grid, probs, *, classes: list[str], thresholds, duration: float,
          scene_threshold: float, min_gap: float, window: int, keyframes: bool = True,
          predicted=None) -> dict:
    """Scored frames of one video (any order; N each: time s, scene score, grid flag, (N, C)
    probs) -> ``{cuts, frames, segments}``.

    Cuts: frames scoring above ``scene_threshold``, spaced by ``min_gap`` (:func:`final_cuts`).
    Kept frames: the grid, plus the frame at each cut when ``keyframes``. Labels: per-class
    thresholds (the serving rule: a ``train.decision.Decision`` or plain thresholds) on the within-scene smoothed probabilities; segments: runs of a
    label, the last one ending at ``duration``. ``predicted`` (N,): a score head's output per frame,
    kept on each frame and averaged over each segment as ``predicted_score``.
    """
    t, score = np.asarray(t, np.float64), np.asarray(score, np.float64)
    grid, probs = np.asarray(grid, bool), np.asarray(probs, np.float64).reshape(len(t), len(classes))
    cuts = final_cuts(t[score > scene_threshold], min_gap)
    at_cut = np.isin(t, cuts)
    keep = grid | (at_cut & keyframes)
    order = np.argsort(t, kind="stable")
    order = order[keep[order]]
    order = order[np.r_[True, np.diff(t[order]) > 0]] if len(order) else order  # one row per time
    t, at_cut, probs = t[order], at_cut[order], probs[order]
    pred = np.asarray(predicted, np.float64)[order] if predicted is not None else None
    scene = np.searchsorted(np.asarray(cuts), t, side="right")
    sm = scene_smooth(probs, scene, window)
    labels = predict_with_thresholds(sm, thresholds) if len(t) else np.zeros(0, int)
    frames = [{"t": round(float(t[i]), 4), "kind": KEYFRAME if at_cut[i] else FRAME,
               "scene": int(scene[i]), "label": classes[int(labels[i])],
               "probs": {c: round(float(p), 6) for c, p in zip(classes, probs[i])},
               "smoothed": {c: round(float(p), 6) for c, p in zip(classes, sm[i])}}
              for i in range(len(t))]
    if pred is not None:
        for f, v in zip(frames, pred):
            f["predicted_score"] = round(float(v), 6)
    segs = segments(t, labels, sm, classes, end=duration)
    for s in segs:
        s["start"], s["end"], s["score"] = round(s["start"], 4), round(s["end"], 4), round(s["score"], 6)
        if pred is not None:
            inside = (t >= s["start"]) & (t < s["end"])
            s["predicted_score"] = round(float(pred[inside].mean()), 6) if inside.any() else None
    return {"cuts": [round(c, 4) for c in cuts], "frames": frames, "segments": segs}


def span_lines(timeline: dict, source: str = "sift scan") -> list[dict]:
    """A timeline's segments as manifest span lines (``flows.ingest.spans``: path, start, end, label), the
    segment's mean smoothed probability as ``confidence``: what ``sift preprocess`` reads back as
    labeled spans, so reviewed or corrected scan results become training data."""
    video = str(Path(timeline["video"]).resolve())
    return [{"path": video, "start": s["start"], "end": s["end"], "label": s["label"],
             "confidence": s["score"], "source": source}
            for s in timeline["segments"] if s["end"] > s["start"]]


def write_json(path: Path, timeline: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(timeline, indent=1))
    return path


def write_csv(path: Path, timeline: dict) -> Path:
    """One row per frame: t, kind, scene, label, then the raw and the smoothed prob of each class."""
    classes = timeline["classes"]
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "kind", "scene", "label", *(f"prob_{c}" for c in classes),
                    *(f"smoothed_{c}" for c in classes)])
        for fr in timeline["frames"]:
            w.writerow([fr["t"], fr["kind"], fr["scene"], fr["label"],
                        *(fr["probs"][c] for c in classes), *(fr["smoothed"][c] for c in classes)])
    return path


def plot(path: Path, timeline: dict):
    """Scores over time: each class's smoothed probability (raw as dots), segments as coloured
    bands (a strip on top names the label), cuts as dashed lines. Returns the Figure."""
    from matplotlib.figure import Figure

    classes, frames = timeline["classes"], timeline["frames"]
    colour = {c: f"C{i}" for i, c in enumerate(classes)}
    duration = float(timeline["duration"])
    fig = Figure(figsize=(min(24.0, 8.0 + duration / 60.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    t = [f["t"] for f in frames]
    for c in classes:
        ax.plot(t, [f["smoothed"][c] for f in frames], color=colour[c], lw=1.6, label=c)
        ax.plot(t, [f["probs"][c] for f in frames], ".", color=colour[c], ms=2.5, alpha=0.45)
    for s in timeline["segments"]:
        ax.axvspan(s["start"], s["end"], color=colour[s["label"]], alpha=0.10, lw=0)
        ax.axvspan(s["start"], s["end"], ymin=0.965, ymax=1.0, color=colour[s["label"]], alpha=0.9, lw=0)
    for i, c in enumerate(timeline["cuts"]):
        ax.axvline(c, color="0.35", ls="--", lw=0.8, label="cut" if i == 0 else None)
    ax.set_xlim(0.0, duration)
    ax.set_ylim(0.0, 1.04)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability (smoothed line, raw dots)")
    model = timeline.get("model", {})
    ax.set_title(f"{Path(timeline['video']).name}: {len(timeline['segments'])} segments, "
                 f"{len(timeline['cuts'])} cuts  (model {model.get('name', '')}, version {model.get('version', '')})",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.grid(alpha=0.25)
    if path is not None:
        fig.savefig(Path(path), format="png", dpi=100)
    return fig
