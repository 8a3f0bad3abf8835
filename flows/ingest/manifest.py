"""Global decisions over the small columns of all processed rows, and the manifest.

Pure pandas (no Ray): the same code decides duplicates and splits for the Ray flow and for the
single-process baseline in ``bench/preprocess.py``.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd

from flows.ingest.dedupe import find_duplicates
from flows.core.schema import COLUMNS, FRAME, IMAGE, THUMBNAIL
from flows.ingest.split import merge_groups, split_of


def decide(meta: pd.DataFrame, cfg) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Duplicates, merged groups and splits.

    ``meta``: one row per staging row with at least ``id, group_id, kind, label, pool, path,
    source, sha256, phash, reject_reason, reject_detail``.
    Returns ``(keep, rejects, duplicates)`` where ``keep`` maps ``"path|id"`` of every kept row to
    ``(group_id, split)``; frames follow their video (keyed by path) whatever happens to them.
    """
    is_rej = meta["reject_reason"].fillna("") != ""
    rejects = meta.loc[is_rej, ["path", "source", "reject_reason", "reject_detail"]].rename(
        columns={"reject_reason": "reason", "reject_detail": "detail"}).reset_index(drop=True)
    ok = meta.loc[~is_rej].reset_index(drop=True)
    media = ok[ok["kind"].isin([IMAGE, THUMBNAIL])].reset_index(drop=True)
    dropped, cluster_of = find_duplicates(
        media["id"].tolist(), media["sha256"].tolist(), media["phash"].fillna("").tolist(),
        media["kind"].tolist(), media["pool"].tolist(), media["label"].astype(int).tolist(),
        cfg.near_dup_distance)
    dup_rows = [{"path": media.at[i, "path"], "id": media.at[i, "id"], "reason": reason,
                 "kept_path": media.at[k, "path"], "kept_id": media.at[k, "id"]} for i, reason, k in dropped]
    dups = pd.DataFrame(dup_rows, columns=["path", "id", "reason", "kept_path", "kept_id"])
    dropped_paths = {media.at[i, "path"] for i, _, _ in dropped}

    # a video whose file was dropped as an exact duplicate takes its frames with it
    groups = media["group_id"].tolist()
    links = [(groups[i], groups[int(c)]) for i, c in enumerate(cluster_of) if int(c) != i]
    merged = merge_groups(sorted(set(ok["group_id"])), links)
    keep: dict[str, tuple[str, str]] = {}
    for path, rid, gid in zip(ok["path"], ok["id"], ok["group_id"]):
        if path in dropped_paths:
            continue
        g = merged[gid]
        keep[f"{path}|{rid}"] = (g, split_of(g, cfg.val_frac, cfg.test_frac, cfg.split_seed))
    return keep, rejects, dups


def pool_timeline(meta: pd.DataFrame, step: float = 0.5) -> dict:
    """Actor pool sizes over time, from which worker processed each batch when.

    An actor is counted from the start of its first batch to the end of its last one; the pool size
    at time t is the number of actors alive at t. ``sizes_seen`` is the sorted set of sizes.
    """
    w = meta[["worker", "t_start", "t_end"]].dropna()
    if w.empty:
        return {"max_size": 0, "sizes_seen": [], "timeline": [], "batches_per_actor": {}}
    life = w.groupby("worker").agg(first=("t_start", "min"), last=("t_end", "max"))
    batches = w.drop_duplicates().groupby("worker").size()
    t0, t1 = float(life["first"].min()), float(life["last"].max())
    ts = np.arange(t0, t1 + step, step)
    sizes = [int(((life["first"] <= t) & (life["last"] >= t)).sum()) for t in ts]
    timeline = [[round(float(t - t0), 2), s] for t, s in zip(ts, sizes)]
    return {"max_size": int(max(sizes)), "sizes_seen": sorted(set(sizes) - {0}),
            "timeline": timeline, "actors": int(len(life)),
            "batches_per_actor": {str(k): int(v) for k, v in batches.items()}}


def tag_counts(kept: pd.DataFrame) -> dict:
    """``tags``: the tag set (sorted), ``tagged``: rows annotated with tags, ``by_tag``: rows per tag."""
    col = kept["tags"].fillna("") if "tags" in kept else pd.Series([], dtype=str)
    lists = [json.loads(t) for t in col if t]
    by_tag: dict[str, int] = {}
    for tags in lists:
        for t in tags:
            by_tag[t] = by_tag.get(t, 0) + 1
    return {"tags": sorted(by_tag), "tagged": len(lists), "by_tag": dict(sorted(by_tag.items()))}


def _counts(series: pd.Series) -> dict:
    return {str(k): int(v) for k, v in series.value_counts().sort_index().items()}


def build_manifest(meta: pd.DataFrame, keep: dict, rejects: pd.DataFrame, dups: pd.DataFrame, cfg,
                   n_inputs: int, n_entries: int, timings: dict) -> dict:
    """Counts by class, split and kind; rejects by reason; duplicates; throughput; pool sizes."""
    keys = meta["path"].astype(str) + "|" + meta["id"].astype(str)
    kept = meta[keys.isin(keep.keys())].copy()
    kept["split"] = [keep[k][1] for k in keys[keys.isin(keep.keys())]]
    total = timings.get("total_s") or math.nan
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "classes": list(cfg.classes),
        "noisy_pools": {k: dict(v) for k, v in cfg.noisy_pools.items()},
        "priors": {k: cfg.prior(k) for k in cfg.noisy_pools},
        "inputs": int(n_inputs),  # work items: a video with span lines is one
        "entries": int(n_entries),  # files and manifest lines read
        "rows": int(len(kept)),
        "scored": int(kept["score"].notna().sum()) if "score" in kept else 0,  # rows with a score target
        **tag_counts(kept),
        "by_class": _counts(kept["label_name"]),
        "by_split": _counts(kept["split"]),
        "by_kind": _counts(kept["kind"]),
        "by_pool": _counts(kept["pool"]),
        "by_class_split": {f"{c}/{s}": int(v) for (c, s), v in
                           kept.groupby(["label_name", "split"]).size().items()},
        "groups": int(kept["group_id"].nunique()) if len(kept) else 0,
        "videos": int(kept.loc[kept["kind"] == THUMBNAIL, "path"].nunique()),
        "frames": int((kept["kind"] == FRAME).sum()),
        "rejects": {"total": int(len(rejects)), "by_reason": _counts(rejects["reason"])},
        "duplicates": {"total": int(len(dups)), "by_reason": _counts(dups["reason"])},
        "timings": {k: round(float(v), 3) for k, v in timings.items()},
        "throughput": {"items_per_s": n_inputs / total if total else math.nan,
                       "rows_per_s": len(meta) / timings.get("process_s", total)},
        "actor_pool": pool_timeline(meta),
        "columns": {k: v[1] for k, v in COLUMNS.items()},
    }
