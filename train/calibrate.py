"""Post-hoc calibration and operating-point selection on validation data.

* Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", sec. 4.2): one scalar
  T > 0 divides the logits; it is fitted by minimising the validation NLL of softmax(logits / T). It
  never changes the argmax, only the confidence, so accuracy is untouched and ECE usually drops a lot.
* Per-class thresholds for ``metrics.predict_with_thresholds`` (the serving rule). With a worst
  mistake (true ``negative`` predicted ``positive``, e.g. GOOD -> BAD) they keep it at or under a
  rate (:func:`choose_thresholds`); without one they maximise validation macro-F1
  (:func:`macro_f1_thresholds`): one threshold for a binary task, one per class otherwise.

Shapes: logits (N, C) raw scores (numpy array or torch tensor); y (N,) int labels; probs (N, C).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from train.metrics import confusion, macro_f1, predict_with_thresholds, rival_share, threshold_interval

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TINY = float(np.finfo(np.float64).tiny)


def _numpy(x, dtype) -> np.ndarray:
    """A numpy copy of an array or a (possibly CUDA, possibly grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)  # shift for stability; log-softmax is shift-invariant
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits, y, T: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T) at the labels y (float64); NaN when N == 0."""
    z, y = _numpy(logits, np.float64), _numpy(y, np.int64).ravel()
    if z.shape[0] == 0:
        return math.nan
    return float(-_log_softmax(z / T)[np.arange(y.size), y].mean())


def fit_temperature(logits, y, max_iter: int = 200, bounds: tuple[float, float] = (1e-2, 1e2)) -> float:
    """Temperature T in ``bounds`` minimising nll(logits, y, T); 1.0 when N == 0.

    The NLL is convex in 1/T (a log-sum-exp of functions linear in 1/T minus a linear term), hence
    unimodal in log T, so a golden-section search over log T finds the minimum without the step-size
    tuning or divergence risk of LBFGS (Guo et al. fit T with LBFGS; the optimum is the same). Stops
    after ``max_iter`` steps or when the bracket is narrower than 1e-7 in log T. Returns 1.0 unless the
    fitted T has a strictly lower NLL than T = 1, so calibration can never make the NLL worse.
    """
    z, y = _numpy(logits, np.float64), _numpy(y, np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"logits must be (N, C) with N = len(y) = {y.size}, got {z.shape}")
    if z.shape[0] == 0:
        return 1.0
    f = lambda u: nll(z, y, math.exp(u))  # noqa: E731  (u = log T)
    a, b = math.log(bounds[0]), math.log(bounds[1])
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max_iter):
        if b - a < 1e-7:
            break
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:  # the minimum lies in [c, b]
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    T = math.exp((a + b) / 2)
    return T if f(math.log(T)) < f(0.0) else 1.0


def apply_temperature(logits, T: float) -> np.ndarray:
    """softmax(logits / T) as a float64 numpy (N, C) array; rows sum to 1."""
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    return np.exp(_log_softmax(_numpy(logits, np.float64) / T))


def _tau_from_interval(lo: float, hi: float) -> float:
    """A threshold strictly inside (lo, hi], the interval of equivalent thresholds from the sweep.

    The midpoint keeps a margin on both sides, so float rounding in the serving rule cannot flip the
    validation items next to the cut, and new items are split halfway between the last one flagged and
    the first one not flagged rather than right on a validation score.
    """
    if hi == math.inf:  # nothing may be flagged: go above every score
        return min(1.0, (lo + 1.0) / 2.0) if lo < 1.0 else 1.0
    if lo == -math.inf:  # everything is flagged
        return hi
    return (lo + hi) / 2.0


def _macro_f1_of(probs: np.ndarray, y: np.ndarray, t: np.ndarray) -> float:
    return macro_f1(confusion(y, predict_with_thresholds(probs, t), probs.shape[1]))


def _cuts(score: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact sweep of "flag when score >= t": per cut k = 0..K (k flags the first k groups of
    equal scores, highest first) the flagged positives tp, flagged negatives fp and its threshold,
    halfway between the last flagged and the first unflagged score (``_tau_from_interval``)."""
    order = np.argsort(-score, kind="stable")
    s, pos = score[order], pos[order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # ties flagged together
    tp = np.r_[0, np.cumsum(pos)[ends]].astype(np.float64)
    fp = np.r_[0, np.cumsum(~pos)[ends]].astype(np.float64)
    hi = np.r_[np.inf, s[ends]]  # cut k: thresholds in (first unflagged score, last flagged score]
    lo = np.r_[s[0], s[ends[:-1] + 1], -np.inf]
    return tp, fp, np.array([_tau_from_interval(a, b) for a, b in zip(lo, hi)])


def _f1(tp, fp, fn) -> np.ndarray:
    return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)


def _best_tau(values: np.ndarray, taus: np.ndarray) -> float:
    """The threshold of the best cut; among equally good ones the closest to 0.5 (plain argmax)."""
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return min(max(float(taus[best[np.argmin(np.abs(taus[best] - 0.5))]]), _TINY), 1.0)


