"""Evaluation metrics for the sift classifier: scikit-learn's counts and ratios, sift's decision rule.

Conventions: ``probs`` (N, C) float, rows sum to 1; ``y`` (N,) int true labels in 0..C-1; ``pred`` (N,)
int predicted labels; ``classes`` the C class names; ``cm`` a (C, C) confusion matrix, rows = true,
columns = predicted.

With a worst mistake (a true ``negative`` item predicted ``positive``; for the default label set a
GOOD item predicted BAD: the user loses good content), the key operating point is "positive recall
at negative->positive rate <= x": flag an item when its score is >= t, and keep the t that flags the
most true positives while flagging at most a fraction x of the true negatives. The class names are
parameters, and the worst mistake is optional, so any label set works.

The standard metrics (confusion matrix, precision/recall/F1, PR curves, average precision) come from
``sklearn.metrics``, always with ``labels=`` given, so a class with no items still has its row, and
``zero_division=0``, so an undefined ratio is 0, never NaN. The operating-point sweep
(:func:`threshold_interval`), calibration error and the serving rule are sift's own.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from .decision import Decision

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")  # MLflow metric names allow only these


def confusion(y, pred, C: int) -> np.ndarray:
    """(C, C) int64 counts, cm[i, j] = items of true class i predicted j; sums to N."""
    y, pred = np.asarray(y, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    if y.shape != pred.shape:
        raise ValueError(f"y and pred differ in length: {y.shape[0]} vs {pred.shape[0]}")
    if y.size and (min(y.min(), pred.min()) < 0 or max(y.max(), pred.max()) >= C):
        raise ValueError(f"labels must lie in 0..{C - 1}")  # sklearn would silently drop them
    if not y.size:  # sklearn refuses empty input; no items is an all-zero matrix
        return np.zeros((C, C), np.int64)
    return confusion_matrix(y, pred, labels=np.arange(C)).astype(np.int64)


def _prf(cm) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1, support, each (C,), of a (C, C) confusion matrix; 0 where a
    ratio is 0/0. sklearn reads (true, predicted) pairs: each of the C*C cells is one pair weighted by
    its count, which gives the same sums as the N items without rebuilding them."""
    cm = np.asarray(cm, dtype=np.float64)
    C = len(cm)
    if not C or not cm.sum():  # sklearn needs at least one item; with none every ratio is 0
        zero = np.zeros(C)
        return zero, zero.copy(), zero.copy(), cm.sum(axis=1)
    true, pred = np.divmod(np.arange(C * C), C)
    p, r, f, _ = precision_recall_fscore_support(true, pred, labels=np.arange(C), sample_weight=cm.ravel(),
                                                 zero_division=0)
    return p, r, f, cm.sum(axis=1)


def per_class_prf(cm, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """{name: {precision, recall, f1, support}} per class; undefined ratios are 0, never NaN."""
    p, r, f, s = _prf(cm)
    return {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)}


def macro_f1(cm) -> float:
    """Unweighted mean of the C per-class F1 scores (every class counts, even one with no items)."""
    return float(_prf(cm)[2].mean()) if len(cm) else float("nan")


