"""From Ray Data numpy batches to the tensor batches of ``train.loop``, and the two ``View``s.

A View turns a batch into model outputs for a role ("student", "teacher" or "eval"). The
student and the teacher must see *different* views of the same items (Tarvainen & Valpola 2017):
from the embedding cache they get different stored augmented views plus feature noise; from pixels
they get independent random crops, flips and colour jitter.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from .augment import augment, feature_noise
from .loop import POOL_CODES
from .transforms import Preproc, center_crop, decode, normalize, to_uint8_batch

if TYPE_CHECKING:
    from .context import RunContext


def tag_targets(values, tags: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``tags`` column (JSON lists, '' = not annotated) -> (multi-hot (B, T) float32, annotated (B,)
    bool). Tags outside ``tags`` (the run's tag set) are ignored."""
    index = {t: i for i, t in enumerate(tags)}
    hot = np.zeros((len(values), len(tags)), np.float32)
    annotated = np.zeros(len(values), bool)
    for i, v in enumerate(values):
        if v:
            annotated[i] = True
            for t in json.loads(v):
                if t in index:
                    hot[i, index[t]] = 1.0
    return hot, annotated


def to_tensors(nb: dict, mode: str, p: Preproc, n_face: int, relabel: dict | None = None,
               tags: list[str] = ()) -> dict:
    """numpy batch (columns of the cache) -> tensor batch. ``mode``: "cache" or "pixels"."""
    if mode == "cache":
        x = torch.from_numpy(np.ascontiguousarray(np.stack(list(nb["emb"])), dtype=np.float32))
    else:
        x = to_uint8_batch([decode(b, p.size, p.fit) for b in nb["image"]])
    face = np.stack(list(nb["face"])).astype(np.float32)[:, :n_face]
    label = np.asarray(nb["label"], dtype=np.int64).copy()
    pool = np.array([POOL_CODES[str(v)] for v in nb["pool"]], dtype=np.int64)
    if relabel:  # evaluation against known truth (bench): the label becomes clean
        for i, path in enumerate(nb["path"]):
            if str(path) in relabel:
                label[i], pool[i] = relabel[str(path)], 0
    score = np.asarray(nb["score"], dtype=np.float32) if "score" in nb else np.full(len(label), np.nan, np.float32)
    hot, annotated = tag_targets(list(nb["tags"]) if "tags" in nb else [""] * len(label), list(tags))
    return {"x": x, "face": torch.from_numpy(face), "label": torch.from_numpy(label),
            "pool": torch.from_numpy(pool), "score": torch.from_numpy(score),
            "tags": torch.from_numpy(hot), "tagged": torch.from_numpy(annotated)}


class CacheView:
    """Model outputs from cached embeddings (B, V, D): view 0 for eval, random distinct views
    plus feature noise for the student and the teacher."""

    def __init__(self, noise: float, dropout: float = 0.1):
        self.noise, self.dropout = noise, dropout

    def __call__(self, model, b: dict, role: str, g: torch.Generator | None):
        x = b["x"]
        n, v = x.shape[0], x.shape[1]
        if role == "eval":
            z = x[:, 0]
        else:
            if role == "student" or "_v" not in b:
                b["_v"] = torch.randint(0, v, (n,), generator=g)
            idx = b["_v"]
            if role == "teacher" and v > 1:  # a different stored view than the student's
                idx = (idx + torch.randint(1, v, (n,), generator=g)) % v
            z = x[torch.arange(n), idx]
            z = feature_noise(z, std=self.noise, dropout=self.dropout, generator=g)
        return model(z=z, face=b["face"])


class PixelView:
    """Model outputs from uint8 squares: centre crop for eval, independent augmentations else."""

    def __init__(self, p: Preproc, aug: dict | None = None):
        """``aug``: ``train.augment.augment`` keywords (crop scale, jitter strengths), see augment_kwargs."""
        self.p, self.aug = p, dict(aug or {})

    def __call__(self, model, b: dict, role: str, g: torch.Generator | None):
        x = b["x"]
        if role == "eval":
            x = center_crop(x, self.p.crop)
        else:
            x = augment(x, (self.p.crop, self.p.crop), generator=g, **self.aug)
        return model(pixels=normalize(x, self.p), face=b["face"])


def shard_batches(shard, batch: int, mode: str, ctx: RunContext, relabel=None, shuffle: bool = True,
                  seed: int | None = None):
    """Tensor batches (:func:`to_tensors`) of a Ray Data shard; ``mode`` "cache" leaves the pixels
    unread, "pixels" reads them; ``seed`` fixes the local shuffle (a run replays exactly)."""
    cols = None if mode == "pixels" else [c for c in ctx.columns if c != "image"]
    kw = {"local_shuffle_buffer_size": batch * 8, "local_shuffle_seed": seed} if shuffle else {}
    for nb in shard.iter_batches(batch_size=batch, batch_format="numpy", **kw):
        if cols:
            nb = {k: nb[k] for k in cols if k in nb}
        yield to_tensors(nb, mode, ctx.preproc, ctx.n_face, relabel, ctx.tags)


def cycle(make_iter):
    """Endless iterator over an iterable factory (a new Ray Data epoch each time it runs out)."""
    while True:
        empty = True
        for item in make_iter():
            empty = False
            yield item
        if empty:
            return
