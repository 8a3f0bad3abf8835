"""Evaluation and training plots for the sift classifier.

Every function builds a ``matplotlib.figure.Figure`` directly, never through pyplot: no global figure
registry, no GUI backend, nothing to close, safe in Ray workers. Each returns the Figure and, when
``path`` is given, also writes a PNG there (parent folders are created).

Conventions as in ``train.metrics``: probs (N, C) rows sum to 1; y (N,) int labels; classes C names.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from train.metrics import average_precision, ece, pr_curve, reliability_bins


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)  # a bare Figure picks the Agg canvas for PNG itself
    return fig


def confusion_plot(cm, classes: Sequence[str], path=None, title: str = "") -> Figure:
    """Confusion matrix (rows = true, columns = predicted): colour = row-normalised rate, text = count.

    Row-normalising makes a rare class's errors as visible as a frequent one's; each cell shows the
    count and the row percentage.
    """
    cm = np.asarray(cm, dtype=np.int64)
    C = len(classes)
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    side = 2.5 + 0.9 * C
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(C):
        for j in range(C):
            ax.text(j, i, f"{cm[i, j]}\n{100 * rate[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if rate[i, j] > 0.5 else "black")
    tilt = C > 4
    ax.set_xticks(range(C), labels=list(classes), rotation=45 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_yticks(range(C), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion (N={int(cm.sum())})")
    return _finish(fig, path)


def pr_curves_plot(probs, y, classes: Sequence[str], path=None, title: str = "",
                   points: dict[int, float] | None = None) -> Figure:
    """One-vs-rest precision-recall curve of each class (score = P(class)), AP in the legend.

    ``points`` {class index: threshold t} marks the operating point "P(class) >= t" on that curve
    (a binary task's one threshold).
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y).ravel()
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for c, name in enumerate(classes):
        precision, recall, _ = pr_curve(probs[:, c], y == c)
        if recall.size == 0:  # no item of this class: no curve, but say so in the legend
            ax.plot([], [], label=f"{name} (no items)")
            continue
        ap = average_precision(probs[:, c], y == c)
        line, = ax.step(np.r_[0.0, recall], np.r_[precision[0], precision], where="post",
                        label=f"{name} (AP {ap:.3f}, n={int((y == c).sum())})")
        if points and c in points:
            flagged, is_c = probs[:, c] >= points[c], y == c
            tp = float((flagged & is_c).sum())
            ax.plot([tp / is_c.sum()], [tp / flagged.sum() if flagged.any() else 1.0], "o",
                    color=line.get_color(), ms=8, label=f"{name} >= {points[c]:.3f} (the threshold)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall, one vs rest")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _finish(fig, path)


def _panel_name(key: str) -> str:
    """Keys that differ only before the last '/' share a panel: 'train/loss' and 'val/loss' -> 'loss'."""
    return key.rsplit("/", 1)[-1]


def curves_plot(history: dict[str, list[tuple[float, float]]], path=None, title: str = "") -> Figure:
    """Training curves: one panel per metric, x = step; series 'train/loss' and 'val/loss' share a panel.

    history maps a series name to its (step, value) pairs in any order; empty series are skipped and
    non-finite values are dropped.
    """
    panels: dict[str, list[str]] = defaultdict(list)
    for key, points in history.items():
        if len(points):
            panels[_panel_name(key)].append(key)
    n = max(len(panels), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    for k, (panel, keys) in enumerate(sorted(panels.items())):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for key in sorted(keys):
            pts = np.asarray(sorted(history[key]), dtype=np.float64).reshape(-1, 2)
            pts = pts[np.isfinite(pts).all(axis=1)]
            ax.plot(pts[:, 0], pts[:, 1], marker="." if len(pts) < 30 else None, label=key)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def runs_comparison_plot(rows: list[dict], metrics: list[str], path=None, title: str = "") -> Figure:
    """Grouped bars: one group per metric, one bar per run (rows[i]["run"] names it).

    Missing or non-numeric values leave a gap; values are written above the bars when there is room.
    """
    runs = [str(r.get("run", i)) for i, r in enumerate(rows)]
    width = 0.8 / max(len(runs), 1)
    fig = Figure(figsize=(max(5.0, 1.2 + len(metrics) * (0.5 + 0.35 * len(runs))), 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(metrics), dtype=np.float64)
    for i, (row, run) in enumerate(zip(rows, runs)):
        vals = np.array([_as_float(row.get(m)) for m in metrics])
        ok = np.isfinite(vals)
        bars = ax.bar(x[ok] + (i - (len(runs) - 1) / 2) * width, vals[ok], width, label=run)
        if len(runs) * len(metrics) <= 24:
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    ax.set_xticks(x, labels=metrics, rotation=30 if len(metrics) > 3 else 0,
                  ha="right" if len(metrics) > 3 else "center")
    ax.set_title(title or "runs")
    ax.grid(axis="y", alpha=0.3)
    if runs:
        ax.legend(fontsize=8, ncols=min(len(runs), 4))
    return _finish(fig, path)


def _as_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def reliability_plot(probs, y, path=None, bins: int = 15, title: str = "") -> Figure:
    """Reliability diagram (Guo et al. 2017, fig. 1): per-bin accuracy vs confidence, top-label.

    Top panel: accuracy bars, the diagonal (perfect calibration) and the gap to each bin's mean
    confidence; bottom panel: how many items fall in each bin. ECE in the title.
    """
    conf, acc, count = reliability_bins(probs, y, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centers, w = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    has = count > 0
    top.bar(centers[has], acc[has], w, edgecolor="black", linewidth=0.5, label="accuracy")
    top.bar(conf[has], (conf - acc)[has], w * 0.35, bottom=acc[has], color="tab:red", alpha=0.5,
            label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    n = int(count.sum())
    auto = f"reliability (ECE {ece(probs, y, bins):.3f}, N={n})" if n else "reliability (no data)"
    top.set_title(title or auto)
    bottom.bar(centers, count, w, color="gray", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("items")
    return _finish(fig, path)
