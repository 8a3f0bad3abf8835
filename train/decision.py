"""The decision rule: calibrated probabilities -> one label per item, and whether it is sure.

    probs (N, C) --p_c >= t_c--> passes (N, C) --guard--> argmax_c p_c / t_c over the classes that pass
                                      \\-- no class passes --> the fallback class (e.g. NEUTRAL), uncertain

Every class has its own threshold t_c, chosen on clean validation labels (``train.calibrate``). A
class is a candidate only when its probability reaches its threshold; among candidates the one
furthest above its threshold (p / t) wins. Two rules keep a filter from promoting the opposite
extreme on a lower probability:

* **the guard**: with a worst mistake (``positive`` = BAD, ``negative`` = GOOD) the negative class is
  never a candidate while the positive is more probable. BAD 0.78 / NEUTRAL 0.07 / GOOD 0.15 with
  t_BAD = 0.85 is not GOOD: BAD missed its threshold, GOOD is guarded out.
* **no candidate, no guess**: the item goes to the ``fallback`` class (NEUTRAL by default) and is
  reported uncertain. Without a fallback class it gets the best of the remaining classes, never the
  positive below its threshold (that would break its operating point), and the negative over a more
  probable positive only when nothing else is left (a binary task: the operating point decides).

Equal thresholds t_c = 1/C are plain argmax (the argmax class always reaches 1/C), so an artifact
without a tuned operating point behaves as it always did. The rule is the artifact's: serving, batch
prediction, scans and ``sift classify`` all call :meth:`Decision.predict`; the operating point can
be moved at serve time (:meth:`Decision.override`) from the validation curve the artifact carries,
without retraining.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from flows.core.config import knob


def decide(probs, thresholds: Sequence[float], *, fallback: int | None = None, positive: int | None = None,
           negative: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """probs (N, C), thresholds (C,) in (0, 1] -> (labels (N,) int, sure (N,) bool).

    ``sure`` is False where no class reached its threshold (the label is then the fallback or the
    best remaining class). Ties go to the lowest class index. Pure numpy, no state.
    """
    p, t = np.asarray(probs, dtype=np.float64), np.asarray(thresholds, dtype=np.float64)
    if p.ndim != 2 or t.shape != p.shape[1:]:
        raise ValueError(f"need {p.shape[-1] if p.ndim else '?'} thresholds for probs of shape {p.shape}, "
                         f"got shape {t.shape}")
    if not np.all(t > 0):
        raise ValueError(f"thresholds must be > 0, got {t.tolist()}")
    ratio = p / t
    ok = p >= t
    guarded = np.zeros(len(p), bool)
    if positive is not None and negative is not None:
        guarded = p[:, negative] < p[:, positive]
        ok[:, negative] &= ~guarded
    sure = ok.any(axis=1)
    pred = np.where(ok, ratio, -np.inf).argmax(axis=1)
    if sure.all():
        return pred, sure
    if fallback is not None:
        pred[~sure] = fallback
        return pred, sure
    cand = np.ones_like(ok)
    if positive is not None and p.shape[1] > 1:
        cand[:, positive] = False  # never the positive below its own threshold
    if negative is not None and positive is not None:
        others = cand.copy()
        others[:, negative] = False
        cand[:, negative] &= ~(guarded & others.any(axis=1))
    pred[~sure] = np.where(cand, ratio, -np.inf).argmax(axis=1)[~sure]
    return pred, sure


def tau_at_rate(curve: Mapping[str, Sequence[float]], max_rate: float) -> float:
    """The positive's threshold for a target negative->positive rate, from a validation sweep.

    ``curve``: {"tau", "recall", "rate"}, one entry per cut of the sweep, highest threshold first
    (``train.calibrate.operating_curve``). Returns the threshold of the cut with the best recall whose
    rate is <= max_rate; among equal recalls the highest threshold (no extra negatives for no extra
    recall). With no usable cut, the first one (nothing flagged on validation).
    """
    tau, recall, rate = (np.asarray(curve[k], dtype=np.float64) for k in ("tau", "recall", "rate"))
    if tau.size == 0:
        raise ValueError("the operating curve is empty")
    ok = np.flatnonzero(rate <= max_rate + 1e-12)
    if ok.size == 0:
        return float(tau[0])
    return float(tau[ok[np.argmax(recall[ok])]])  # argmax takes the first: the highest threshold


@dataclasses.dataclass(frozen=True)
class Decision:
    """An operating point: per-class thresholds and the rule's roles (class indices or None).

    ``curve`` is the validation sweep of the positive class (see :func:`tau_at_rate`), kept so the
    operating point can be moved to another rate without the validation data."""
    thresholds: tuple[float, ...]
    fallback: int | None = None
    positive: int | None = None
    negative: int | None = None
    curve: Mapping[str, tuple[float, ...]] | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def of(cls, value) -> "Decision":
        """A Decision as given, or plain thresholds (C,) as a rule without roles."""
        return value if isinstance(value, Decision) else cls(tuple(float(t) for t in value))

    @classmethod
    def from_meta(cls, classes: Sequence[str], thresholds: Sequence[float], decision: Mapping | None) -> "Decision":
        """From an artifact's ``classes``, ``thresholds`` and ``decision`` record (older records lack the
        roles: a worst mistake then only names its positive and negative)."""
        d, idx = dict(decision or {}), {c: i for i, c in enumerate(classes)}
        curve = d.get("curve")
        return cls(tuple(float(t) for t in thresholds), idx.get(d.get("fallback")), idx.get(d.get("positive")),
                   idx.get(d.get("negative")),
                   {k: tuple(map(float, v)) for k, v in curve.items()} if curve else None)

    def predict(self, probs) -> np.ndarray:
        """probs (N, C) -> labels (N,) int."""
        return self.labels(probs)[0]

    def labels(self, probs) -> tuple[np.ndarray, np.ndarray]:
        """probs (N, C) -> (labels (N,) int, sure (N,) bool); see :func:`decide`."""
        return decide(probs, self.thresholds, fallback=self.fallback, positive=self.positive,
                      negative=self.negative)

    def override(self, classes: Sequence[str], *, thresholds: Mapping[str, float] | None = None,
                 max_rate: float | None = None, fallback: str | None = None) -> "Decision":
        """This operating point moved at serve time, without retraining.

        ``max_rate``: the positive's threshold for this negative->positive rate, read off the
        validation curve; ``thresholds``: {class: t} set directly (applied after max_rate);
        ``fallback``: a class name, or "none" for no fallback. ValueError names what is wrong.
        """
        classes = list(classes)
        canon = {c.lower(): i for i, c in enumerate(classes)}
        t = list(self.thresholds)
        if max_rate is not None:
            if self.positive is None or not self.curve:
                raise ValueError("max_rate needs a model trained with a worst mistake (positive/negative); "
                                 "this one has none: set thresholds per class instead")
            if not 0.0 <= max_rate <= 1.0:
                raise ValueError(f"max_rate={max_rate} must be within [0, 1]")
            t[self.positive] = tau_at_rate(self.curve, max_rate)
            if len(classes) == 2:  # binary: the other class takes exactly what the positive leaves
                t[1 - self.positive] = max(1.0 - t[self.positive], float(np.finfo(np.float64).tiny))
        for name, value in (thresholds or {}).items():
            if name.lower() not in canon:
                raise ValueError(f"threshold_{name}: {name!r} is not a class of this model; classes: {classes}")
            if not (isinstance(value, (int, float)) and 0.0 < float(value) <= 1.0) or math.isnan(float(value)):
                raise ValueError(f"threshold_{name}={value!r} must be a probability in (0, 1]")
            t[canon[name.lower()]] = float(value)
        fb = self.fallback
        if fallback is not None and fallback != "":
            if fallback.lower() == "none":
                fb = None
            elif fallback.lower() in canon:
                fb = canon[fallback.lower()]
            else:
                raise ValueError(f"fallback={fallback!r} is not a class of this model; classes: {classes}")
        return dataclasses.replace(self, thresholds=tuple(t), fallback=fb)

    def describe(self, classes: Sequence[str]) -> dict:
        """The operating point for people and /readyz: {thresholds: {class: t}, fallback, positive, negative}."""
        name = lambda i: classes[i] if i is not None else None
        return {"thresholds": dict(zip(classes, self.thresholds)), "fallback": name(self.fallback),
                "positive": name(self.positive), "negative": name(self.negative)}


@dataclasses.dataclass(frozen=True)
class OperatingPointKnobs:
    """The serve-time operating point, shared by ``sift serve``, ``scan``, ``predict`` and ``classify``
    configs (a base class, so each default is written once): empty/-1 keep the artifact's."""
    thresholds: dict[str, float] = dataclasses.field(
        default_factory=dict, metadata={"prefix": "threshold_", "help": "per-class thresholds, e.g. "
                                        "threshold_BAD=0.6 (empty: the artifact's)"})
    max_rate: float = knob(-1.0, lo=-1.0, hi=1.0, help="target negative->positive rate (e.g. GOOD->BAD 0.01), "
                           "read off the validation curve in the artifact; -1: the artifact's")
    fallback: str = knob("", help="class of items no class claims, or none (empty: the artifact's)")

    def operating_point(self) -> dict:
        """Keyword arguments of ``SiftModel.operating_point``."""
        return {"thresholds": dict(self.thresholds) or None,
                "max_rate": self.max_rate if self.max_rate >= 0 else None, "fallback": self.fallback or None}


__all__ = ["decide", "tau_at_rate", "Decision", "OperatingPointKnobs"]
