"""Model selection criteria: the one number per epoch that picks the best weights and that
``sift promote`` compares (``val_selection``), named in the config as ``selection``.

Forms (class names case-insensitive): ``accuracy``, ``macro_f1``, ``precision:GOOD`` (also
``recall:``, ``f1:``) and the worst-mistake operating point ``<POS>_recall@<NEG>2<POS><=<rate>``
(e.g. ``bad_recall@good2bad<=0.05``), each reading a key of ``train.metrics.evaluate``.
"""
from __future__ import annotations

import math
import re

from .metrics import metric_name, operating_point_key


def report_rates(cfg) -> tuple[float, ...]:
    """The negative->positive rates whose operating points are logged: 1/2/5% and the run's own
    ``threshold_rate`` (which ``selection=auto`` selects on)."""
    return tuple(sorted({0.01, 0.02, 0.05, cfg.threshold_rate}))

_CRITERIA_HELP = ("accepted criteria: 'accuracy', 'macro_f1', '<metric>:<CLASS>' with metric in "
                  "precision/recall/f1 (e.g. 'precision:GOOD'), and '<POS>_recall@<NEG>2<POS><=<rate>' "
                  "(e.g. 'bad_recall@good2bad<=0.05')")


def _lookup(metrics: dict, key: str, criterion: str) -> float:
    by_lower = {k.lower(): k for k in metrics if k != "confusion"}
    if key.lower() not in by_lower:
        raise ValueError(f"criterion {criterion!r} needs metric {key!r}, which evaluate() did not "
                         f"produce; available: {sorted(by_lower.values())}")
    value = float(metrics[by_lower[key.lower()]])
    return -math.inf if math.isnan(value) else value


def parse_criterion(criterion: str) -> tuple[str, tuple[str, ...]]:
    """A selection criterion -> (the ``evaluate`` key it reads, the class names it names).

    Forms (class names case-insensitive): 'accuracy', 'macro_f1', 'precision:GOOD' (also recall:, f1:),
    'bad_recall@good2bad<=0.05' -> ('BAD_recall_at_GOOD2BAD_le_5' spelled as written, ('bad', 'good')).
    ValueError for an unknown form.
    """
    crit = criterion.strip()
    if crit.lower() in ("accuracy", "macro_f1"):
        return crit.lower(), ()
    m = re.fullmatch(r"(precision|recall|f1)\s*:\s*(\S.*)", crit, flags=re.IGNORECASE)
    if m:
        return f"{m[1].lower()}_{metric_name(m[2].strip())}", (m[2].strip(),)
    m = re.fullmatch(r"(.+?)_recall@(.+)<=\s*([0-9.eE+-]+)", crit, flags=re.IGNORECASE)
    if m:
        pos, neg2pos = m[1].strip(), m[2].strip()
        if neg2pos.lower().endswith("2" + pos.lower()) and len(neg2pos) > len(pos) + 1:
            neg = neg2pos[: -len(pos) - 1]
            try:
                rate = float(m[3])
            except ValueError:
                rate = None
            if rate is not None and 0.0 <= rate <= 1.0:
                return operating_point_key(pos, neg, rate), (pos, neg)
    raise ValueError(f"unknown selection criterion {criterion!r}; {_CRITERIA_HELP}")


def operating_point_criterion(positive: str, negative: str, rate: float) -> str:
    """The selection criterion of the worst-mistake operating point, e.g. 'BAD_recall@GOOD2BAD<=0.05'."""
    return f"{positive}_recall@{negative}2{positive}<={rate:g}"


def selection_score(metrics: dict, criterion: str) -> float:
    """The value of ``metrics`` (from ``evaluate``) named by ``criterion``; higher is always better.

    Forms as in :func:`parse_criterion`. NaN is returned as -inf so that an undefined run never wins a
    max(). ValueError for an unknown form or a missing metric.
    """
    return _lookup(metrics, parse_criterion(criterion)[0], criterion)
