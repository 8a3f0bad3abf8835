"""The review queues of ``sift review``, as pure functions over a run's predictions (no server here).

Each strategy orders items by how much a person's look is worth:

* ``uncertain`` — the smallest margin between the two most likely classes of the student/teacher
  average (ties: the highest entropy). Items near the decision boundary teach the most.
* ``disagree`` — the student and the EMA teacher pick different classes first, then the largest
  Jensen-Shannon divergence between them. Where the two nets part, one of them is being misled.
* ``loss`` — labeled training items by the student's loss against their current label: the
  model confidently says otherwise, so the label is probably noise (the NEUTRAL pool above all).
* ``reported`` — items someone flagged "wrong verdict" in the filtered feed, most reports first.

Items already reviewed (a live label or skip in the store) leave every queue, and one item per
``group_id`` is shown at a time (a video's frames or a near-duplicate cluster would otherwise fill
the queue with one subject).
"""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from flows.core.errors import SiftError

STRATEGIES = ("uncertain", "disagree", "loss", "reported")


class QueueError(SiftError, ValueError):
    """A queue that cannot be computed from these predictions (the message says why)."""

    reason = "bad_queue"


def margin(p: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (0: a coin flip between two classes)."""
    if p.shape[1] < 2:
        return np.ones(len(p), np.float32)
    top = np.sort(p, axis=1)
    return top[:, -1] - top[:, -2]


def entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row (natural log; 0 = identical, <= ln 2)."""
    m = (p + q) / 2

    def kl(a, b):
        a, b = np.clip(a, 1e-12, 1.0), np.clip(b, 1e-12, 1.0)
        return (a * np.log(a / b)).sum(axis=1)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def match_reports(items: pd.DataFrame, reports: pd.DataFrame) -> pd.DataFrame:
    """Open feed reports joined to items: by item id, by the file name the scraper gave the item
    (``media/<id>.jpg``, the path preprocessing kept) or by URL/path. One row per (report, item)."""
    cols = ["row", "seq", "suggested", "verdict", "page", "url", "at"]
    if reports is None or not len(reports) or not len(items):
        return pd.DataFrame(columns=cols)
    ids = {v: i for i, v in enumerate(items["id"].astype(str))}
    by_stem: dict[str, int] = {}
    by_path: dict[str, int] = {}
    for i, p in enumerate(items["path"].astype(str)):
        by_path.setdefault(p, i)
        stem = PurePosixPath(p).stem
        by_stem.setdefault(stem, i)
        by_stem.setdefault(stem.split("-t", 1)[0], i)  # a scraped video's frames: <id>-t<seconds>
    out = []
    for r in reports.itertuples(index=False):
        row = ids.get(str(r.item_id))
        if row is None:
            row = by_stem.get(str(r.item_id), by_path.get(str(r.url)) if r.url else None)
        if row is not None:
            out.append((row, int(r.seq), r.suggested, r.verdict, r.page, r.url, float(r.at)))
    return pd.DataFrame(out, columns=cols)


def rank(items: pd.DataFrame, probs: dict[str, np.ndarray], classes: list[str], strategy: str, *,
         reviewed: set[str] = frozenset(), reports: pd.DataFrame | None = None, has_teacher: bool = True,
         limit: int = 50) -> pd.DataFrame:
    """Rows of ``items`` in queue order: columns ``row`` (position in items), ``score`` (higher first),
    ``reason`` (a sentence for the card) and ``reports`` (seqs of the feed reports it answers)."""
    if strategy not in STRATEGIES:
        raise QueueError(f"unknown strategy {strategy!r}: expected one of {list(STRATEGIES)}")
    s, t = probs["student"], probs["teacher"]
    n = len(items)
    label = items["label"].to_numpy()
    name = lambda k: classes[int(k)] if k >= 0 else "unlabeled"
    keep = np.ones(n, bool)
    seqs: dict[int, list[int]] = {}
    if strategy == "uncertain":
        p = (s + t) / 2
        mg = margin(p)
        score = (1.0 - mg) + 1e-3 * entropy(p)
        top = np.argsort(-p, axis=1)[:, :2]
        why = lambda i: f"margin {mg[i]:.2f} between {classes[top[i, 0]]} and {classes[top[i, -1]]}"
    elif strategy == "disagree":
        if not has_teacher:
            raise QueueError("this run had no teacher (mean_teacher=false): no disagreement to rank")
        js = js_divergence(s, t)
        sa, ta = s.argmax(1), t.argmax(1)
        score = js + (sa != ta)
        why = lambda i: (f"student {classes[sa[i]]} {s[i, sa[i]]:.2f} vs teacher {classes[ta[i]]} "
                         f"{t[i, ta[i]]:.2f} (JS {js[i]:.3f})")
    elif strategy == "loss":
        loss = items["loss"].to_numpy(dtype=float)
        keep = ((items["split"] == "train").to_numpy() & (label >= 0)) & np.isfinite(loss)
        score = np.nan_to_num(loss, nan=-np.inf)
        pa = s.argmax(1)
        why = lambda i: (f"loss {loss[i]:.2f} vs label {name(label[i])} ({items['pool'].iat[i]} pool); "
                         f"model says {classes[pa[i]]} {s[i, pa[i]]:.2f}")
    else:
        hits = match_reports(items, reports)
        score, keep, reasons = np.full(n, -np.inf), np.zeros(n, bool), {}
        for row, g in hits.groupby("row"):
            keep[row] = True
            score[row] = len(g) + g["at"].max() * 1e-12  # most reports first, then the newest
            sug = ", ".join(sorted({x for x in g["suggested"] if x})) or "none"
            reasons[row] = f"reported {len(g)}x from the feed: verdict {g['verdict'].iat[-1] or '?'}, suggested {sug}"
            seqs[int(row)] = sorted(int(x) for x in g["seq"])
        why = reasons.get
    if reviewed:
        keep &= ~items["id"].isin(list(reviewed)).to_numpy()
    order = pd.DataFrame({"row": np.arange(n), "score": np.asarray(score, float),
                          "group": items["group_id"].to_numpy()})[keep]
    order = order.sort_values(["score", "row"], ascending=[False, True], kind="stable")
    order = order.drop_duplicates("group").head(limit).drop(columns="group").reset_index(drop=True)
    order["reason"] = [why(int(r)) for r in order["row"]]
    order["reports"] = [seqs.get(int(r), []) for r in order["row"]]
    return order
