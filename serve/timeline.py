"""Per-frame scores -> smoothed labels -> segments, and video-level aggregation (pure numpy).

Used by the serving API's video endpoint and by long-video scanning, so a timeline means the same
thing everywhere.
"""
from __future__ import annotations

import numpy as np


def smooth(probs: np.ndarray, window: int = 1) -> np.ndarray:
    """Centred moving average over time of (T, C) probabilities (window in frames, odd)."""
    if window <= 1 or len(probs) < 2:
        return probs
    k = np.ones(window) / window
    pad = window // 2
    padded = np.pad(probs, ((pad, pad), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, c], k, mode="valid") for c in range(probs.shape[1])], axis=1)


def segments(times: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: list[str],
             end: float | None = None) -> list[dict]:
    """Runs of equal labels -> ``[{start, end, label, score}]``, score = mean prob of the label.

    A frame at time t_i covers [t_i, t_{i+1}); the last one ends at ``end`` (video duration) or one
    median frame step later.
    """
    n = len(times)
    if n == 0:
        return []
    step = float(np.median(np.diff(times))) if n > 1 else 1.0
    bounds = np.append(times, end if end is not None else times[-1] + step)
    out, i = [], 0
    while i < n:
        j = i
        while j + 1 < n and labels[j + 1] == labels[i]:
            j += 1
        k = int(labels[i])
        out.append({"start": float(bounds[i]), "end": float(bounds[j + 1]), "label": classes[k],
                    "score": float(probs[i:j + 1, k].mean())})
        i = j + 1
    return out


def video_label(probs: np.ndarray, smoothed: np.ndarray, thresholds, how: str = "max",
                positive: int | None = None, k: int = 3) -> int:
    """The video-level class index from (T, C) frame probabilities and their smoothed twin.

    ``max``: frames are labelled by the serving rule on the *smoothed* probabilities, and the video
    takes the label of its most confident frame (highest smoothed probability of the frame's own
    label), except that a frame labelled ``positive`` (the worst-mistake class, e.g. BAD) outranks
    every other: one flagged scene is enough to flag the video. ``mean`` / ``topk``: the serving
    rule on the aggregated scores (:func:`aggregate`), a whole-video impression.
    """
    from train.metrics import predict_with_thresholds

    if len(probs) == 0:
        raise ValueError("no frames to aggregate")
    if how != "max":
        return int(predict_with_thresholds(aggregate(probs, how, k)[None], thresholds)[0])
    labels = predict_with_thresholds(smoothed, thresholds)
    if positive is not None and np.any(labels == positive):
        return int(positive)
    conf = smoothed[np.arange(len(labels)), labels]
    return int(labels[int(np.argmax(conf))])


def aggregate(probs: np.ndarray, how: str = "max", k: int = 3) -> np.ndarray:
    """Video-level (C,) scores from (T, C) frame probabilities: max, mean or top-k mean per class.

    ``max`` flags a video if any frame is bad (one bad scene is enough to hide a video); ``mean``
    is a softer whole-video impression; ``topk`` sits between them and resists a single noisy frame.
    """
    if len(probs) == 0:
        raise ValueError("no frames to aggregate")
    if how == "max":
        return probs.max(axis=0)
    if how == "mean":
        return probs.mean(axis=0)
    if how == "topk":
        k = max(1, min(k, len(probs)))
        return np.sort(probs, axis=0)[-k:].mean(axis=0)
    raise ValueError(f"aggregation {how!r} is not one of max, mean, topk")
