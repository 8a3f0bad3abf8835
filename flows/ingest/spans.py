"""Labels from time spans: manifest lines ``{"path": "v.mp4", "start": 3.0, "end": 7.5,
"label": "BAD"}`` become frames sampled inside each span, labeled with the span's label.

Pure planning plus one sampling call; the rows are built by ``flows.ingest.process`` like any other.

- Ingest (:func:`span_item`, :func:`group_spans`): a line with ``start``/``end`` carries one span
  (a bad one is a ``bad_span`` reject item); all span lines of one video file become *one* work
  item, so its spans are checked against each other and all its frames share one ``group_id``
  (hence one split, whatever their labels). The item is the video's first whole line (no
  ``start``/``end``) when there is one, else a span-only item where its first span line was.
- Both a whole line and spans for one video: both are used. The whole line gives the thumbnail and
  keyframes as usual, the spans their frames; a whole-video row whose timestamp falls inside a
  span takes that span's label (the span is the more specific statement), and where a span frame
  and a keyframe have the same timestamp the span frame is kept.
- Per video (:func:`plan_spans`): spans starting at or after the end of the video are
  ``bad_span``; ends past it are clamped; spans that overlap a span with another label are all
  ``span_conflict`` (the detail names the other span); overlapping or touching spans of one label
  are merged so no frame is taken twice.
- Sampling (:func:`sample_span`): ``span_fps`` frames per second, at most ``span_max_frames`` per
  merged span (a longer span is sampled more sparsely, evenly over its whole length).
"""
from __future__ import annotations

import itertools
import json
import math

from flows.media.video import Frame
from flows.media.video.sample import sample_frames

_EPS = 1e-3  # s: a span starting this close to the end of the video holds no frame


def has_span(rec: dict) -> bool:
    """Whether a manifest line carries a span."""
    return "start" in rec or "end" in rec


def parse_span(rec: dict) -> tuple[float, float]:
    """``(start, end)`` seconds of a manifest line; ValueError saying why they are unusable."""
    values = []
    for key in ("start", "end"):
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"span {key} {v!r} is not a number of seconds")
        values.append(float(v))
    start, end = values
    if start < 0 or end <= start:
        raise ValueError(f"span {start:g}-{end:g} s: need 0 <= start < end")
    return start, end


def span_item(item: dict, rec: dict, where: str) -> dict:
    """A manifest item whose line has a span -> that item carrying the span (JSON in ``spans``,
    ``whole`` False), or a ``bad_span`` reject item."""
    try:
        start, end = parse_span(rec)
    except ValueError as exc:
        return {**item, "reject": "bad_span", "detail": f"{where}: {exc}"}
    span = {"start": start, "end": end, "label": item["label"], "label_name": item["label_name"],
            "pool": item["pool"], "where": where}
    return {**item, "spans": json.dumps([span]), "whole": False}


def spans_of(item: dict) -> list[dict]:
    """The spans an item carries (``[]`` for plain items)."""
    return json.loads(item.get("spans") or "[]")


def count_entries(items: list[dict]) -> int:
    """Input entries behind work items: a file or manifest line each, so a video with three span
    lines (one work item) counts 3, or 4 if the file is also a whole-video line."""
    return sum(int(bool(it.get("reject")) or bool(it.get("whole", True))) + len(spans_of(it)) for it in items)


def group_spans(items: list[dict]) -> list[dict]:
    """One work item per video file: each span item joins the first whole item of its path, else
    the first span item of its path. Order is kept; group and source fall back to the first span
    line's when the item has none. Reject items pass through unchanged."""
    items = [dict(i) for i in items]
    whole = {}
    for it in items:
        if not it.get("reject") and it.get("whole", True):
            whole.setdefault(it["path"], it)
    out, span_only = [], {}
    for it in items:
        if it.get("reject") or it.get("whole", True):
            out.append(it)
            continue
        target = whole.get(it["path"]) or span_only.get(it["path"])
        if target is None:
            span_only[it["path"]] = it
            out.append(it)
            continue
        target["spans"] = json.dumps(spans_of(target) + spans_of(it))
        for key in ("group", "source"):
            target[key] = target.get(key) or it.get(key, "")
    return out


def describe(span: dict) -> str:
    """``"m.jsonl:3 BAD 3-7.5 s"``: enough to find the line."""
    return f"{span['where']} {span['label_name']} {span['start']:g}-{span['end']:g} s"


def plan_spans(spans: list[dict], duration: float) -> tuple[list[dict], list[tuple[dict, str, str]]]:
    """Spans of one video (``duration`` s) -> (merged spans to sample, [(span, reason, detail)]).

    A merged span keeps its label fields and lists its lines in ``parts``. Rejected: spans that
    start at/after the end (``bad_span``) and every span overlapping one with another label
    (``span_conflict``). Ends past the video are clamped to its duration.
    """
    rejected, given, inside = [], [], []
    for sp in spans:
        if sp["start"] >= duration - _EPS:
            rejected.append((sp, "bad_span", f"{describe(sp)}: starts after the end of the "
                                             f"video ({duration:.2f} s)"))
        else:
            given.append(sp)  # as written, for the details
            inside.append({**sp, "end": min(sp["end"], duration)})
    clash: dict[int, list[str]] = {}
    for (i, a), (j, b) in itertools.combinations(enumerate(inside), 2):
        if a["label"] != b["label"] and a["start"] < b["end"] and b["start"] < a["end"]:
            clash.setdefault(i, []).append(describe(given[j]))
            clash.setdefault(j, []).append(describe(given[i]))
    for i, others in clash.items():
        rejected.append((given[i], "span_conflict",
                         f"{describe(given[i])} overlaps {'; '.join(others)}"))
    ok = sorted((sp for i, sp in enumerate(inside) if i not in clash),
                key=lambda s: (s["label"], s["start"]))
    merged: list[dict] = []
    for sp in ok:  # same label only: spans of different labels here never overlap
        last = merged[-1] if merged else None
        if last and last["label"] == sp["label"] and sp["start"] <= last["end"]:
            last["end"] = max(last["end"], sp["end"])
            last["parts"].append(sp)
        else:
            merged.append({**sp, "parts": [sp]})
    return sorted(merged, key=lambda s: s["start"]), rejected


def span_rate(length: float, fps: float, cap: int) -> float:
    """Frames per second for a span of ``length`` s: ``fps``, lowered so at most ``cap`` frames."""
    return min(fps, cap / length)


def sample_span(path: str, span: dict, cfg) -> list[Frame]:
    """The frames of one merged span: the first real frame at or after each ``start + k/rate``,
    inside ``[start, end)`` (see :func:`flows.media.video.sample.sample_frames`), at most
    ``cfg.span_max_frames``. VideoError when the span cannot be decoded."""
    length = span["end"] - span["start"]
    frames = sample_frames(path, fps=span_rate(length, cfg.span_fps, cfg.span_max_frames),
                           short_edge=cfg.short_edge, start=span["start"], end=span["end"],
                           timeout=cfg.ffmpeg_timeout, max_seconds=cfg.max_video_seconds,
                           max_pixels=cfg.max_video_pixels)
    try:
        return list(itertools.islice(frames, cfg.span_max_frames))
    finally:
        frames.close()  # kills ffmpeg if the cap stopped us early
