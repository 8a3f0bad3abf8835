"""``predictions.parquet``: every item a run saw, scored by the final student and the EMA teacher.

Written by rank 0 at the end of training, before the best weights are restored, so the two networks
are the pair that trained together: where they disagree, or where either is unsure, a person's look
is worth most (the review queues of ``sift review``); where the student's loss against the item's
current label is high, the label is probably wrong. While the backbone never unfroze, the scores come
from the embedding cache (view 0, the eval view: a pass over the head only); after it unfroze, from
pixels, since the cached embeddings no longer match the tuned backbone.

Columns: id, path, group_id, split, kind, label (the label the run used: corrections applied; -1
unlabeled), pool, student, teacher (probabilities, list<float32>, classes in the file's ``sift``
metadata), loss (student cross-entropy vs label; NaN when unlabeled).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .context import RunContext

META = ("id", "path", "group_id", "split", "kind", "label", "pool")


def per_item_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each item's probabilities against its label; NaN for the unlabeled (-1)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return np.zeros(0, np.float32)
    p = probs[np.arange(len(labels)), np.maximum(labels, 0)]
    return np.where(labels >= 0, -np.log(np.clip(p, 1e-12, 1.0)), np.nan).astype(np.float32)


@torch.no_grad()
def compute(shard, student, teacher, phase: str, ctx: RunContext, batch_size: int = 256):
    """A pyarrow table of predictions over ``shard`` (the unsplit "predict" dataset)."""
    import pyarrow as pa

    from .data import CacheView, PixelView, to_tensors

    mode = "cache" if phase == "frozen" else "pixels"
    view = CacheView(0.0) if mode == "cache" else PixelView(ctx.preproc)
    nets = [student] + ([teacher] if teacher is not None else [])
    for net in nets:
        net.eval()
    cols = {k: [] for k in META}
    probs: list[list[np.ndarray]] = [[] for _ in nets]
    skip = {"image"} if mode == "cache" else set()
    for nb in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        nb = {k: v for k, v in nb.items() if k not in skip}
        b = to_tensors(nb, mode, ctx.preproc, ctx.n_face, tags=ctx.tags)
        for k, net in enumerate(nets):
            logits = view(net, b, "eval", None)[0]
            probs[k].append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        for k in META:
            cols[k].extend(nb[k].tolist())
    c = len(ctx.classes)
    s = np.concatenate(probs[0]) if probs[0] else np.zeros((0, c), np.float32)
    t = np.concatenate(probs[1]) if len(nets) > 1 and probs[1] else s
    label = np.asarray(cols["label"], dtype=np.int32)
    table = {k: cols[k] for k in META if k != "label"}
    table.update(label=label, student=list(s.astype(np.float32)), teacher=list(t.astype(np.float32)),
                 loss=per_item_loss(s, label))
    out = pa.table(table)
    meta = {"classes": ctx.classes, "source": mode, "teacher": teacher is not None, "data": ctx.data_dir,
            "run_name": ctx.run_name}
    return out.replace_schema_metadata({"sift": json.dumps(meta)})


def write(table, path: Path, **extra) -> Path:
    """Write the table with ``extra`` (run id, ...) merged into its ``sift`` metadata."""
    import pyarrow.parquet as pq

    meta = {**json.loads(table.schema.metadata[b"sift"]), **extra}
    pq.write_table(table.replace_schema_metadata({"sift": json.dumps(meta)}), path)
    return path


def read(path: str | Path):
    """``(DataFrame of the scalar columns, {"student": (N, C), "teacher": (N, C)}, metadata)``."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    meta = json.loads((t.schema.metadata or {}).get(b"sift", b"{}"))
    c = len(meta.get("classes", []))
    probs = {}
    for k in ("student", "teacher"):
        v = t[k].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        probs[k] = v.reshape(t.num_rows, c).astype(np.float32)
    return t.drop(["student", "teacher"]).to_pandas(), probs, meta