def _binary_macro_f1_threshold(score: np.ndarray, is0: np.ndarray) -> list[float]:
    """(tau, 1 - tau): the exact macro-F1 sweep over cuts "predict class 0 when score >= tau"."""
    tp0, fp0, taus = _cuts(score, is0)
    fn0, tp1 = is0.sum() - tp0, (~is0).sum() - fp0  # class 1 is predicted for every item not flagged
    tau = _best_tau((_f1(tp0, fp0, fn0) + _f1(tp1, fn0, fp0)) / 2.0, taus)
    return [tau, max(1.0 - tau, _TINY)]


def macro_f1_thresholds(probs, y, *, rounds: int = 3, grid=np.geomspace(0.25, 4.0, 25)) -> list[float]:
    """Thresholds (C values summing to 1) maximising validation macro-F1 under the serving rule.

    Binary (C = 2): one threshold tau on P(class 0), thresholds (tau, 1 - tau), so class 0 is
    predicted exactly when P(class 0) >= tau. The sweep is exact over the midpoints between
    consecutive distinct scores; among equally good taus the one closest to 0.5 (plain argmax) wins.
    C > 2: coordinate ascent from equal thresholds (plain argmax): each round scales one class's
    threshold by every factor in ``grid`` in turn and keeps a change only when macro-F1 strictly
    rises, so a validation set that cannot tell thresholds apart leaves plain argmax. Equal
    thresholds when N == 0.
    """
    probs, y = _numpy(probs, np.float64), _numpy(y, np.int64).ravel()
    C = probs.shape[1]
    if y.size == 0 or C < 2:
        return [1.0 / max(C, 1)] * C
    if C == 2:
        return _binary_macro_f1_threshold(probs[:, 0], y == 0)
    t = np.full(C, 1.0 / C)
    score = _macro_f1_of(probs, y, t)
    for _ in range(rounds):
        moved = False
        for c in range(C):
            for g in grid:
                cand = t.copy()
                cand[c] *= g
                f = _macro_f1_of(probs, y, cand)
                if f > score + 1e-12:
                    t, score, moved = cand, f, True
        if not moved:
            break
    return (t / t.sum()).tolist()


def tag_thresholds(probs, targets) -> list[float]:
    """Per-tag thresholds (T values in (0, 1]): tag t is predicted when P(t) >= thresholds[t].

    probs, targets (N, T) (targets 0/1). Each tag's threshold maximises its validation F1 over every
    distinct score (the exact sweep), placed halfway to the next lower score; 0.5 for a tag with no
    positive item, and among equally good thresholds the one closest to 0.5.
    """
    probs, targets = _numpy(probs, np.float64), _numpy(targets, np.float64) > 0.5
    out = []
    for t in range(probs.shape[1]):
        pos = targets[:, t]
        if not pos.any():
            out.append(0.5)
            continue
        tp, fp, taus = _cuts(probs[:, t], pos)
        out.append(_best_tau(_f1(tp, fp, pos.sum() - tp), taus))
    return out


def choose_thresholds(probs, y, classes: Sequence[str], *, positive: str = "", negative: str = "",
                      max_rate: float = 0.05) -> list[float]:
    """Per-class thresholds (C values in (0, 1]) for ``metrics.predict_with_thresholds``.

    Rule (the one used at serving): pred = argmax_c probs_c / t_c. We return t_positive = tau and
    t_c = 1 - tau for every other class, so the other classes keep plain argmax among themselves and the
    positive class is predicted exactly when s = P(pos) / (P(pos) + P(best rival)) >= tau
    (``metrics.rival_share``; s = P(pos) for two classes, so tau is then a plain probability threshold).
    tau is picked by the exact sweep of ``metrics.recall_at_rate`` on s: the best recall of the positive
    class with (negative items predicted positive) / (negative items) <= max_rate, placed halfway
    between the last flagged and the first unflagged validation score. Hence predicting these
    validation items with the returned thresholds respects max_rate (unless some negative item has
    P(pos) = 1 exactly, which no threshold can exclude). tau = 0.5 (plain argmax) when either class has
    no items. Items of other classes do not enter the constraint.

    Without a worst mistake (``positive`` empty) the thresholds are :func:`macro_f1_thresholds`.
    """
    classes = list(classes)
    if not positive:
        return macro_f1_thresholds(probs, y)
    for name in (positive, negative):
        if name not in classes:
            raise ValueError(f"class {name!r} not in classes {classes}")
    pi, ni = classes.index(positive), classes.index(negative)
    probs, y = _numpy(probs, np.float64), _numpy(y, np.int64).ravel()
    recall, lo, hi = threshold_interval(rival_share(probs, pi), y, pi, ni, max_rate)
    tau = 0.5 if math.isnan(recall) else _tau_from_interval(lo, hi)
    tau = min(max(tau, _TINY), 1.0)
    # 1 - tau can round to 0 when tau = 1: keep it > 0 so the rule's division stays defined.
    return [tau if c == pi else max(1.0 - tau, _TINY) for c in range(len(classes))]
