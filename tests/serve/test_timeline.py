"""Video-level labels from hand-made frame timelines (serve/timeline.py)."""
import numpy as np
import pytest

from serve.timeline import aggregate, segments, smooth, video_label

BAD, NEUTRAL, GOOD = range(3)
EQUAL = [1 / 3] * 3
WORST = [0.6, 0.4, 0.4]  # the worst-mistake rule: BAD when P(BAD) / (P(BAD) + best rival) >= 0.6


def _frames(*rows):
    return np.array(rows, dtype=float)


def test_max_flags_a_video_when_one_frame_crosses_the_positive_threshold():
    p = _frames(*[[0.05, 0.9, 0.05]] * 5, [0.9, 0.07, 0.03], *[[0.05, 0.9, 0.05]] * 5)
    assert video_label(p, p, WORST, "max", positive=BAD) == BAD
    # the old rule: max per class, renormalised, then thresholded: the NEUTRAL frames won
    v = aggregate(p, "max")
    assert np.argmax(v / v.sum() / WORST) == NEUTRAL
    # mean and topk are a whole-video impression: one frame is not enough
    assert video_label(p, p, WORST, "mean", positive=BAD) == NEUTRAL
    assert video_label(p, p, WORST, "topk", positive=BAD, k=3) == NEUTRAL


def test_max_looks_at_the_smoothed_frames():
    p = _frames(*[[0.05, 0.9, 0.05]] * 5, [0.9, 0.07, 0.03], *[[0.05, 0.9, 0.05]] * 5)
    sm = smooth(p, 5)  # one spike spread over 5 frames: P(BAD) ~0.22 nowhere crosses 0.6
    assert sm[:, BAD].max() == pytest.approx((0.9 + 4 * 0.05) / 5)
    assert video_label(p, sm, WORST, "max", positive=BAD) == NEUTRAL
    three = _frames(*[[0.05, 0.9, 0.05]] * 4, *[[0.9, 0.07, 0.03]] * 3, *[[0.05, 0.9, 0.05]] * 4)
    assert video_label(three, smooth(three, 3), WORST, "max", positive=BAD) == BAD  # a real scene survives


def test_max_without_a_worst_mistake_takes_the_most_confident_frame():
    p = _frames([0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.05, 0.05, 0.9], [0.5, 0.4, 0.1])
    assert video_label(p, p, EQUAL, "max") == GOOD
    # positive outranks confidence: a weaker BAD frame beats a surer GOOD one
    assert video_label(p, p, [0.5, 0.5, 0.5], "max", positive=BAD) == BAD


def test_mean_and_topk_on_known_numbers():
    p = _frames([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.7, 0.2], [0.1, 0.6, 0.3])
    assert aggregate(p, "mean") == pytest.approx([0.275, 0.55, 0.175])
    assert aggregate(p, "topk", k=2) == pytest.approx([0.45, 0.75, 0.25])
    assert video_label(p, p, EQUAL, "mean") == NEUTRAL
    assert video_label(p, p, [0.2, 0.9, 0.9], "mean") == BAD  # thresholds apply to the aggregate
    assert video_label(p[:1], p[:1], EQUAL, "topk", k=5) == BAD  # k larger than the frames
    with pytest.raises(ValueError):
        video_label(p[:0], p[:0], EQUAL, "max")
    with pytest.raises(ValueError, match="median"):
        aggregate(p, "median")


def test_segments_cover_the_video():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    s = segments(t, np.array([1, 1, 0, 0]), _frames(*[[0.5, 0.5]] * 4), ["a", "b"], end=4.5)
    assert [(x["start"], x["end"], x["label"]) for x in s] == [(0.0, 2.0, "b"), (2.0, 4.5, "a")]
