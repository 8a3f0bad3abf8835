"""Cross-fitted probabilities for calibration when the clean validation split is thin.

An operating point chosen on 24 validation items is a guess (a GOOD->BAD rate of 5% needs 40 GOOD
items to measure at all). The clean *training* items are many more, but the final model has fit
them, so its own probabilities on them are optimistic. Cross-fitting (as scikit-learn's
``cross_val_predict`` behind ``CalibratedClassifierCV(ensemble=False)``) gives each of them a
held-out probability instead: K fresh heads, each trained on the final model's features of the other
K-1 folds, score the fold they did not see; their out-of-fold logits get their own temperature.
Calibrated probabilities mean the same thing whichever model produced them (P = 0.8: right 80% of
the time), so thresholds chosen on them carry over to the final model's calibrated probabilities.

    features x (N, F) float, labels y (N,) int in [0, C) --folds(y, K)--> fold (N,)
    for k in folds: Head(F, H, C) trained on x[fold != k] --> logits[fold == k]      (N, C)

Caveat: when the backbone was fine-tuned end to end it has seen these items too, so their features
are somewhat easier than a new item's; the cross-fitted items are used beside, not instead of, the
validation items the final model never saw.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .model import Head


def folds(y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Stratified fold index (N,) in [0, k): each class's items dealt round-robin in a seeded order,
    so every fold holds about 1/k of every class (a class with fewer than k items skips some folds)."""
    y = np.asarray(y, np.int64)
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), np.int64)
    start = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        out[idx] = (start + np.arange(len(idx))) % k  # classes continue where the last one stopped
        start += len(idx)
    return out


def fit_head(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, hidden: int, dropout: float, steps: int,
             batch: int, lr: float, weight_decay: float, class_weight: torch.Tensor | None,
             generator: torch.Generator) -> Head:
    """A fresh Head (train/model.py) fit to x (N, F) -> y (N,) by AdamW on weighted cross-entropy
    (mean over the batch), minibatches drawn with replacement; returned in eval mode."""
    head = Head(x.shape[1], hidden, n_classes, dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    head.train()
    for _ in range(steps):
        i = torch.randint(0, len(y), (min(batch, len(y)) if len(y) > 1 else 2,), generator=generator)
        loss = F.cross_entropy(head(x[i]).logits, y[i], weight=class_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def oof_logits(x: np.ndarray, y: np.ndarray, n_classes: int, *, k: int = 5, hidden: int = 128,
               dropout: float = 0.1, steps: int = 200, batch: int = 32, lr: float = 1e-3,
               weight_decay: float = 1e-4, class_weight=None, seed: int = 0) -> np.ndarray:
    """Out-of-fold logits (N, C) float64 of ``k`` heads (see the module docstring); deterministic for
    a seed. Needs k >= 2 and N >= k."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if k < 2 or len(y) < k:
        raise ValueError(f"cross-fitting needs k >= 2 folds and at least k items, got k={k}, N={len(y)}")
    fold = folds(y, k, seed)
    torch.manual_seed(seed)  # the heads' initial weights
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    w = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
    out = np.zeros((len(y), n_classes), np.float64)
    for f in range(k):
        held = torch.from_numpy(fold == f)
        if not held.any():
            continue
        head = fit_head(xt[~held], yt[~held], n_classes, hidden=hidden, dropout=dropout, steps=steps, batch=batch,
                        lr=lr, weight_decay=weight_decay, class_weight=w, generator=g)
        with torch.no_grad():
            out[held.numpy()] = head(xt[held]).logits.double().numpy()
    return out