def threshold_interval(scores, y, pos_idx: int, neg_idx: int,
                       max_rate: float) -> tuple[float, float, float]:
    """Exact threshold sweep behind ``recall_at_rate``: (recall, lo, hi).

    Every threshold t in the half-open interval (lo, hi] flags (score >= t) the same items, and that set
    has the best positive recall with negative rate <= max_rate; among such sets it is the smallest
    (highest threshold), so it pays no extra negatives for no extra recall. lo = -inf when everything is
    flagged; hi = +inf when nothing is (recall 0). (nan, nan, nan) when either class has no items.
    """
    scores, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(y).ravel()
    is_pos, is_neg = y == pos_idx, y == neg_idx
    n_pos, n_neg = int(is_pos.sum()), int(is_neg.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan, math.nan, math.nan
    keep = is_pos | is_neg
    order = np.argsort(-scores[keep], kind="stable")
    s, pos = scores[keep][order], is_pos[keep][order]
    cum_pos, cum_neg = np.cumsum(pos), np.cumsum(~pos)
    # equal scores are flagged together: only the last index of a tie group is a reachable cut
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    ok = ends[cum_neg[ends] / n_neg <= max_rate]
    if ok.size == 0 or cum_pos[ok].max() == 0:
        return 0.0, float(s[0]), math.inf
    best = ok[np.argmax(cum_pos[ok])]  # argmax takes the first, i.e. highest-threshold, best group
    lo = float(s[best + 1]) if best + 1 < s.size else -math.inf
    return float(cum_pos[best] / n_pos), lo, float(s[best])


def recall_at_rate(scores, y, pos_idx: int, neg_idx: int, max_rate: float) -> tuple[float, float]:
    """Best recall of class pos_idx when flagging ``scores >= t`` with neg_idx flag rate <= max_rate.

    scores (N,) float, y (N,) int. Returns (recall, t). Exact: the sweep visits every distinct score, and
    items with equal scores are flagged together. t is the highest threshold reaching that recall; when
    nothing can be flagged, t is just above the highest score (possibly > 1). (nan, nan) when either
    class has no items. Items of other classes are ignored.
    """
    recall, lo, hi = threshold_interval(scores, y, pos_idx, neg_idx, max_rate)
    return recall, (float(np.nextafter(lo, np.inf)) if hi == math.inf else hi)


def recall_at_fpr(probs, y, pos_idx: int, neg_idx: int, max_rate: float) -> tuple[float, float]:
    """``recall_at_rate`` on the score P(pos) = probs[:, pos_idx]; e.g. BAD recall at GOOD->BAD <= x."""
    return recall_at_rate(np.asarray(probs)[:, pos_idx], y, pos_idx, neg_idx, max_rate)


def pr_curve(scores, is_pos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PR curve (precision, recall, thresholds), each (K,) over the K distinct scores, decreasing.

    Point k flags scores >= thresholds[k] (ties flagged together). Empty arrays when there is no
    positive item. sklearn's curve, highest threshold first, without the (recall 0, precision 1) end
    point it appends.
    """
    scores, is_pos = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(is_pos, dtype=bool).ravel()
    if not is_pos.any():
        return np.empty(0), np.empty(0), np.empty(0)
    precision, recall, thresholds = precision_recall_curve(is_pos.astype(np.int8), scores, pos_label=1)
    return precision[-2::-1], recall[-2::-1], thresholds[::-1]


def average_precision(scores, is_pos) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over the ``pr_curve`` points (sklearn's
    ``average_precision_score``); NaN without positives."""
    scores, is_pos = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(is_pos, dtype=bool).ravel()
    if not is_pos.any():
        return math.nan
    return float(average_precision_score(is_pos.astype(np.int8), scores, pos_label=1))


def reliability_bins(probs, y, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-label reliability diagram data: (mean confidence, accuracy, count), each (bins,).

    Confidence = max_c probs; bin m holds confidences in ((m-1)/bins, m/bins] (Guo et al. 2017, "On
    Calibration of Modern Neural Networks", sec. 2), confidence 0 going to the first bin. Empty bins
    have confidence and accuracy 0.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).ravel()
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    nz = np.maximum(count, 1.0)  # empty bins: 0 / 1
    return np.bincount(idx, conf, bins) / nz, np.bincount(idx, correct, bins) / nz, count


def ece(probs, y, bins: int = 15) -> float:
    """Expected calibration error, sum_m |B_m|/N |acc(B_m) - conf(B_m)| (Guo et al. 2017, eq. 3).

    Top-label, ``bins`` equal-width bins; NaN when N == 0.
    """
    conf, acc, count = reliability_bins(probs, y, bins)
    n = count.sum()
    return float(np.sum(count * np.abs(acc - conf)) / n) if n else math.nan


def predict_with_thresholds(probs, thresholds) -> np.ndarray:
    """The serving rule's labels (N,) for probs (N, C): ``thresholds`` is a ``train.decision.Decision``
    or plain per-class thresholds (C,) > 0. Plain thresholds are argmax_c probs[:, c] / thresholds[c]
    (ties to the lowest index; equal thresholds are plain argmax); a Decision adds its roles (guard,
    fallback). One implementation: ``train.decision.decide``."""
    return Decision.of(thresholds).predict(probs)


def _binary_f1(is_pos: np.ndarray, flagged: np.ndarray) -> float:
    """F1 of the positive side of (N,) bools; 0 when it is 0/0 (no positives, none flagged, or N == 0).
    ``labels=[1]``: the positive class's score whatever values the column holds (all False included)."""
    if not is_pos.size:  # sklearn refuses empty input
        return 0.0
    return float(precision_recall_fscore_support(is_pos.astype(np.int8), flagged.astype(np.int8), labels=[1],
                                                 average=None, zero_division=0)[2][0])


def tag_metrics(probs, targets, thresholds: Sequence[float], tags: Sequence[str]) -> dict[str, float]:
    """Multi-label metrics over annotated items: per tag f1 and ap (``tag_f1_<t>``, ``tag_ap_<t>``),
    their means ``tag_macro_f1`` / ``tag_map``, and ``tag_n`` items. probs, targets (N, T)."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets) > 0.5
    pred = probs >= np.asarray(thresholds, np.float64)
    out: dict[str, float] = {"tag_n": float(len(probs))}
    f1s, aps = [], []
    for j, t in enumerate(tags):
        f1 = _binary_f1(targets[:, j], pred[:, j])
        ap = average_precision(probs[:, j], targets[:, j])
        out[f"tag_f1_{metric_name(t)}"], out[f"tag_ap_{metric_name(t)}"] = f1, ap
        f1s.append(f1)
        aps.append(ap)
    out["tag_macro_f1"] = float(np.mean(f1s)) if f1s else math.nan
    out["tag_map"] = float(np.nanmean(aps)) if aps and not all(math.isnan(a) for a in aps) else math.nan
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..N-1 of x, ties sharing their average rank (as scipy's rankdata, minus one)."""
    r = np.empty(x.size)
    r[np.argsort(x, kind="mergesort")] = np.arange(x.size)
    _, inv = np.unique(x, return_inverse=True)
    return (np.bincount(inv, r) / np.bincount(inv))[inv]


def score_metrics(pred, target) -> dict[str, float]:
    """Regression metrics of a score head over items with a target: {score_mae, score_spearman,
    score_n}. pred, target (N,) in the same units; items whose target is NaN are left out. Spearman
    is the Pearson correlation of the ranks (ties averaged); NaN with fewer than 2 items or a
    constant side."""
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    has = np.isfinite(target) & np.isfinite(pred)
    pred, target = pred[has], target[has]
    out = {"score_n": float(has.sum()), "score_mae": float(np.abs(pred - target).mean()) if has.any() else math.nan,
           "score_spearman": math.nan}
    if pred.size >= 2:
        a, b = _ranks(pred), _ranks(target)
        a, b = a - a.mean(), b - b.mean()
        den = math.sqrt(float((a * a).sum() * (b * b).sum()))
        out["score_spearman"] = float((a * b).sum() / den) if den > 0 else math.nan
    return out


def metric_name(name: str) -> str:
    """A class name made safe for an MLflow metric key (other characters become '_')."""
    return _BAD_NAME_CHARS.sub("_", str(name))


def rate_tag(rate: float) -> str:
    """Rate as integer percent for metric keys: 0.05 -> '5', 0.005 -> '0p5', 0.025 -> '2p5'."""
    return f"{round(rate * 100, 6):g}".replace(".", "p")


def operating_point_key(positive: str, negative: str, rate: float) -> str:
    """'BAD_recall_at_GOOD2BAD_le_5' for ('BAD', 'GOOD', 0.05)."""
    pos, neg = metric_name(positive), metric_name(negative)
    return f"{pos}_recall_at_{neg}2{pos}_le_{rate_tag(rate)}"


def evaluate(probs, y, classes: Sequence[str], *, positive: str = "", negative: str = "",
             rates: Sequence[float] = (0.01, 0.02, 0.05), thresholds: Sequence[float] | None = None) -> dict:
    """Flat dict of float metrics for mlflow.log_metrics, plus "confusion" (C x C nested list of ints).

    Predictions are argmax, or the serving rule when ``thresholds`` (a Decision or per-class
    thresholds) are given; uncertain_rate is the share of items no class claimed. Keys (class names
    passed through ``metric_name``): accuracy, macro_f1, ece, n_<C> (items), precision_<C>, recall_<C>, f1_<C> and
    ap_<C> (one-vs-rest average precision of P(C), independent of the predictions) for each class
    and, when positive and negative are both in classes, <neg>2<pos>_rate (the realised rate of
    these predictions) and <pos>_recall_at_<neg>2<pos>_le_<pct> per rate (the best recall of a sweep
    on P(positive), independent of the predictions). NaN where undefined (no items of a class).
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.int64).ravel()
    C = len(classes)
    if probs.ndim != 2 or probs.shape != (y.size, C):
        raise ValueError(f"probs must be (N, C) = ({y.size}, {C}), got {probs.shape}")
    if thresholds is None:
        pred, sure = np.argmax(probs, axis=1), np.ones(y.size, bool)
    else:
        pred, sure = Decision.of(thresholds).labels(probs)
    cm = confusion(y, pred, C)
    n = int(cm.sum())
    out: dict = {"accuracy": float(np.trace(cm) / n) if n else math.nan,
                 "macro_f1": macro_f1(cm), "ece": ece(probs, y),
                 "uncertain_rate": float((~sure).mean()) if n else math.nan}
    p, r, f, support = _prf(cm)
    for i, c in enumerate(classes):
        name = metric_name(c)
        out.update({f"n_{name}": float(support[i]), f"precision_{name}": float(p[i]), f"recall_{name}": float(r[i]),
                    f"f1_{name}": float(f[i]), f"ap_{name}": average_precision(probs[:, i], y == i)})
    if positive in classes and negative in classes:
        pi, ni = list(classes).index(positive), list(classes).index(negative)
        n_neg = cm[ni].sum()
        out[f"{metric_name(negative)}2{metric_name(positive)}_rate"] = (
            float(cm[ni, pi] / n_neg) if n_neg else math.nan)
        for rate in rates:
            out[operating_point_key(positive, negative, rate)] = recall_at_fpr(probs, y, pi, ni, rate)[0]
    out["confusion"] = cm.tolist()
    return out
