"""How a noisy pool is really mixed, estimated from held-out predictions, beside the user's prior.

A noisy pool (e.g. the NEUTRAL folder: "65% NEUTRAL, 30% BAD, 5% GOOD") is trained towards the
user's prior. After a run, its items in val and test (never trained on) tell how it is mixed:

* ``confident``: confident learning (Northcutt et al. 2021, "Confident Learning: Estimating
  Uncertainty in Dataset Labels", sec. 2.1). Each class j gets a threshold t_j, the model's mean
  P(j) over the clean held-out items of class j (its self-confidence); a pool item counts for the
  class j with the largest P(j) among those with P(j) >= t_j, and items above no threshold are not
  counted. The counts, normalised, are the estimate.
* ``mean``: the mean calibrated probability over the pool's items (unbiased when calibration holds);
  the fallback when no item passes a threshold or a class has no clean held-out item.

Shapes: probs (N, C) calibrated probabilities; y (N,) int labels of the clean items.
"""
from __future__ import annotations

import numpy as np


def self_confidence(probs: np.ndarray, y: np.ndarray, C: int) -> np.ndarray:
    """(C,) t_j = mean P(j) over the clean items of class j; NaN for a class without items."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y).ravel()
    return np.array([probs[y == j, j].mean() if np.any(y == j) else np.nan for j in range(C)])


def confident_mix(pool_probs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, int]:
    """(mix (C,) summing to 1, items counted) by confident learning's counting rule; the mix is NaN
    when no item reaches a threshold."""
    p = np.asarray(pool_probs, np.float64)
    t = np.nan_to_num(np.asarray(thresholds, np.float64), nan=np.inf)  # a class without clean items is never counted
    above = p >= t
    counted = above.any(axis=1)
    j = np.where(above, p, -np.inf).argmax(axis=1)[counted]
    counts = np.bincount(j, minlength=p.shape[1]).astype(np.float64)
    n = int(counted.sum())
    return (counts / n if n else np.full(p.shape[1], np.nan)), n


def estimate(pool_probs, clean_probs, clean_y, classes: list[str], prior: list[float], tol: float = 0.15) -> dict:
    """The pool's estimated mix next to the prior: {n, counted, method, estimate {class: p}, prior,
    distance (total variation between them), suggestion (a noisy_pools value, or "" when within
    ``tol``)}."""
    C = len(classes)
    pool_probs = np.asarray(pool_probs, np.float64).reshape(-1, C)
    t = self_confidence(clean_probs, clean_y, C)
    mix, counted = confident_mix(pool_probs, t)
    method = "confident"
    if not np.all(np.isfinite(mix)) or np.isnan(t).any():
        mix, method = pool_probs.mean(axis=0) if len(pool_probs) else np.full(C, np.nan), "mean"
    prior = np.asarray(prior, np.float64)
    dist = float(0.5 * np.abs(mix - prior).sum()) if np.all(np.isfinite(mix)) else float("nan")
    out = {"n": int(len(pool_probs)), "counted": counted, "method": method,
           "estimate": {c: round(float(v), 4) for c, v in zip(classes, mix)},
           "prior": {c: round(float(v), 6) for c, v in zip(classes, prior)}, "distance": round(dist, 4), "suggestion": ""}
    if dist > tol:
        parts = ", ".join(f"{c}: {v:.2f}" for c, v in zip(classes, np.round(mix / mix.sum(), 2)) if v >= 0.005)
        out["suggestion"] = f"{{{parts}}}"
    return out
