"""The mean teacher: an exponential moving average (EMA) of the student's weights.

Tarvainen & Valpola 2017, "Mean teachers are better role models": averaging weights over training steps
gives a teacher that is more accurate than the student at any step, and whose predictions make better
consistency targets than the student's own (Pi model) or averaged predictions (temporal ensembling).
The teacher is never trained by gradient; it only moves by ``ema_update``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` whose parameters have requires_grad False.

    The copy shares no storage with the student, so the student's optimiser steps, ``train()`` /
    ``eval()`` calls or in-place edits never touch it. Its train/eval mode is copied from the student;
    the caller sets it. Prefer ``teacher.eval()``: then BatchNorm buffers move only through
    ``ema_update`` and dropout is off (consistency then relies on the two inputs' augmentation).
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)  # the teacher is an average, not a learner: no grads, no optimiser state
    return teacher


def _check_same_structure(teacher: nn.Module, student: nn.Module) -> None:
    """Raise ValueError unless both modules have the same parameter and buffer names and shapes."""
    t = {**dict(teacher.named_parameters()), **dict(teacher.named_buffers())}
    s = {**dict(student.named_parameters()), **dict(student.named_buffers())}
    problems = [f"missing in teacher: {k}" for k in s.keys() - t.keys()]
    problems += [f"missing in student: {k}" for k in t.keys() - s.keys()]
    problems += [f"shape of {k}: teacher {tuple(t[k].shape)} != student {tuple(s[k].shape)}"
                 for k in t.keys() & s.keys() if t[k].shape != s[k].shape]
    if problems:
        shown = "; ".join(sorted(problems)[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"teacher and student differ: {shown}{more}")


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: teacher = decay * teacher + (1 - decay) * student, for every parameter and every
    floating-point buffer (BatchNorm running_mean / running_var); integer and bool buffers
    (num_batches_tracked) are copied from the student, since averaging a counter means nothing.

    decay 0 copies the student exactly, decay 1 leaves the teacher unchanged. The reference averages
    parameters only and lets the teacher's BatchNorm collect its own statistics in train mode; averaging
    the buffers too keeps an eval-mode teacher's statistics consistent with its averaged weights.
    Runs under no_grad: nothing here enters an autograd graph. Raises ValueError if the two modules do
    not have the same parameter / buffer names and shapes.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    _check_same_structure(teacher, student)
    student_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        t.mul_(decay).add_(student_params[name].detach(), alpha=1.0 - decay)
    student_buffers = dict(student.named_buffers())
    for name, t in teacher.named_buffers():
        s = student_buffers[name]
        if t.is_floating_point():
            t.mul_(decay).add_(s, alpha=1.0 - decay)
        else:
            t.copy_(s)


def ema_decay(step: int, decay: float) -> float:
    """The reference's warm-up of the EMA decay: min(1 - 1 / (step + 1), decay).

    At step 0 the decay is 0 (the teacher is the student); it then grows like a running mean of all
    weights so far until it reaches ``decay``. Without this, a teacher started from random weights with
    decay 0.999 would need thousands of steps to forget its initialisation.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0 - 1.0 / (step + 1), decay)
