"""The learning-rate schedule and the end-of-epoch decisions of a training run, in plain Python.

Each phase (the frozen warm-up on the embedding cache, then end-to-end fine-tuning) gets its own
schedule: a linear warm-up over ``warmup`` steps, then cosine decay to 0 over the rest of the phase
(Loshchilov & Hutter 2017; the mean-teacher reference's ``ramps.py``). It restarts when the backbone
unfreezes, because the new parameter group starts from random-ish gradients at a different scale.
On top of it a plateau multiplier (ReduceLROnPlateau, mode "max") halves the rate after
``patience`` epochs without a better validation score, and early stopping ends the run after
``early_stop`` epochs without one. Everything a run counts lives in one ``TrainState``, checkpointed
with the run (as a plain dict, which ``torch.load(weights_only=True)`` reads back) so that a resumed
worker carries on where the lost one stopped.
"""
from __future__ import annotations

import dataclasses
import math

from .ramps import cosine_rampdown, linear_rampup


def phase_lengths(epochs: int, steps_per_epoch: int, frozen_steps: int) -> tuple[int, int]:
    """(steps of the frozen phase, steps of the unfrozen phase) planned for a run.

    ``frozen_steps = -1`` keeps the backbone frozen for the whole run (the unfrozen phase has 0 steps).
    The epoch in which the frozen phase ends is cut short there, so the unfrozen phase has the
    remaining whole epochs.
    """
    total = epochs * steps_per_epoch
    if frozen_steps < 0 or frozen_steps >= total:
        return total, 0
    epochs_frozen = max(1, math.ceil(frozen_steps / steps_per_epoch)) if frozen_steps else 0
    return frozen_steps, max(0, (epochs - epochs_frozen) * steps_per_epoch)


def lr_factor(step: int, length: int, warmup: int, kind: str = "cosine") -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of a phase of ``length`` steps.

    Linear warm-up from 1/warmup to 1 over the first ``warmup`` steps (so step 0 already moves), times
    cosine decay over the phase for ``kind="cosine"`` (1.0 for ``"constant"``). In (0, 1].
    """
    warm = linear_rampup(step + 1, warmup)
    if kind == "constant" or length <= 1:
        return warm
    # decay over the steps after the warm-up; never exactly 0 on the last planned step
    return warm * max(cosine_rampdown(max(0, step - warmup), max(1, length - warmup)), 1e-3)


@dataclasses.dataclass
class TrainState:
    """The counters and decisions of one training run (weights and optimizer are checkpointed beside)."""
    step: int = 0  # optimizer steps so far, over both phases
    epoch: int = 0  # epochs finished
    phase: str = "frozen"  # "frozen" (head on the embedding cache) or "unfrozen" (end to end)
    phase_step: int = 0  # steps into the current phase (its schedule restarts at 0)
    best: float = -math.inf  # best validation selection score so far (-inf before the first epoch)
    bad_epochs: int = 0  # epochs since it last improved (early stopping)
    plateau_bad: int = 0  # the same, reset by each reduction (ReduceLROnPlateau's counter, no cooldown)
    lr_scale: float = 1.0  # the plateau multiplier, 1.0 until the first reduction
    history: dict = dataclasses.field(default_factory=dict)  # metric -> [(step, value)] for the curves
    best_state: dict | None = None  # {"who", "phase", "weights"} of the best epoch, None before one

    def to_dict(self) -> dict:
        """Shallow: the best weights are not copied again (they are already a copy)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)


def end_of_epoch(s: TrainState, score: float, *, patience: int, factor: float, early_stop: int) -> dict:
    """Update ``s`` in place with this epoch's validation ``score`` (higher is better).

    Returns {"improved": the score beat the best by a relative 1e-4 (keep these weights), "reduced":
    the rate was multiplied by ``factor`` because more than ``patience`` epochs passed without
    improvement (torch's ReduceLROnPlateau, mode "max"), "stop": ``early_stop`` > 0 epochs without
    improvement}. A non-finite score never improves.
    """
    improved = math.isfinite(score) and (s.best == -math.inf or score > s.best + 1e-4 * abs(s.best))
    if improved:
        s.best, s.bad_epochs, s.plateau_bad = score, 0, 0
    else:
        s.bad_epochs += 1
        s.plateau_bad += 1
    reduced = s.plateau_bad > patience
    if reduced:
        s.lr_scale *= factor
        s.plateau_bad = 0
    return {"improved": improved, "reduced": reduced, "stop": bool(early_stop) and s.bad_epochs >= early_stop}


def set_lr(opt, base_lrs: list[float], factor: float) -> list[float]:
    """Set each parameter group's rate to its base rate times ``factor``; returns the rates set."""
    rates = [b * factor for b in base_lrs]
    for group, lr in zip(opt.param_groups, rates):
        group["lr"] = lr
    return rates
