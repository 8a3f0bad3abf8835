"""One training step and one evaluation pass, over any iterable of batches (no Ray here).

A batch is a dict of tensors:
    x      model input: cached embeddings (B, V, D) float, or uint8 squares (B, 3, S, S)
    face   (B, F) float face features
    label  (B,) int64, -1 for the unlabeled pool
    pool   (B,) int64: 0 clean, 1 noisy, 2 unlabeled
    score  (B,) float, NaN when absent
    tags   (B, T) float multi-hot of the run's tags; tagged (B,) bool: the item is annotated with tags
The ``View`` object turns a batch into model outputs for the student or the teacher: from the
cache it picks different stored views (plus feature noise), from pixels it draws different
augmentations. Everything else is the same for both phases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from . import losses
from .ramps import sigmoid_rampup
from .teacher import ema_decay, ema_update

POOL_CODES = {"clean": 0, "noisy": 1, "unlabeled": 2}


@dataclass
class LossSpec:
    """What the loss needs besides the batch (built once from the config and the manifest)."""
    gamma_pos: torch.Tensor | float
    gamma_neg: float
    eps: float
    cost: torch.Tensor | None
    cost_weight: float
    priors: dict[int, torch.Tensor]  # noisy-pool class index -> prior over classes (C,)
    mean_teacher: bool
    consistency: str
    consistency_weight: float
    rampup: int
    confidence_threshold: float
    noisy_sharpen: float
    ema_decay: float
    score_range: tuple[float, float] = (0.0, 1.0)  # the score targets' (min, max) on train
    tag_weight: float = 1.0  # weight of the multi-label tag loss
    noisy_pool: str = "prior"  # prior: towards the pool's prior (teacher-refined); label: at its word; ignore
    class_weight: torch.Tensor | None = None  # (C,) per-class weight of clean items (balanced classes)


def unit_score(score: torch.Tensor, score_range: tuple[float, float]) -> torch.Tensor:
    """Targets in the user's units -> [0, 1] by the training range (the head's sigmoid range)."""
    lo, hi = score_range
    return (score - lo) / (hi - lo) if hi > lo else score - lo + 0.5


def mix(lab: dict, unl: dict | None) -> dict:
    """Concatenate a labeled and an unlabeled batch (the unlabeled one may be None)."""
    if unl is None:
        return lab
    return {k: torch.cat([lab[k], unl[k]]) for k in lab}


def supervised_terms(logits: torch.Tensor, batch: dict, spec: LossSpec, t_probs: torch.Tensor | None):
    """Clean items: ASL + cost; noisy-pool items: soft targets from the pool's prior.

    ``spec.noisy_pool``: "prior" trains the noisy pool towards its prior (refined by the teacher when
    there is one, the prior alone otherwise); "label" takes it at its word, exactly the naive use of a
    noisy folder that the prior is meant to replace; "ignore" leaves it out. ``spec.class_weight``
    weights clean items by class (rare classes count as much as common ones).
    """
    y, pool = batch["label"], batch["pool"]
    clean = pool == 0
    noisy = pool == 1
    if spec.noisy_pool == "label":
        clean = clean | noisy
    if spec.noisy_pool != "prior":
        noisy = torch.zeros_like(noisy)
    zero = logits.sum() * 0.0
    l_clean = zero
    if clean.any():
        w = spec.class_weight.to(logits.device)[y[clean]] if spec.class_weight is not None else None
        l_clean = losses.classification_loss(logits[clean], y[clean], gamma_pos=spec.gamma_pos,
                                             gamma_neg=spec.gamma_neg, cost=spec.cost,
                                             cost_weight=spec.cost_weight, eps=spec.eps, weight=w)
    l_noisy = zero
    if noisy.any():
        parts = []
        for cls, prior in spec.priors.items():
            m = noisy & (y == cls)
            if m.any():
                tp = t_probs[m] if t_probs is not None else None
                target = losses.noisy_pool_targets(prior, tp, sharpen=spec.noisy_sharpen)
                parts.append(losses.soft_cross_entropy(logits[m], target) * m.sum())
        if parts:
            l_noisy = torch.stack(parts).sum() / noisy.sum()
    return l_clean, l_noisy


def train_step(student, teacher, opt, batch: dict, view: Callable, spec: LossSpec, step: int,
               generator: torch.Generator | None = None) -> dict:
    """One optimisation step of the mean-teacher objective (Tarvainen & Valpola 2017).

    loss = clean ASL + noisy-pool soft CE + ramp(step) * w * consistency(student, teacher),
    consistency per item weighted by teacher confidence. Gradients reach the student only; the
    teacher then moves by EMA over weights and buffers. Returns float losses for logging.
    """
    student.train()
    s_logits, s_score, s_tags = view(student, batch, "student", generator)
    t_logits = t_probs = None
    if spec.mean_teacher and teacher is not None:
        with torch.no_grad():
            teacher.train()  # dropout on: the teacher's noise is part of the method (sec. 2)
            t_logits = view(teacher, batch, "teacher", generator)[0]
            t_probs = F.softmax(t_logits, dim=-1)
    l_clean, l_noisy = supervised_terms(s_logits, batch, spec, t_probs)
    l_cons = s_logits.sum() * 0.0
    ramp = sigmoid_rampup(step, spec.rampup)
    if t_logits is not None and spec.consistency_weight > 0:
        w = losses.confidence_weights(t_logits, threshold=spec.confidence_threshold)
        fn = losses.softmax_mse_consistency if spec.consistency == "mse" else losses.softmax_kl_consistency
        l_cons = fn(s_logits, t_logits, weight=w)
    l_score = s_logits.sum() * 0.0
    if s_score is not None:
        has = ~torch.isnan(batch["score"])
        if has.any():
            target = unit_score(batch["score"][has].to(s_score.dtype), spec.score_range)
            l_score = F.mse_loss(s_score[has], target)
    l_tags = s_logits.sum() * 0.0
    if s_tags is not None and batch["tagged"].any():
        # independent sigmoids, mean over annotated items and tags (multi-label: no softmax)
        on = batch["tagged"]
        l_tags = F.binary_cross_entropy_with_logits(s_tags[on], batch["tags"][on].to(s_tags.dtype))
    loss = l_clean + l_noisy + ramp * spec.consistency_weight * l_cons + l_score + spec.tag_weight * l_tags
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if spec.mean_teacher and teacher is not None:
        ema_update(teacher, _unwrap(student), ema_decay(step, spec.ema_decay))
    parts = {"loss": loss, "loss_clean": l_clean, "loss_noisy": l_noisy, "loss_consistency": l_cons,
             "loss_score": l_score, "loss_tags": l_tags}
    return {**{k: float(v.detach()) for k, v in parts.items()}, "ramp": ramp}


def _unwrap(model):
    return getattr(model, "module", model)


@torch.no_grad()
def predict_outputs(model, batches: Iterable[dict], view: Callable) -> dict[str, np.ndarray]:
    """Eval-mode outputs over batches -> {"logits" (N,C), "label" (N,), "pool" (N,), "score" (N,)
    predicted in [0, 1] (NaN without a score head), "score_target" (N,) (NaN where absent),
    "tag_logits" (N,T), "tags" (N,T) targets, "tagged" (N,)} (T = 0 without tags)."""
    model.eval()
    cols: dict[str, list] = {"logits": [], "label": [], "pool": [], "score": [], "score_target": [],
                             "tag_logits": [], "tags": [], "tagged": []}
    for b in batches:
        logits, score, tag_logits = view(model, b, "eval", None)
        cols["logits"].append(logits.float().cpu().numpy())
        cols["label"].append(b["label"].cpu().numpy())
        cols["pool"].append(b["pool"].cpu().numpy())
        cols["score"].append(score.float().cpu().numpy() if score is not None
                             else np.full(len(logits), np.nan, np.float32))
        cols["score_target"].append(b["score"].cpu().numpy())
        cols["tags"].append(b["tags"].cpu().numpy())
        cols["tagged"].append(b["tagged"].cpu().numpy())
        cols["tag_logits"].append(tag_logits.float().cpu().numpy() if tag_logits is not None
                                  else np.zeros((len(logits), 0), np.float32))
    if not cols["logits"]:
        return {"logits": np.zeros((0, 0), np.float32), **{k: np.zeros(0) for k in list(cols)[1:]}}
    return {k: np.concatenate(v) for k, v in cols.items()}


def predict_logits(model, batches: Iterable[dict], view: Callable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eval-mode logits over batches -> ``(logits (N,C), labels (N,), pools (N,))``."""
    out = predict_outputs(model, batches, view)
    return out["logits"], out["label"].astype(np.int64), out["pool"].astype(np.int64)
