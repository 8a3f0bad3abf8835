"""Post-hoc calibration and operating-point selection on validation data.

* Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", sec. 4.2): one scalar
  T > 0 divides the logits; it is fitted by minimising the validation NLL of softmax(logits / T). It
  never changes the argmax, only the confidence, so accuracy is untouched and ECE usually drops a lot.
* The operating point (``train.decision.Decision``: per-class thresholds and the rule's roles, the
  serving rule). With a worst mistake (true ``negative`` predicted ``positive``, e.g. GOOD -> BAD) the
  positive's threshold keeps it at or under a rate and the rest maximise macro-F1
  (:func:`choose_decision`); without one they all maximise validation macro-F1
  (:func:`macro_f1_thresholds`): one threshold for a binary task, one per class otherwise.

Shapes: logits (N, C) raw scores (numpy array or torch tensor); y (N,) int labels; probs (N, C).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from train.decision import Decision, decide, tau_at_rate
from train.metrics import confusion, macro_f1

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
    f = lambda u: nll(z, y, math.exp(u))  # (u = log T)
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


def macro_f1_thresholds(probs, y, *, rounds: int = 3, grid=np.geomspace(0.25, 4.0, 25), fallback: int | None = None,
                        positive: int | None = None, negative: int | None = None,
                        fixed: dict[int, float] | None = None) -> list[float]:
    """Thresholds (C values in (0, 1]) maximising validation macro-F1 under the serving rule
    (``train.decision.decide`` with these roles).

    Binary (C = 2) without roles: one threshold tau on P(class 0), thresholds (tau, 1 - tau), so class 0
    is predicted exactly when P(class 0) >= tau. The sweep is exact over the midpoints between
    consecutive distinct scores; among equally good taus the one closest to 0.5 (plain argmax) wins.
    Otherwise coordinate ascent from equal thresholds 1/C (plain argmax), ``fixed`` {class: t} held:
    each round scales one free class's threshold by every factor in ``grid`` in turn (capped at 1) and
    keeps a change only when macro-F1 strictly rises, so a validation set that cannot tell thresholds
    apart leaves plain argmax. Equal thresholds when N == 0 or some class has no item. Without roles only the ratios matter and
    the result is normalised to sum to 1.
    """
    probs, y = _numpy(probs, np.float64), _numpy(y, np.int64).ravel()
    C, fixed = probs.shape[1], dict(fixed or {})
    roles = fallback is not None or positive is not None
    t = np.full(C, 1.0 / max(C, 1))
    for c, v in fixed.items():
        t[c] = v
    if y.size == 0 or C < 2 or not all((y == c).any() for c in range(C)):
        # a class without validation items (e.g. one labeled only through a noisy pool): macro-F1 here
        # cannot see what moving a threshold costs it, so every free threshold stays at plain argmax
        return t.tolist()
    if C == 2 and not roles and not fixed:
        return _binary_macro_f1_threshold(probs[:, 0], y == 0)
    def f1_of(th: np.ndarray) -> float:
        pred = decide(probs, th, fallback=fallback, positive=positive, negative=negative)[0]
        return macro_f1(confusion(y, pred, C))

    score = f1_of(t)
    free = [c for c in range(C) if c not in fixed]
    for _ in range(rounds):
        moved = False
        for c in free:
            for g in grid:
                cand = t.copy()
                cand[c] = min(cand[c] * g, 1.0)
                f = f1_of(cand)
                if f > score + 1e-12:
                    t, score, moved = cand, f, True
        if not moved:
            break
    return (t / t.sum()).tolist() if not roles and not fixed else t.tolist()


def operating_curve(probs, y, pos: int, neg: int) -> dict[str, list[float]] | None:
    """The exact validation sweep of "flag the positive when P(pos) >= tau" over the items of the
    positive and negative classes: {"tau", "recall", "rate"} per cut, highest threshold first
    (``train.decision.tau_at_rate`` reads it), plus n_pos / n_neg, the items it rests on. None when
    either class has no item."""
    probs, y = _numpy(probs, np.float64), _numpy(y, np.int64).ravel()
    keep = (y == pos) | (y == neg)
    n_pos, n_neg = int((y == pos).sum()), int((y == neg).sum())
    if not n_pos or not n_neg:
        return None
    tp, fp, taus = _cuts(probs[keep, pos], y[keep] == pos)
    return {"tau": [min(max(float(t), _TINY), 1.0) for t in taus], "recall": (tp / n_pos).tolist(),
            "rate": (fp / n_neg).tolist(), "n_pos": n_pos, "n_neg": n_neg}


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


def min_negatives(max_rate: float) -> int:
    """Negative validation items an operating point at ``max_rate`` needs: enough that two false
    alarms fit under the rate (40 at 5%, 200 at 1% or below). With fewer, the rate cannot be measured:
    one item decides it, and the threshold lands above every negative seen."""
    return math.ceil(2.0 / max(max_rate, 0.01))


def choose_decision(probs, y, classes: Sequence[str], *, positive: str = "", negative: str = "",
                    max_rate: float = 0.05, fallback: str = "", min_neg: int | None = None) -> Decision:
    """The operating point (``train.decision.Decision``) chosen on validation items (clean labels only:
    the caller leaves noisy-pool items out).

    With a worst mistake (true ``negative`` predicted ``positive``): the positive's threshold tau is
    the best-recall cut of :func:`operating_curve` with (negative items flagged) / (negative items) <=
    max_rate, halfway between the last flagged and the first unflagged validation score, so these
    validation items predicted with the result respect max_rate (unless a negative item has P(pos) = 1
    exactly). Binary: the other class gets 1 - tau (it takes what the positive leaves). More classes:
    the negative is guarded (never over a more probable positive), items no class claims go to
    ``fallback``, and the other thresholds maximise macro-F1 with tau held (:func:`macro_f1_thresholds`).
    Plain argmax (thresholds 1/C, the guard kept) when the positive or the negative has no validation
    item; the positive's threshold too when the negative has fewer than ``min_neg`` (default
    :func:`min_negatives`) items, since the rate cannot be measured on so few (the curve still travels in
    the artifact, for ``max_rate`` at serve time); the others stay at 1/C when some class has no
    validation item.

    Without a worst mistake (``positive`` empty): :func:`macro_f1_thresholds` with the fallback.
    """
    classes = list(classes)
    for name in (positive, negative, fallback):
        if name and name not in classes:
            raise ValueError(f"class {name!r} not in classes {classes}")
    probs, y = _numpy(probs, np.float64), _numpy(y, np.int64).ravel()
    C = len(classes)
    fi = classes.index(fallback) if fallback else None
    if not positive:
        return Decision(tuple(macro_f1_thresholds(probs, y, fallback=fi)), fi)
    pi, ni = classes.index(positive), classes.index(negative)
    curve = operating_curve(probs, y, pi, ni)
    if curve is None:  # the worst mistake cannot be measured here: plain argmax, guard kept
        return Decision(tuple([1.0 / C] * C), fi if C > 2 else None, pi, ni)
    curve_t = {k: tuple(curve[k]) for k in ("tau", "recall", "rate")}
    enough = curve["n_neg"] >= (min_negatives(max_rate) if min_neg is None else min_neg)
    tau = tau_at_rate(curve, max_rate) if enough else 1.0 / C
    if C == 2:
        t = [0.0, 0.0]
        t[pi], t[ni] = tau, max(1.0 - tau, _TINY)  # 1 - tau can round to 0 when tau = 1
        return Decision(tuple(t), None, pi, ni, curve_t)
    t = macro_f1_thresholds(probs, y, fallback=fi, positive=pi, negative=ni, fixed={pi: tau})
    return Decision(tuple(t), fi, pi, ni, curve_t)


def choose_thresholds(probs, y, classes: Sequence[str], **kw) -> list[float]:
    """The thresholds of :func:`choose_decision` (same arguments)."""
    return list(choose_decision(probs, y, classes, **kw).thresholds)
