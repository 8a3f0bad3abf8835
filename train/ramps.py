"""Schedules for ramping a weight (consistency strength, learning rate) up or down.

Modelled on the mean-teacher reference ``ramps.py`` (Tarvainen & Valpola 2017, "Mean teachers are
better role models"). Each function takes the current step (or epoch) and a ramp length in the same
unit and returns a plain Python float multiplier in [0, 1]. The trainer multiplies its base value by it.
"""
from __future__ import annotations

import math


def _check_length(name: str, length: float) -> None:
    if length < 0:
        raise ValueError(f"{name} must be >= 0, got {length}")


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(current / rampup_length, 0, 1); 1.0 when rampup_length is 0.

    The "sigmoid-shaped" ramp of Laine & Aila 2017 (temporal ensembling), used by mean teacher for the
    consistency weight: it starts at exp(-5) ~ 0.007, not 0, and stays small for the first ~third of the
    ramp, so the student is not pulled towards a teacher that has not learned anything yet.
    """
    _check_length("rampup_length", rampup_length)
    if rampup_length == 0:
        return 1.0
    t = min(max(current, 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(current: float, rampup_length: float) -> float:
    """current / rampup_length, clipped to [0, 1]; 1.0 when rampup_length is 0 (learning-rate warm-up)."""
    _check_length("rampup_length", rampup_length)
    if rampup_length == 0 or current >= rampup_length:
        return 1.0
    return float(max(current, 0.0) / rampup_length)


def cosine_rampdown(current: float, rampdown_length: float) -> float:
    """0.5 (cos(pi t) + 1) with t = clip(current / rampdown_length, 0, 1): 1.0 at 0, 0.0 at the end.

    Cosine annealing (Loshchilov & Hutter 2017, SGDR), as in the reference. The reference asserts
    0 <= current <= rampdown_length; we clip instead, so a trainer that runs a step past the end gets 0.0
    rather than a crash. A length of 0 raises: it would silently zero the learning rate from step 0.
    """
    if rampdown_length <= 0:
        raise ValueError(f"rampdown_length must be > 0, got {rampdown_length}")
    t = min(max(current, 0.0), rampdown_length) / rampdown_length
    return float(0.5 * (math.cos(math.pi * t) + 1.0))
