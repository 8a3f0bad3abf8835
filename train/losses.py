"""Losses for the sift classifier: supervised, mean-teacher consistency and noisy-pool soft targets.

Shapes: logits (B, C) raw scores; target (B,) int64 class indices; weight (B,) float >= 0, optional.

Two normalisations, on purpose:
  * losses against labels (``asymmetric_focal_loss``, ``expected_cost``, ``classification_loss``,
    ``soft_cross_entropy``) take a weighted mean, sum(w * l) / sum(w): weights re-balance items, so a
    uniform weight changes nothing. A batch whose weights are all zero gives 0, not NaN.
  * consistency losses divide by B, the number of items, whatever the weights: there the weight gates
    items (teacher confidence), and an unsure teacher must lower the total consistency pull, not just
    re-spread it over the few confident items (FixMatch, Sohn et al. 2020, averages its mask the same way).

Pure torch; nothing here knows about Ray or about the data.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _check_logits_target(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target must be (B,) = ({logits.shape[0]},), got shape {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise TypeError(f"target must be int64 class indices, got {target.dtype}")


def _reduce(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    """Reduce per-item losses (B,): 'none' -> w * l (B,), 'sum' -> sum(w * l), 'mean' -> sum(w l) / sum(w)."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if weight is None:
        return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()
    if weight.shape != loss.shape:
        raise ValueError(f"weight must be (B,) = {tuple(loss.shape)}, got {tuple(weight.shape)}")
    weight = weight.detach().to(loss.dtype)  # a weight is a constant, never something to optimise
    wl = weight * loss
    if reduction == "none":
        return wl
    if reduction == "sum":
        return wl.sum()
    return wl.sum() / weight.sum().clamp_min(torch.finfo(loss.dtype).tiny)


def _per_class(gamma: float | Tensor, num_classes: int, like: Tensor) -> Tensor:
    """A focusing parameter as a (1, C) row, from a float or a per-class (C,) tensor."""
    g = torch.as_tensor(gamma, dtype=like.dtype, device=like.device)
    if g.ndim == 0:
        g = g.expand(num_classes)
    if g.shape != (num_classes,):
        raise ValueError(f"a per-class gamma must be ({num_classes},), got shape {tuple(g.shape)}")
    if (g < 0).any():
        raise ValueError("focusing parameters must be >= 0")
    return g.unsqueeze(0)


def asymmetric_focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma_pos: float | Tensor,
    gamma_neg: float | Tensor,
    eps: float = 0.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Single-label asymmetric focal loss (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label
    Classification", their ``ASLSingleLabel``), with per-class focusing and per-item weights.

    With p = softmax(logits) and q = (1 - eps) onehot(target) + eps / C (label smoothing), per item
        l = -sum_j q_j * f_j * log p_j,   f_y = (1 - p_y)^gamma_pos[y],   f_j = p_j^gamma_neg[j] (j != y).
    gamma_pos = gamma_neg = eps = 0 is exactly cross-entropy. gamma_pos > 0 is focal loss (Lin et al.
    2017): confidently correct items are down-weighted. Note that in the single-label form the j != y
    terms only exist through the smoothing mass eps / C, so gamma_neg does nothing when eps == 0; with
    eps > 0 it removes the smoothing pull on classes the model already rules out (as f is not detached,
    for p_j < exp(-1 / gamma_neg) that term even nudges p_j down, with a tiny p_j^(gamma_neg - 1) scale).

    gamma_pos, gamma_neg: floats, or (C,) tensors indexed by class column (gamma_pos[y] applies to the
    item's true class y, gamma_neg[j] to the probability it puts on class j).
    reduction: "mean" -> sum(w l) / sum(w) (plain mean without weight), "sum" -> sum(w l), "none" -> (B,) w l.

    Gradient: flows to logits through log p AND through the focusing factors f, as in the reference and
    as focal loss is defined (Lin et al. derive the gradient through (1 - p)^gamma). We do not detach f:
    detaching would make it a re-weighted cross-entropy, a different loss from the one the papers analyse.
    The base of f is clamped away from 0 so that gamma < 1 cannot give 0 * inf = NaN at p = 1.
    """
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits, dim=-1)  # (B, C)
    p = log_p.exp()
    is_target = F.one_hot(target, num_classes).to(dtype=torch.bool)  # (B, C)
    gamma = torch.where(is_target, _per_class(gamma_pos, num_classes, log_p),
                        _per_class(gamma_neg, num_classes, log_p))  # (B, C)
    # the focusing base: how far the target is from certain, how much mass a wrong class holds
    base = torch.where(is_target, 1.0 - p, p).clamp_min(1e-12)
    focus = base.pow(gamma)  # (B, C); exactly 1 where gamma == 0
    q = is_target.to(log_p.dtype)
    if eps > 0:
        q = q * (1.0 - eps) + eps / num_classes
    loss = -(q * focus * log_p).sum(dim=-1)  # (B,)
    return _reduce(loss, weight, reduction)


def default_cost_matrix(classes: Sequence[str], negative: str = "", positive: str = "",
                        worst: float = 5.0) -> Tensor:
    """A (C, C) float32 cost matrix, cost[true, pred]: 0 on the diagonal, 1 off it, and ``worst`` at
    [negative, positive], the one mistake users hate most (e.g. a GOOD keeper thrown away as BAD).
    Without both ``negative`` and ``positive`` in ``classes`` it is all ones off the diagonal."""
    num_classes = len(classes)
    cost = torch.ones(num_classes, num_classes) - torch.eye(num_classes)
    if negative in classes and positive in classes:
        cost[list(classes).index(negative), list(classes).index(positive)] = float(worst)
    return cost


def expected_cost(logits: Tensor, target: Tensor, cost: Tensor, weight: Tensor | None = None,
                  reduction: str = "mean") -> Tensor:
    """Expected misclassification cost, per item l = sum_j cost[y, j] * softmax(logits)_j.

    cost (C, C), cost[true, pred] >= 0, zero diagonal: a confident correct prediction costs 0. Unlike
    cross-entropy it is bounded and cares *which* wrong class gets the mass, so with cost[GOOD, BAD]
    large the model learns to keep GOOD items out of BAD first. Gradient flows to logits only; cost is a
    constant. Reduction as in ``asymmetric_focal_loss``.
    """
    _check_logits_target(logits, target)
    num_classes = logits.shape[1]
    if cost.shape != (num_classes, num_classes):
        raise ValueError(f"cost must be ({num_classes}, {num_classes}), got {tuple(cost.shape)}")
    p = logits.softmax(dim=-1)  # (B, C)
    rows = cost.detach().to(dtype=p.dtype, device=p.device)[target]  # (B, C): cost of each prediction
    return _reduce((rows * p).sum(dim=-1), weight, reduction)


def classification_loss(logits: Tensor, target: Tensor, *, gamma_pos: float | Tensor,
                        gamma_neg: float | Tensor, cost: Tensor | None = None, cost_weight: float = 0.0,
                        eps: float = 0.0, weight: Tensor | None = None) -> Tensor:
    """The supervised loss: ASL + cost_weight * expected_cost, both weighted means (scalar).

    ASL gives the log-loss gradient that learns features; the cost term, bounded, steers which mistakes
    are made. cost must be given when cost_weight != 0.
    """
    loss = asymmetric_focal_loss(logits, target, gamma_pos, gamma_neg, eps=eps, weight=weight)
    if cost_weight != 0:
        if cost is None:
            raise ValueError("cost_weight != 0 needs a cost matrix (see default_cost_matrix)")
        loss = loss + cost_weight * expected_cost(logits, target, cost, weight=weight)
    return loss


def _consistency_mean(loss: Tensor, weight: Tensor | None) -> Tensor:
    """sum(w * l) / B: zero-weight items drop out but still count in B (see the module docstring)."""
    if weight is None:
        return loss.mean()
    if weight.shape != loss.shape:
        raise ValueError(f"weight must be (B,) = {tuple(loss.shape)}, got {tuple(weight.shape)}")
    return (weight.detach().to(loss.dtype) * loss).mean()


def softmax_mse_consistency(student_logits: Tensor, teacher_logits: Tensor,
                            weight: Tensor | None = None) -> Tensor:
    """Mean-teacher consistency (Tarvainen & Valpola 2017; the reference ``softmax_mse_loss``):
    squared distance between the student's and the teacher's class probabilities.

    student_logits, teacher_logits (B, C). Per item l = mean_j (softmax(s)_j - softmax(t)_j)^2, i.e. the
    sum over classes divided by C, as the reference does; then sum(w * l) / B (reference: / minibatch).
    Returns a scalar. The teacher side is detached: gradient reaches the student only.
    MSE rather than KL is the paper's choice: it is bounded, so a wrong teacher pulls less hard.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"need two (B, C) tensors, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    p_s = student_logits.softmax(dim=-1)
    p_t = teacher_logits.detach().softmax(dim=-1)
    return _consistency_mean((p_s - p_t).pow(2).mean(dim=-1), weight)


def softmax_kl_consistency(student_logits: Tensor, teacher_logits: Tensor,
                           weight: Tensor | None = None) -> Tensor:
    """KL(teacher || student) consistency (the reference ``softmax_kl_loss``).

    Per item l = sum_j p_t,j (log p_t,j - log p_s,j), summed (not averaged) over classes as in the
    reference; then sum(w * l) / B. Scalar. The teacher side is detached.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"need two (B, C) tensors, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=-1)  # (B,)
    return _consistency_mean(kl, weight)


@torch.no_grad()
def confidence_weights(teacher_logits: Tensor, threshold: float = 0.0, power: float = 1.0) -> Tensor:
    """Per-item consistency weights (B,) from the teacher's confidence c = max_j softmax(t)_j:
    w = c^power where c >= threshold, else 0. Computed without gradient (a weight is a constant).

    Rationale: consistency towards a confused teacher mostly teaches the student the teacher's confusion;
    gating by confidence (as FixMatch's threshold) lets the clean, confident part of the pool lead.
    Note c >= 1 / C always, so thresholds below 1 / C gate nothing.
    """
    conf = teacher_logits.softmax(dim=-1).amax(dim=-1)
    return conf.pow(power) * (conf >= threshold).to(conf.dtype)


@torch.no_grad()
def noisy_pool_targets(prior: Tensor | Sequence[float], teacher_probs: Tensor | None = None,
                       sharpen: float = 1.0) -> Tensor:
    """Soft targets for items of a noisy pool (e.g. the NEUTRAL folder: ~65% NEUTRAL, 30% BAD, 5% GOOD).

    prior (C,): what the pool's label means as a class distribution (renormalised to sum 1).
    teacher_probs (B, C) or None: the teacher's class probabilities for the items.
    Returns target ∝ prior * teacher_probs^sharpen, rows summing to 1, shape (B, C); with teacher_probs
    None, the prior as a (1, C) row (it broadcasts; ``soft_cross_entropy`` expands it). No gradient.

    Why: early on the teacher knows nothing (near-uniform probabilities) and the target is the prior; as
    it learns BAD cues from clean data, BAD-looking items of the pool move towards BAD, a posterior under
    the pool's prior. The teacher's own training class prior is not divided out: pass teacher_probs
    already divided by the clean class frequencies (and renormalised) if those are badly imbalanced.
    sharpen in [0, 1) tempers an over-confident teacher; 0 ignores it.
    """
    if teacher_probs is None:
        prior = torch.as_tensor(prior, dtype=torch.float32)
    else:
        prior = torch.as_tensor(prior, dtype=teacher_probs.dtype, device=teacher_probs.device)
    if prior.ndim != 1 or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError("prior must be a (C,) non-negative vector with a positive sum")
    prior = prior / prior.sum()
    if teacher_probs is None:
        return prior.unsqueeze(0)
    if teacher_probs.ndim != 2 or teacher_probs.shape[1] != prior.shape[0]:
        raise ValueError(f"teacher_probs must be (B, {prior.shape[0]}), got {tuple(teacher_probs.shape)}")
    if sharpen < 0:
        raise ValueError(f"sharpen must be >= 0, got {sharpen}")
    # in log space so a zero prior stays exactly zero and the product cannot underflow to an all-zero row
    log_t = prior.log() + sharpen * teacher_probs.clamp_min(1e-12).log()
    return log_t.softmax(dim=-1)


def soft_cross_entropy(logits: Tensor, soft_target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy against a soft target: per item l = -sum_j q_j log softmax(logits)_j; scalar
    weighted mean sum(w l) / sum(w).

    soft_target (B, C), or (1, C) / (C,) broadcast to every item. It is detached (a target is a
    constant). Its minimum over logits is the entropy of q, not 0: compare runs by its change, not its value.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    q = soft_target.detach().to(logits.dtype).expand_as(logits)
    loss = -(q * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return _reduce(loss, weight, "mean")
